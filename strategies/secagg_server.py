"""The server's half of SecAgg+ (Bell et al. 2020): relay, track dropouts, unmask the sum.

The server sees the advertised keys, encrypted shares, masked inputs and, at the end, the
shares it needs: self-mask shares of every survivor and key shares of every device that
dropped after sharing. From them it removes survivors' self masks and the pairwise masks
that survivors added against dropped neighbours; what is left is the sum, and only the
sum. Dropouts are tolerated at every stage as long as each device whose secret is needed
keeps at least t responsive neighbours; otherwise the round aborts (`ProtocolAbort`) and
no partial sum exists anywhere in this object.

Sets, as in the paper: U1 advertised keys, U2 shared keys (and were not rejected by a
neighbour, and still have t neighbours in U2), U3 sent a masked input, U4 answered the
unmasking request.

Consistency check (Bell et al. 2020, against a malicious server): after the masked inputs
the server announces U3 to every member, collects each one's signature over it and
forwards them all with the unmasking request; a device reveals nothing unless it sees
`consistency_quorum` valid signatures over the set it signed itself. The server here
does not verify the signatures (it holds no identities); the devices do.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from privacy.secagg import shamir
from privacy.secagg.encoding import modular_sum, reduce
from privacy.secagg.errors import EncodingError, ProtocolAbort, ShamirError, StageError
from privacy.secagg.graph import consistency_quorum
from privacy.secagg.graph import neighbours as build_graph
from privacy.secagg.masks import pairwise_mask, pairwise_sign, self_mask
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


class ServerStage(enum.IntEnum):
    SETUP = 0
    KEYS = 1
    SHARES = 2
    MASKED = 3
    SIGNED = 4
    DONE = 5
    ABORTED = 9


@dataclass(frozen=True)
class AggregateResult:
    """The only output: the weighted mean of the contributors' clipped updates."""

    mean: np.ndarray
    total_weight: int
    contributors: tuple[int, ...]
    dropped_after_sharing: tuple[int, ...]
    excluded: tuple[int, ...]


