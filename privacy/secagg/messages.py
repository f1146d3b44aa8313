"""The protocol's messages as plain data (bytes, ints, tuples, one NumPy vector).

Plain so that the same objects travel through a unit test, a benchmark or Flower records
(the workflow converts them to ConfigRecords/ArrayRecords). Stages, in order:

  0 RoundSetup      server -> all       parameters, participants, public graph seed
  1 AdvertiseKeys   device -> server    two X25519 public keys, signed with the enrollment key
    NeighbourKeys   server -> device    the advertised keys of its neighbours
  2 ShareKeys       device -> server    Shamir shares for each neighbour, encrypted to it;
                                        neighbours whose signature failed
    SharesDelivery  server -> device    the ciphertexts addressed to it
  3 MaskedInput     device -> server    encoded update + self mask + pairwise masks
    ConsistencyRequest server -> device the survivor set U3 (the same for every device)
  3b ConsistencySignature device -> server  its enrollment-key signature over (setup, U3)
    UnmaskRequest   server -> device    U3, the signatures collected over it, and which
                                        neighbours survived / dropped (implied by U3)
  4 UnmaskReply     device -> server    self-mask shares of survivors OR key shares of the
                                        dropped, never both for one peer
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from privacy.secagg.encoding import EncodingSpec
from privacy.secagg.errors import SecAggError
from privacy.secagg.graph import check_parameters


@dataclass(frozen=True)
class RoundSetup:
    round_context: bytes
    participants: tuple[int, ...]
    neighbours: int
    threshold: int
    graph_seed: bytes
    encoding: EncodingSpec
    vector_length: int
    #: C: how many enrolled devices may collude with the server (t and the consistency
    #: quorum are chosen against it; see `privacy.secagg.graph.threshold_for`).
    max_colluding: int = 0

    def __post_init__(self) -> None:
        if len(set(self.participants)) != len(self.participants):
            raise SecAggError("participants must be distinct")
        if any(p < 0 or p >= 1 << 63 for p in self.participants):
            raise SecAggError("participant ids must be in 0..2^63-1")
        check_parameters(len(self.participants), self.neighbours, self.threshold,
                         self.max_colluding)
        self.encoding.check_devices(len(self.participants))
        if self.vector_length < 1:
            raise SecAggError("vector_length must be >= 1")
        if len(self.graph_seed) < 16:
            raise SecAggError("graph_seed must be at least 16 bytes")

    def digest(self) -> bytes:
        """SHA-256 of every parameter: what keys are signed and keys derived under."""
        e = self.encoding
        canonical = json.dumps({
            "context": self.round_context.hex(), "participants": sorted(self.participants),
            "k": self.neighbours, "t": self.threshold, "seed": self.graph_seed.hex(),
            "clip": repr(float(e.clip)), "bits": e.mod_bits, "max_weight": e.max_weight,
            "max_devices": e.max_devices, "length": self.vector_length,
            "colluding": self.max_colluding, "norm": repr(float(e.norm)),
        }, sort_keys=True).encode()
        return hashlib.sha256(canonical).digest()


@dataclass(frozen=True)
class AdvertiseKeys:
    sender: int
    cipher_pk: bytes
    mask_pk: bytes
    signature: bytes


@dataclass(frozen=True)
class NeighbourKeys:
    recipient: int
    keys: tuple[AdvertiseKeys, ...]


@dataclass(frozen=True)
class ShareKeys:
    sender: int
    ciphertexts: dict[int, bytes]
    rejected: tuple[int, ...] = ()


@dataclass(frozen=True)
class SharesDelivery:
    recipient: int
    ciphertexts: dict[int, bytes]


@dataclass(frozen=True)
class MaskedInput:
    sender: int
    vector: np.ndarray


@dataclass(frozen=True)
class ConsistencyRequest:
    """The survivor set U3 (devices whose masked input the server holds), for signing."""

    recipient: int
    survivors: tuple[int, ...]


@dataclass(frozen=True)
class ConsistencySignature:
    sender: int
    signature: bytes


@dataclass(frozen=True)
class UnmaskRequest:
    recipient: int
    #: The recipient's neighbours in U3 / outside it (what U3 implies for it).
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    #: U3 as the devices signed it, and (signer, signature) pairs over it.
    survivor_set: tuple[int, ...] = ()
    signatures: tuple[tuple[int, bytes], ...] = ()


@dataclass(frozen=True)
class UnmaskReply:
    sender: int
    self_mask_shares: dict[int, int] = field(default_factory=dict)
    key_shares: dict[int, int] = field(default_factory=dict)
