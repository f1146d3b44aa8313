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
import os
import pickle
from collections.abc import Mapping

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from privacy.secagg import shamir
from privacy.secagg.encoding import reduce
from privacy.secagg.errors import GuardViolation, ProtocolAbort, StageError
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
        `context.state`). Contains secrets; it never leaves the device. The enrollment key
        and the identities are not included: the device re-supplies them on load."""
        state = {k: v for k, v in self.__dict__.items()
                 if k not in ("_enrollment_key", "_identities")}
        for name in ("_cipher_key", "_mask_key"):
            if name in state:
                state[name] = raw_private(state[name])
        return pickle.dumps(state)

    @classmethod
    def from_bytes(cls, data: bytes, enrollment_key: ec.EllipticCurvePrivateKey | bytes,
                   identities: Mapping[int, ec.EllipticCurvePublicKey | bytes | str]
                   ) -> SecAggClient:
        """Restore what `to_bytes` saved (only ever bytes this device wrote itself)."""
        state = pickle.loads(data)
        client = cls(state["device_id"], enrollment_key, identities)
        for name in ("_cipher_key", "_mask_key"):
            if name in state:
                state[name] = X25519PrivateKey.from_private_bytes(state[name])
        client.__dict__.update(state)
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
