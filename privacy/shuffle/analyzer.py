"""The analyzer's step: open what the shuffler released, keep the real records.

The analyzer holds the only key that opens inner records. It receives them from the
shuffler already mixed across senders, so what it opens has no sender; it drops dummies
(they exist only to keep every device's batch the same size) and sorts the rest by their
random pseudonym, so even the order rows are stored in carries nothing of the release order.
A ciphertext that does not open is counted, never guessed at: it was tampered with, sealed
for another collection, or sealed to another key. A release in which a ciphertext or a
pseudonym repeats is refused whole: a device seals every record with a fresh ephemeral key
and a fresh pseudonym, so a repeat can only be a replay, and a replayed record is a
marker (its copies, or the sender it was replayed under, stand out).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import x25519

from privacy.shuffle.records import InnerRecord, open_inner
from privacy.shuffle.sealed import SealError


class ReleaseRefused(ValueError):
    """The analyzer will not store this release (the reason names the repeat)."""


@dataclass(frozen=True)
class Opened:
    real: tuple[InnerRecord, ...]  # sorted by pseudonym
    dummies: int
    unopened: int


def open_release(private: x25519.X25519PrivateKey, released: Sequence[bytes],
                 context: bytes) -> Opened:
    if len(set(released)) != len(released):
        raise ReleaseRefused(f"release holds {len(released) - len(set(released))} repeated "
                             f"ciphertext(s): a replay; nothing opened")
    real: list[InnerRecord] = []
    pseudonyms: set[bytes] = set()
    dummies = unopened = 0
    for ciphertext in released:
        try:
            record = open_inner(private, ciphertext, context)
        except (SealError, ValueError):
            unopened += 1
            continue
        if record.pseudonym in pseudonyms:
            raise ReleaseRefused("release holds repeated pseudonyms: a replay; nothing "
                                 "stored")
        pseudonyms.add(record.pseudonym)
        if record.real:
            real.append(record)
        else:
            dummies += 1
    real.sort(key=lambda r: r.pseudonym)
    return Opened(tuple(real), dummies, unopened)
