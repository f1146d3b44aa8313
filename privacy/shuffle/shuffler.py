"""The shuffler's state machine: accept one outer blob per sender, release a shuffled crowd.

The shuffler is the only party that sees who sent what, and it never sees contents (the
records inside are sealed to the analyzer). It exists to cut the link between the two:

* **one batch per sender per collection** — a second batch would let a sender (or a server
  replaying a sender's blob under another id) skew the crowd, so it is refused;
* **a crowd or nothing** — the release happens only when at least `min_crowd` distinct
  senders contributed; below that, a release could be attributed to too few devices, so it
  is refused and the collection is dropped (nothing is released, ever, for it: a server
  cannot top it up later with more senders and try again);
* **the sender is forgotten on arrival** — only the opened inner ciphertexts are kept, in
  a list that is shuffled with the OS CSPRNG (`secrets.SystemRandom`) at release, across
  every sender of the collection; senders are kept only as a set, to refuse duplicates;
* **the crowd each sender asked for** — a device puts its pinned minimum crowd inside its
  outer blob; the collection is released only if it reaches the largest such minimum
  (and the shuffler's own);
* **no replay** — a blob the shuffler has accepted before (by its SHA-256, in any
  collection) is refused, so a server cannot resubmit a device's blob under fake sender
  ids to fake a crowd around it; and a release whose inner ciphertexts repeat is refused
  (the collection is closed, nothing is released);
* **nothing twice, across restarts** — the closed collections and the seen blob hashes go
  to a `Journal` (the service keeps an append-only file next to its key, synced to disk
  before the shuffler answers), and a shuffler started again loads them: a restarted
  shuffler does not release a collection again, nor accept a blob it accepted before (else
  a server could release overlapping subsets of a crowd and intersect them);
* **one size per collection** — every batch of a collection must carry the same count and
  size of inner ciphertexts as the first: a different size would mark its sender's records.

What the shuffler cannot stop (see docs/representations.md, "Unlinkable collection"): a
server that invents senders (Sybils) with its own blobs to reach `min_crowd`; counting
distinct *enrolled* devices needs the shuffler to verify device identities, which it does
not. `Shuffler` holds no I/O: the HTTP service in `fl_server.shuffler_service` wraps it.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric import x25519

from privacy.shuffle.records import open_outer, outer_context
from privacy.shuffle.sealed import SealError, public_bytes


class ShuffleRefused(ValueError):
    """The shuffler will not accept this batch or release this collection (says why)."""


class Journal(Protocol):
    """Where the shuffler's memory outlives it: each call returns once the entry is durable."""

    def closed(self, collection: str) -> None: ...

    def seen(self, digest: bytes) -> None: ...


@dataclass
class _Pending:
    senders: set[str] = field(default_factory=set)
    inner: list[bytes] = field(default_factory=list)
    shape: tuple[int, int] | None = None  # (records per batch, inner ciphertext size)
    required: int = 0  # the largest minimum crowd a sender's batch asked for


@dataclass(frozen=True)
class Accepted:
    collection: str
    senders: int  # distinct senders so far (the shuffler's count; the server learns it too)


@dataclass(frozen=True)
class Released:
    collection: str
    senders: int
    inner: tuple[bytes, ...]  # every sender's inner ciphertexts, in one random order


class Shuffler:
    """Thread-safe: the HTTP service calls it from one thread per request."""

    def __init__(self, private_key: x25519.X25519PrivateKey, min_crowd: int,
                 rng: secrets.SystemRandom | None = None, journal: Journal | None = None,
                 closed: Iterable[str] = (), seen: Iterable[bytes] = ()) -> None:
        """`journal`: where closed collections and seen blobs are recorded; `closed`,
        `seen`: what an earlier run of this shuffler recorded there."""
        if min_crowd < 2:
            raise ValueError(f"min-crowd must be >= 2 (a crowd of one links every record "
                             f"to its sender), got {min_crowd}")
        self._key = private_key
        self.min_crowd = min_crowd
        self._rng = rng or secrets.SystemRandom()
        self._pending: dict[str, _Pending] = {}
        self._closed: set[str] = set(closed)
        self._seen: set[bytes] = set(seen)  # SHA-256 of every blob accepted, any collection
        self._journal = journal
        self._lock = threading.Lock()

    @property
    def public_key(self) -> bytes:
        """What devices seal their outer blobs to (published by the service)."""
        return public_bytes(self._key)

    def submit(self, collection: str, sender: str, blob: bytes) -> Accepted:
        """Open one sender's outer blob for `collection`; ShuffleRefused says why not."""
        if not collection or not sender:
            raise ShuffleRefused("a batch needs a collection and a sender")
        try:
            batch = open_outer(self._key, blob, outer_context(collection))
        except (SealError, ValueError) as exc:
            raise ShuffleRefused(f"batch from {sender} for {collection} refused: {exc}") from None
        digest = hashlib.sha256(blob).digest()
        with self._lock:
            if digest in self._seen:
                raise ShuffleRefused(f"batch from {sender} for {collection} was submitted "
                                     f"before: a replayed blob is refused")
            if collection in self._closed:
                raise ShuffleRefused(f"collection {collection} is closed (released or "
                                     f"refused): no more batches")
            pending = self._pending.setdefault(collection, _Pending())
            if sender in pending.senders:
                raise ShuffleRefused(f"sender {sender} already sent a batch for {collection}: "
                                     f"one batch per sender")
            shape = (len(batch.inner), batch.inner_size)
            if pending.shape is not None and shape != pending.shape:
                raise ShuffleRefused(f"batch from {sender} has {shape[0]} records of "
                                     f"{shape[1]} bytes; {collection} takes "
                                     f"{pending.shape[0]} of {pending.shape[1]}")
            pending.shape = shape
            if self._journal is not None:
                self._journal.seen(digest)
            self._seen.add(digest)
            pending.required = max(pending.required, batch.min_crowd)
            pending.senders.add(sender)
            pending.inner.extend(batch.inner)
            return Accepted(collection, len(pending.senders))

    def release(self, collection: str) -> Released:
        """Every inner ciphertext of `collection` in a random order, if the crowd is large
        enough; either way the collection is closed."""
        with self._lock:
            if collection in self._closed:
                raise ShuffleRefused(f"collection {collection} was already released or refused")
            if self._journal is not None:  # durable before anything is answered
                self._journal.closed(collection)
            pending = self._pending.pop(collection, _Pending())
            self._closed.add(collection)
        crowd, need = len(pending.senders), max(self.min_crowd, pending.required)
        if crowd < need:
            raise ShuffleRefused(f"collection {collection} has {crowd} sender(s), fewer than "
                                 f"min-crowd {need}: nothing released")
        inner = list(pending.inner)
        if len(set(inner)) != len(inner):
            raise ShuffleRefused(f"collection {collection} holds repeated inner ciphertexts "
                                 f"(a replay): nothing released")
        self._rng.shuffle(inner)
        return Released(collection, crowd, tuple(inner))
