"""The device's half of SecAgg+ (Bell et al. 2020): a per-round, per-stage state machine.

One `SecAggClient` per device and round. Its guards, each a refusal rather than a warning:

* neighbours' round keys must carry a valid ECDSA P-384 signature by the identity the
  registry issued at enrollment; a neighbour whose does not is reported and never talked
  to (so the server cannot substitute keys);
* the server's view must be consistent with the device's own: only its neighbours, at
  least t of them in every stage, no surprise senders;
* it never reveals both the self-mask share and the key share of the same peer, across
  any number of unmasking requests (the guard that stops a server from unmasking one
  update by claiming that the update's owner dropped).

Secrets come from the OS CSPRNG (`os.urandom`, X25519 key generation); masks from ChaCha20
(`privacy.secagg.masks`). Nothing here needs the server or SQLAlchemy.
"""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from privacy.checks import is_int
from privacy.secagg import codec, field, shamir
from privacy.secagg.encoding import reduce
from privacy.secagg.errors import GuardViolation, ProtocolAbort, SecAggError, StageError
from privacy.secagg.graph import neighbours as build_graph
from privacy.secagg.keys import load_private_key, load_public_key, sign_keys, verify_keys
from privacy.secagg.masks import SEED_BYTES, pairwise_mask, pairwise_sign, self_mask
from privacy.secagg.messages import (
    AdvertiseKeys,
    MaskedInput,
    NeighbourKeys,
    RoundSetup,
    ShareKeys,
    SharesDelivery,
    UnmaskReply,
    UnmaskRequest,
)
from privacy.secagg.share_box import SharePair, open_box, seal

#: The device's round state between stages (`SecAggClient.to_bytes`): these magic bytes, a
#: version byte, then UTF-8 JSON of known fields, bytes as {"$hex": "..."}. Explicit and
#: parsed, never unpickled: a tampered `context.state` can at worst fail to load.
STATE_FORMAT = "fedmsr-secagg-client-state"
STATE_MAGIC = b"FSAS"
STATE_VERSION = 1


class ClientStateError(ValueError):
    """The saved round state is not one this build wrote (corrupt, tampered, other version)."""


class Stage(enum.IntEnum):
    NEW = 0
    ADVERTISED = 1
    SHARED = 2
    MASKED = 3
    ABORTED = 9


def raw_private(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())


def raw_public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw,
                                         serialization.PublicFormat.Raw)


