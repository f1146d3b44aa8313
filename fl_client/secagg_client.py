"""The device's half of SecAgg+ (Bell et al. 2020): a per-round, per-stage state machine.

One `SecAggClient` per device and round. Its guards, each a refusal rather than a warning:

* neighbours' round keys must carry a valid ECDSA P-384 signature by the identity the
  registry issued at enrollment; a neighbour whose does not is reported and never talked
  to (so the server cannot substitute keys);
* the server's view must be consistent with the device's own: only its neighbours, at
  least t of them in every stage, no surprise senders;
* it never reveals both the self-mask share and the key share of the same peer, across
  any number of unmasking requests (the guard that stops a server from unmasking one
  update by claiming that the update's owner dropped);
* the consistency check (Bell et al. 2020): before revealing anything it signs the
  survivor set U3 the server announces (once per round; a second, different set is
  refused), and it reveals only after seeing `consistency_quorum` valid signatures by
  registry identities over that same set; then self-mask shares only for neighbours in
  U3 and key shares only for neighbours outside it. A server telling different devices
  different survivor sets cannot get two sets past the quorum, so every device that
  answers holds the same view and no peer's two shares can both come out;
* a minimum surviving cohort (`min_survivors`, 3 by default): it takes part in no round
  with fewer participants, and reveals nothing for a signed U3 smaller than that, so
  an aggregate is never the sum of one or two updates;
* a neighbour whose advertised X25519 key is degenerate (low order: the agreement would
  be all zeros) is rejected like one with a bad signature.

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
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from privacy.checks import is_int
from privacy.secagg import codec, field, shamir
from privacy.secagg.encoding import reduce
from privacy.secagg.errors import GuardViolation, ProtocolAbort, SecAggError, StageError
from privacy.secagg.graph import consistency_quorum
from privacy.secagg.graph import neighbours as build_graph
from privacy.secagg.keys import (
    load_private_key,
    load_public_key,
    sign_keys,
    sign_survivors,
    verify_keys,
    verify_survivors,
)
from privacy.secagg.masks import SEED_BYTES, pairwise_mask, pairwise_sign, self_mask
from privacy.secagg.messages import (
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
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

#: The smallest signed survivor set a device reveals shares for (and the smallest round it
#: joins), unless its node config sets another (never below `MIN_SURVIVORS_FLOOR`).
DEFAULT_MIN_SURVIVORS = 3
MIN_SURVIVORS_FLOOR = 2


class ClientStateError(ValueError):
    """The saved round state is not one this build wrote (corrupt, tampered, other version)."""


class Stage(enum.IntEnum):
    NEW = 0
    ADVERTISED = 1
    SHARED = 2
    MASKED = 3
    SIGNED = 4
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
                 identities: Mapping[int, ec.EllipticCurvePublicKey | bytes | str],
                 min_survivors: int = DEFAULT_MIN_SURVIVORS) -> None:
        if not is_int(min_survivors) or min_survivors < MIN_SURVIVORS_FLOOR:
            raise ValueError(f"min_survivors must be an integer >= {MIN_SURVIVORS_FLOOR}, "
                             f"got {min_survivors!r}")
        self.min_survivors = int(min_survivors)
        self.device_id = device_id
        self._enrollment_key = load_private_key(enrollment_key)
        self._identities = dict(identities)
        self.stage = Stage.NEW
        self.rejected: set[int] = set()
        self._revealed: dict[int, str] = {}  # peer -> "self_mask" | "key"
        self._signed_u3: tuple[int, ...] = ()  # the one survivor set it signed (stage SIGNED)
        self._u3_signature = b""

    # stage 1 -------------------------------------------------------------------------
    def advertise(self, setup: RoundSetup) -> AdvertiseKeys:
        self._expect(Stage.NEW)
        if self.device_id not in setup.participants:
            raise ProtocolAbort(f"device {self.device_id} is not a participant of this round")
        if len(setup.participants) < self.min_survivors:
            raise ProtocolAbort(f"device {self.device_id}: a round of "
                                f"{len(setup.participants)} devices is below its minimum "
                                f"cohort of {self.min_survivors}")
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
        if not verify_keys(public, keys.signature, self._context, keys.sender,
                           keys.cipher_pk, keys.mask_pk):
            return False
        return _usable_x25519(self._cipher_key, keys.cipher_pk) and \
            _usable_x25519(self._mask_key, keys.mask_pk)

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

    # stage 3b: consistency check --------------------------------------------------
    def sign_survivors(self, request: ConsistencyRequest) -> ConsistencySignature:
        """Sign the survivor set U3 the server announces; once per round.

        A repeat of the same set (a lost reply) gets the same signature; a different set is
        refused, so this device vouches for at most one view of who survived.
        """
        u3 = tuple(sorted(set(request.survivors)))
        if self.stage == Stage.SIGNED and u3 == self._signed_u3:
            return ConsistencySignature(self.device_id, self._u3_signature)
        if self.stage == Stage.SIGNED:
            raise GuardViolation(f"device {self.device_id} refuses: it already signed another "
                                 "survivor set this round")
        self._expect(Stage.MASKED)
        if request.recipient != self.device_id:
            self._abort(f"survivor set addressed to device {request.recipient}")
        if len(u3) != len(request.survivors):
            self._abort("survivor set lists a device twice")
        strangers = set(u3) - set(self.setup.participants)
        if strangers:
            self._abort(f"survivor set names non-participants {sorted(strangers)}")
        if self.device_id not in u3:
            self._abort("survivor set leaves out this device, which sent its masked input")
        unknown = (set(u3) & self._neighbours) - self._active
        if unknown:
            self._abort(f"survivor set names neighbours {sorted(unknown)} that shared no keys "
                        "with this device")
        self._require_cohort(u3)
        self._signed_u3 = u3
        self._u3_signature = sign_survivors(self._enrollment_key, self._context,
                                            self.device_id, u3)
        self.stage = Stage.SIGNED
        return ConsistencySignature(self.device_id, self._u3_signature)

    def _require_cohort(self, u3: tuple[int, ...]) -> None:
        quorum = consistency_quorum(len(self.setup.participants), self.setup.threshold,
                                    self.setup.max_colluding)
        if len(u3) < max(self.min_survivors, quorum):
            self._abort(f"only {len(u3)} survivors, this device needs "
                        f"{max(self.min_survivors, quorum)} (minimum cohort "
                        f"{self.min_survivors}, signature quorum {quorum})")

    def _consistent_view(self, request: UnmaskRequest) -> tuple[set[int], set[int]]:
        """(neighbours whose self-mask shares, neighbours whose key shares may come out),
        from the survivor set this device signed, once enough devices signed the same."""
        if tuple(sorted(set(request.survivor_set))) != self._signed_u3:
            self._abort("the unmasking request's survivor set is not the one this device "
                        "signed")
        quorum = consistency_quorum(len(self.setup.participants), self.setup.threshold,
                                    self.setup.max_colluding)
        valid: set[int] = set()
        for signer, signature in request.signatures:
            if signer in valid or signer not in self._signed_u3:
                continue
            identity = self._identities.get(signer)
            if identity is None:
                continue
            try:
                public = load_public_key(identity)
            except ValueError:
                continue
            if verify_survivors(public, signature, self._context, signer, self._signed_u3):
                valid.add(signer)
        if len(valid) < quorum:
            self._abort(f"only {len(valid)} valid signatures over the survivor set, "
                        f"{quorum} needed")
        survivors = set(self._active) & set(self._signed_u3)
        dropped = set(self._active) - survivors
        if set(request.survivors) != survivors or set(request.dropped) != dropped:
            raise GuardViolation(f"device {self.device_id} refuses: the survivors and dropped "
                                 "neighbours asked for are not what the signed set implies")
        return survivors, dropped

    # stage 4 -------------------------------------------------------------------------
    def unmask(self, request: UnmaskRequest) -> UnmaskReply:
        """Reveal self-mask shares of survivors and key shares of dropped neighbours, as the
        signed survivor set says (`_consistent_view`).

        May be answered more than once (a lost reply is re-requested), but never in a way
        that reveals both kinds of share for one peer: such a request is refused whole.
        """
        self._expect(Stage.SIGNED)
        survivors, dropped = self._consistent_view(request)
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
        if self.stage == Stage.SIGNED:  # signed: the one survivor set it vouched for
            body["signed-u3"] = list(self._signed_u3)
            body["u3-signature"] = self._u3_signature
        return STATE_MAGIC + bytes([STATE_VERSION]) + json.dumps(
            _tagged(body), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes, enrollment_key: ec.EllipticCurvePrivateKey | bytes,
                   identities: Mapping[int, ec.EllipticCurvePublicKey | bytes | str],
                   min_survivors: int = DEFAULT_MIN_SURVIVORS) -> SecAggClient:
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
            return cls._restored(body, enrollment_key, identities, min_survivors)
        except (KeyError, TypeError, ValueError, SecAggError) as exc:  # JSONDecodeError too
            raise ClientStateError(f"saved secure-aggregation state is corrupt: "
                                   f"{type(exc).__name__}: {exc}") from None

    @classmethod
    def _restored(cls, body: Mapping[str, Any],
                  enrollment_key: ec.EllipticCurvePrivateKey | bytes,
                  identities: Mapping[int, ec.EllipticCurvePublicKey | bytes | str],
                  min_survivors: int) -> SecAggClient:
        client = cls(_int(body["device"]), enrollment_key, identities, min_survivors)
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
        if "signed-u3" in body:
            client._signed_u3 = tuple(_int(p) for p in body["signed-u3"])
            client._u3_signature = _bytes(body["u3-signature"])
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


def _usable_x25519(own: X25519PrivateKey, peer_public: bytes) -> bool:
    """False for a public key the agreement refuses (a low-order point gives the all-zero
    secret; `cryptography` raises ValueError): such a peer is treated as rejected."""
    try:
        own.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError:
        return False
    return True


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