class SecAggServer:
    """The server's state machine for one round; feed each stage the replies that arrived."""

    def __init__(self, setup: RoundSetup) -> None:
        self.setup = setup
        self.graph = build_graph(setup.participants, setup.neighbours, setup.graph_seed)
        self.stage = ServerStage.SETUP
        self.excluded: set[int] = set()
        self.abort_reason: str | None = None
        self._length = setup.vector_length + 1
        self._bits = setup.encoding.mod_bits
        self._context = setup.digest()

    # stage 1 -> 2 ----------------------------------------------------------------------
    def collect_keys(self, replies: Iterable[AdvertiseKeys]) -> dict[int, NeighbourKeys]:
        self._expect(ServerStage.SETUP)
        self.keys: dict[int, AdvertiseKeys] = {}
        for r in replies:
            if r.sender in self.graph and r.sender not in self.keys:
                self.keys[r.sender] = r
        self.u1 = frozenset(self.keys)
        self._require(len(self.u1), "devices advertised keys")
        self.stage = ServerStage.KEYS
        return {d: NeighbourKeys(d, tuple(self.keys[p] for p in sorted(self.graph[d] & self.u1)))
                for d in sorted(self.u1)}

    # stage 2 -> 3 ----------------------------------------------------------------------
    def collect_shares(self, replies: Iterable[ShareKeys]) -> dict[int, SharesDelivery]:
        """U2: devices that shared, minus any a neighbour rejected, pruned until every
        member has shares to and from at least t members of U2 among its neighbours."""
        self._expect(ServerStage.KEYS)
        boxes: dict[int, dict[int, bytes]] = {}
        for r in replies:
            if r.sender in self.u1 and r.sender not in boxes:
                boxes[r.sender] = dict(r.ciphertexts)
                self.excluded |= {j for j in r.rejected if j in self.graph[r.sender]}
        u2 = set(boxes) - self.excluded
        changed = True
        while changed:
            changed = False
            for d in sorted(u2):
                peers = self.graph[d] & u2
                complete = all(p in boxes[d] and d in boxes[p] for p in peers)
                if not complete or len(peers) < self.setup.threshold:
                    u2.discard(d)
                    changed = True
        self.u2 = frozenset(u2)
        self._require(len(self.u2), "devices completed key sharing")
        self.stage = ServerStage.SHARES
        return {d: SharesDelivery(d, {p: boxes[p][d] for p in sorted(self.graph[d] & self.u2)})
                for d in sorted(self.u2)}

    # stage 3 -> 4 ----------------------------------------------------------------------
    def collect_masked(self, replies: Iterable[MaskedInput]) -> dict[int, ConsistencyRequest]:
        self._expect(ServerStage.SHARES)
        dtype = self.setup.encoding.dtype
        self.masked: dict[int, np.ndarray] = {}
        for r in replies:
            vector = np.asarray(r.vector)
            if (r.sender in self.u2 and r.sender not in self.masked
                    and vector.shape == (self._length,) and vector.dtype == dtype):
                self.masked[r.sender] = vector
        self.u3 = frozenset(self.masked)
        self._require(len(self.u3), "devices sent a masked input")
        self._require_quorum(len(self.u3), "devices sent a masked input")
        self.stage = ServerStage.MASKED
        u3 = tuple(sorted(self.u3))
        return {d: ConsistencyRequest(d, u3) for d in u3}

    # stage 3b -> 4: consistency check --------------------------------------------------
    def collect_signatures(self, replies: Iterable[ConsistencySignature]
                           ) -> dict[int, UnmaskRequest]:
        """Forward every U3 member's signature over U3 with the unmasking requests (to the
        signers); abort when fewer than the quorum signed (no device would reveal)."""
        self._expect(ServerStage.MASKED)
        signatures: dict[int, bytes] = {}
        for r in replies:
            if r.sender in self.u3 and r.sender not in signatures:
                signatures[r.sender] = bytes(r.signature)
        self._require_quorum(len(signatures), "devices signed the survivor set")
        self.stage = ServerStage.SIGNED
        u3, dropped = tuple(sorted(self.u3)), self.u2 - self.u3
        forwarded = tuple(sorted(signatures.items()))
        return {d: UnmaskRequest(d, tuple(sorted(self.graph[d] & self.u3)),
                                 tuple(sorted(self.graph[d] & dropped)), u3, forwarded)
                for d in sorted(signatures)}

    # stage 4 -> result -----------------------------------------------------------------
    def finish(self, replies: Iterable[UnmaskReply]) -> AggregateResult:
        """Reconstruct the needed secrets from t shares each, remove the masks, decode."""
        self._expect(ServerStage.SIGNED)
        answers: dict[int, UnmaskReply] = {}
        for r in replies:
            if r.sender in self.u3 and r.sender not in answers:
                answers[r.sender] = r
        dropped = self.u2 - self.u3
        try:
            seeds = {u: self._reconstruct(u, answers, "self_mask_shares") for u in self.u3}
            mask_keys = {d: self._reconstruct_key(d, answers) for d in dropped}
        except ProtocolAbort:
            self.stage = ServerStage.ABORTED
            raise
        total = modular_sum(self.masked.values(), self._bits)
        for u in sorted(self.u3):
            total -= self_mask(seeds[u], self._context, self._length, self._bits)
        for d in sorted(dropped):
            for v in sorted(self.graph[d] & self.u3):
                mask = pairwise_mask(mask_keys[d], self.keys[v].mask_pk, self._context,
                                     self._length, self._bits)
                # v added sign(v, d) * mask; take it back out
                if pairwise_sign(v, d) > 0:
                    total -= mask
                else:
                    total += mask
        try:  # a hostile input (weight coordinate, unclipped values) fails the round only
            mean, weight = self.setup.encoding.decode(reduce(total, self._bits), len(self.u3))
            self.setup.encoding.check_mean(mean)
        except EncodingError as err:
            self._abort(f"the unmasked sum is not one of clipped inputs: {err}")
            raise  # unreachable; for type checkers
        self.stage = ServerStage.DONE
        return AggregateResult(mean, weight, tuple(sorted(self.u3)), tuple(sorted(dropped)),
                               tuple(sorted(self.excluded)))

    def _shares_for(self, owner: int, answers: dict[int, UnmaskReply],
                    kind: str) -> list[shamir.Share]:
        holders = sorted(self.graph[owner] & self.u2 & set(answers))
        shares = [shamir.Share(shamir.x_for(h), getattr(answers[h], kind)[owner])
                  for h in holders if owner in getattr(answers[h], kind)]
        if len(shares) < self.setup.threshold:
            self._abort(f"only {len(shares)} shares for device {owner}, threshold is "
                        f"{self.setup.threshold}")
        return shares

    def _reconstruct(self, owner: int, answers: dict[int, UnmaskReply], kind: str) -> bytes:
        try:
            return shamir.combine(self._shares_for(owner, answers, kind), self.setup.threshold)
        except ShamirError as err:
            self._abort(f"shares for device {owner} are inconsistent: {err}")
            raise  # unreachable; for type checkers

    def _reconstruct_key(self, owner: int, answers: dict[int, UnmaskReply]) -> X25519PrivateKey:
        """The dropped device's mask key, checked against the public key it advertised."""
        raw = self._reconstruct(owner, answers, "key_shares")
        key = X25519PrivateKey.from_private_bytes(raw)
        public = key.public_key().public_bytes(serialization.Encoding.Raw,
                                               serialization.PublicFormat.Raw)
        if public != self.keys[owner].mask_pk:
            self._abort(f"reconstructed mask key of device {owner} does not match its "
                        "advertised key (bad shares)")
        return key

    # helpers -------------------------------------------------------------------------
    def _require(self, count: int, what: str) -> None:
        if count < self.setup.threshold:
            self._abort(f"only {count} {what}, threshold is {self.setup.threshold}")

    def _require_quorum(self, count: int, what: str) -> None:
        quorum = consistency_quorum(len(self.setup.participants), self.setup.threshold,
                                    self.setup.max_colluding)
        if count < quorum:
            self._abort(f"only {count} {what}, the consistency check needs {quorum}")

    def _expect(self, stage: ServerStage) -> None:
        if self.stage == ServerStage.ABORTED:
            raise StageError(f"round aborted: {self.abort_reason}")
        if self.stage != stage:
            raise StageError(f"server is at stage {self.stage.name}, not {stage.name}")

    def _abort(self, reason: str) -> None:
        self.stage = ServerStage.ABORTED
        self.abort_reason = reason
        for name in ("masked",):  # drop every masked input: nothing partial survives
            if hasattr(self, name):
                delattr(self, name)
        raise ProtocolAbort(reason)