class SecAggClient:
    """One device in one secure-aggregation round."""

    def __init__(self, device_id: int, enrollment_key: ec.EllipticCurvePrivateKey | bytes,
                 identities: Mapping[int, ec.EllipticCurvePublicKey | bytes | str]) -> None:
        self.device_id = device_id
        self._enrollment_key = load_private_key(enrollment_key)
        self._identities = dict(identities)
        self.stage = Stage.NEW
        self.rejected: set[int] = set()
        self._revealed: dict[int, str] = {}  # peer -> "self_mask" | "key"

    # stage 1 -------------------------------------------------------------------------
    def advertise(self, setup: RoundSetup) -> AdvertiseKeys:
        self._expect(Stage.NEW)
        if self.device_id not in setup.participants:
            raise ProtocolAbort(f"device {self.device_id} is not a participant of this round")
        self.setup = setup
        self._context = setup.digest()
        self._neighbours = build_graph(setup.participants, setup.neighbours,
                                       setup.graph_seed)[self.device_id]
        self._cipher_key = X25519PrivateKey.generate()
        self._mask_key = X25519PrivateKey.generate()
        self._self_seed = os.urandom(SEED_BYTES)
        cipher_pk, mask_pk = raw_public(self._cipher_key), raw_public(self._mask_key)
        signature = sign_keys(self._enrollment_key, self._context, self.device_id,
                              cipher_pk, mask_pk)
        self.stage = Stage.ADVERTISED
        return AdvertiseKeys(self.device_id, cipher_pk, mask_pk, signature)

    # stage 2 -------------------------------------------------------------------------
    def share_keys(self, message: NeighbourKeys) -> ShareKeys:
        self._expect(Stage.ADVERTISED)
        self._peer_keys: dict[int, AdvertiseKeys] = {}
        for keys in message.keys:
            if keys.sender in self._peer_keys or keys.sender == self.device_id:
                self._abort(f"duplicate or own keys relayed for device {keys.sender}")
            if keys.sender not in self._neighbours:
                self._abort(f"device {keys.sender} is not a neighbour in this round's graph")
            if self._verified(keys):
                self._peer_keys[keys.sender] = keys
            else:
                self.rejected.add(keys.sender)
        if len(self._peer_keys) < self.setup.threshold:
            self._abort(f"only {len(self._peer_keys)} verified neighbours, threshold is "
                        f"{self.setup.threshold}")
        holders = sorted(self._peer_keys)
        t = self.setup.threshold
        b_shares = shamir.split(self._self_seed, t, holders)
        k_shares = shamir.split(raw_private(self._mask_key), t, holders)
        boxes = {peer: seal(self._cipher_key, self._peer_keys[peer].cipher_pk, self._context,
                            self.device_id, peer, SharePair(b_shares[peer].y, k_shares[peer].y))
                 for peer in holders}
        self.stage = Stage.SHARED
        return ShareKeys(self.device_id, boxes, tuple(sorted(self.rejected)))

    def _verified(self, keys: AdvertiseKeys) -> bool:
        identity = self._identities.get(keys.sender)
        if identity is None:
            return False
        try:
            public = load_public_key(identity)
        except ValueError:
            return False
        return verify_keys(public, keys.signature, self._context, keys.sender,
                           keys.cipher_pk, keys.mask_pk)

    # stage 3 -------------------------------------------------------------------------
    def masked_input(self, delivery: SharesDelivery, update: np.ndarray,
                     weight: int) -> MaskedInput:
        """Decrypt the shares held for neighbours, then upload the masked encoded update.

        The senders of the delivered shares are the neighbours still in the round (U2);
        exactly those get pairwise masks, matching what the server will expect.
        """
        self._expect(Stage.SHARED)
        senders = set(delivery.ciphertexts)
        unknown = senders - set(self._peer_keys)
        if unknown:
            self._abort(f"shares relayed from unverified or non-neighbour devices {sorted(unknown)}")
        if len(senders) < self.setup.threshold:
            self._abort(f"only {len(senders)} neighbours left, threshold is {self.setup.threshold}")
        try:
            self._held = {peer: open_box(self._cipher_key, self._peer_keys[peer].cipher_pk,
                                         self._context, peer, self.device_id, box)
                          for peer, box in delivery.ciphertexts.items()}
        except ProtocolAbort as err:  # tampered or misdirected share: stop here
            self._abort(str(err))
        self._active = frozenset(senders)
        encoded = self.setup.encoding.encode(update, weight)
        if encoded.size != self.setup.vector_length + 1:
            self._abort(f"update has {encoded.size - 1} values, round expects "
                        f"{self.setup.vector_length}")
        length, bits = self.setup.vector_length + 1, self.setup.encoding.mod_bits
        masked = encoded + self_mask(self._self_seed, self._context, length, bits)
        for peer in sorted(self._active):
            mask = pairwise_mask(self._mask_key, self._peer_keys[peer].mask_pk, self._context,
                                 length, bits)
            if pairwise_sign(self.device_id, peer) > 0:
                masked += mask
            else:
                masked -= mask
        self.stage = Stage.MASKED
        return MaskedInput(self.device_id, reduce(masked, self.setup.encoding.mod_bits))

    # stage 4 -------------------------------------------------------------------------
    def unmask(self, request: UnmaskRequest) -> UnmaskReply:
        """Reveal self-mask shares of survivors and key shares of dropped neighbours.

        May be answered more than once (a lost reply is re-requested), but never in a way
        that reveals both kinds of share for one peer: such a request is refused whole.
        """
        self._expect(Stage.MASKED)
        survivors, dropped = set(request.survivors), set(request.dropped)
        if survivors & dropped:
            raise GuardViolation(f"device {self.device_id} refuses: peers "
                                 f"{sorted(survivors & dropped)} claimed both survived and dropped")
        outside = (survivors | dropped) - self._active
        if outside:
            raise GuardViolation(f"device {self.device_id} refuses: {sorted(outside)} are not "
                                 "neighbours it holds shares for")
        wanted = {p: "self_mask" for p in survivors} | {p: "key" for p in dropped}
        conflicts = sorted(p for p, kind in wanted.items()
                           if self._revealed.get(p, kind) != kind)
        if conflicts:
            raise GuardViolation(f"device {self.device_id} refuses: it already revealed the "
                                 f"other share of {conflicts}")
        if len(survivors) + 1 < self.setup.threshold:
            raise GuardViolation(f"device {self.device_id} refuses: only {len(survivors)} "
                                 "surviving neighbours, fewer than threshold - 1")
        self._revealed.update(wanted)
        return UnmaskReply(self.device_id,
                           {p: self._held[p].self_mask for p in sorted(survivors)},
                           {p: self._held[p].key for p in sorted(dropped)})

    # persistence between messages ----------------------------------------------------
    def to_bytes(self) -> bytes:
        """The round state, for the device's own storage between stages (Flower's
        `context.state`); see `STATE_FORMAT`. Contains secrets; it never leaves the device.
        The enrollment key and the identities are not included: the device re-supplies
        them on load."""
        body: dict[str, Any] = {
            "device": self.device_id, "stage": int(self.stage),
            "rejected": sorted(self.rejected),
            "revealed": [[peer, kind] for peer, kind in sorted(self._revealed.items())],
        }
        if "setup" in self.__dict__:  # advertised: the round and its own secrets
            body.update({"setup": codec.setup_to_flat(self.setup),
                         "neighbours": sorted(self._neighbours),
                         "cipher-key": raw_private(self._cipher_key),
                         "mask-key": raw_private(self._mask_key),
                         "self-seed": self._self_seed})
        if "_peer_keys" in self.__dict__:  # shared: the neighbours' verified keys
            body["peer-keys"] = [codec.advertise_to_flat(self._peer_keys[p])
                                 for p in sorted(self._peer_keys)]
        if "_held" in self.__dict__:  # masked: the shares it holds for its neighbours
            body["held"] = [[p, field.to_bytes(pair.self_mask), field.to_bytes(pair.key)]
                            for p, pair in sorted(self._held.items())]
            body["active"] = sorted(self._active)
        return STATE_MAGIC + bytes([STATE_VERSION]) + json.dumps(
            _tagged(body), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes, enrollment_key: ec.EllipticCurvePrivateKey | bytes,
                   identities: Mapping[int, ec.EllipticCurvePublicKey | bytes | str]
                   ) -> SecAggClient:
        """Restore what `to_bytes` saved; `ClientStateError` for anything else (nothing in
        the bytes is ever executed: they are parsed as JSON into known fields)."""
        data = bytes(data)
        if not data.startswith(STATE_MAGIC):
            raise ClientStateError("saved secure-aggregation state is not a "
                                   f"{STATE_FORMAT} blob (bad magic)")
        version = data[len(STATE_MAGIC):len(STATE_MAGIC) + 1]
        if version != bytes([STATE_VERSION]):
            raise ClientStateError(f"saved secure-aggregation state has version "
                                   f"{version[0] if version else 'none'}, this build reads "
                                   f"{STATE_VERSION}")
        try:
            body = json.loads(data[len(STATE_MAGIC) + 1:], object_hook=_untagged)
            return cls._restored(body, enrollment_key, identities)
        except (KeyError, TypeError, ValueError, SecAggError) as exc:  # JSONDecodeError too
            raise ClientStateError(f"saved secure-aggregation state is corrupt: "
                                   f"{type(exc).__name__}: {exc}") from None

    @classmethod
    def _restored(cls, body: Mapping[str, Any],
                  enrollment_key: ec.EllipticCurvePrivateKey | bytes,
                  identities: Mapping[int, ec.EllipticCurvePublicKey | bytes | str]
                  ) -> SecAggClient:
        client = cls(_int(body["device"]), enrollment_key, identities)
        client.stage = Stage(_int(body["stage"]))
        client.rejected = {_int(p) for p in body["rejected"]}
        client._revealed = {}
        for peer, kind in body["revealed"]:
            if kind not in ("self_mask", "key"):
                raise ValueError(f"unknown revealed share kind {kind!r}")
            client._revealed[_int(peer)] = kind
        if "setup" in body:
            client.setup = codec.setup_from_flat(body["setup"])
            client._context = client.setup.digest()
            client._neighbours = frozenset(_int(p) for p in body["neighbours"])
            client._cipher_key = X25519PrivateKey.from_private_bytes(_bytes(body["cipher-key"]))
            client._mask_key = X25519PrivateKey.from_private_bytes(_bytes(body["mask-key"]))
            client._self_seed = _bytes(body["self-seed"])
        if "peer-keys" in body:
            peers = [codec.advertise_from_flat(flat) for flat in body["peer-keys"]]
            client._peer_keys = {keys.sender: keys for keys in peers}
        if "held" in body:
            client._held = {_int(p): SharePair(field.from_bytes(_bytes(s)),
                                               field.from_bytes(_bytes(k)))
                            for p, s, k in body["held"]}
            client._active = frozenset(_int(p) for p in body["active"])
        return client

    # helpers -------------------------------------------------------------------------
    def _expect(self, stage: Stage) -> None:
        if self.stage == Stage.ABORTED:
            raise StageError(f"device {self.device_id} aborted this round")
        if self.stage != stage:
            raise StageError(f"device {self.device_id} is at stage {self.stage.name}, "
                             f"not {stage.name}")

    def _abort(self, reason: str) -> None:
        self.stage = Stage.ABORTED
        raise ProtocolAbort(f"device {self.device_id}: {reason}")


def _tagged(value: Any) -> Any:
    """JSON-ready: bytes become {"$hex": ...}; lists and dicts are walked."""
    if isinstance(value, bytes):
        return {"$hex": value.hex()}
    if isinstance(value, dict):
        return {k: _tagged(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_tagged(v) for v in value]
    return value


def _untagged(obj: dict[str, Any]) -> Any:
    if set(obj) == {"$hex"}:
        return bytes.fromhex(obj["$hex"])
    return obj


def _int(value: Any) -> int:
    if not is_int(value):
        raise TypeError(f"expected an integer, got {value!r}")
    return int(value)


def _bytes(value: Any) -> bytes:
    if not isinstance(value, bytes):
        raise TypeError(f"expected bytes, got {type(value).__name__}")
    return value
