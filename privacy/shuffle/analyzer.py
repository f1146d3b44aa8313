"""The analyzer's step: open what the shuffler released, keep the real records.

The analyzer holds the only key that opens inner records. It receives them from the
shuffler already mixed across senders, so what it opens has no sender; it drops dummies
(they exist only to keep every device's batch the same size) and sorts the rest by their
random pseudonym, so even the order rows are stored in carries nothing of the release order.
A ciphertext that does not open is counted, never guessed at: it was tampered with, sealed
for another collection, or sealed to another key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import x25519

from privacy.shuffle.records import InnerRecord, open_inner
from privacy.shuffle.sealed import SealError


@dataclass(frozen=True)
class Opened:
    real: tuple[InnerRecord, ...]  # sorted by pseudonym
    dummies: int
    unopened: int


def open_release(private: x25519.X25519PrivateKey, released: Sequence[bytes],
                 context: bytes) -> Opened:
    real: list[InnerRecord] = []
    dummies = unopened = 0
    for ciphertext in released:
        try:
            record = open_inner(private, ciphertext, context)
        except (SealError, ValueError):
            unopened += 1
            continue
        if record.real:
            real.append(record)
        else:
            dummies += 1
    real.sort(key=lambda r: r.pseudonym)
    return Opened(tuple(real), dummies, unopened)
