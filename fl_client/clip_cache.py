"""Decoded recordings kept in memory, so a round does not decode the device's footage again.

A device is asked for the same days at every check-in, every round and every evaluation,
and decoding video is the slowest thing it does short of training. :class:`ClipCache` is
an **in-memory LRU bounded by bytes** (the decoded clip arrays' ``nbytes``), shared by
every real-footage source of the process (:data:`SHARED_CACHE`, since the handlers build a
source per message). Nothing is written to disk: decoded frames are no less private than
the footage, and the device's storage already holds that.

An entry is keyed by (resolved path, decode parameters) and remembers the recording's
*fingerprint*: size and ``mtime_ns`` of a video file, or a digest of (name, size,
``mtime_ns``) of every frame image of a frame folder. A lookup re-stats the recording; a
different fingerprint (the file was replaced, edited, touched, a frame added) drops the
entry and decodes again. Unreadable recordings are cached too (as their reason, counted
as a small fixed size), so a corrupt file is not re-decoded every round either.
A recording larger than the whole bound is decoded and returned but not kept.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from privacy.footage import (
    Decoded,
    DecodeParams,
    UnreadableFootage,
    decode_recording,
    frame_images,
)

__all__ = ["DEFAULT_CACHE_BYTES", "SHARED_CACHE", "CacheStats", "ClipCache", "fingerprint"]

DEFAULT_CACHE_BYTES = 256 * 1024 * 1024
_FAILURE_BYTES = 256  # what a remembered failure counts against the bound

Decoder = Callable[[Path, DecodeParams], Decoded]


def fingerprint(path: Path) -> tuple[int, int, str] | None:
    """What changes when the recording changes; None when it cannot be stat'ed."""
    try:
        st = path.stat()
        if path.is_dir():
            h = hashlib.blake2b(digest_size=16)
            for p in frame_images(path):
                s = p.stat()
                h.update(f"{p.name}\0{s.st_size}\0{s.st_mtime_ns}\n".encode())
            return (0, 0, h.hexdigest())
        return (st.st_size, st.st_mtime_ns, "")
    except OSError:
        return None


@dataclass(frozen=True)
class CacheStats:
    hits: int
    decodes: int  # misses: recordings decoded (or found unreadable)
    entries: int
    bytes: int
    max_bytes: int


@dataclass(frozen=True)
class _Entry:
    fingerprint: tuple[int, int, str]
    value: Decoded | UnreadableFootage
    nbytes: int


def _decode(path: Path, params: DecodeParams) -> Decoded:
    return decode_recording(path, params)


class ClipCache:
    """An LRU of decoded recordings bounded by `max_bytes` (see the module docstring)."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[tuple[str, DecodeParams], _Entry] = OrderedDict()
        self._bytes = 0
        self._hits = 0
        self._decodes = 0
        self._lock = threading.Lock()

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._hits, self._decodes, len(self._entries), self._bytes,
                              self.max_bytes)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def get(self, path: Path, params: DecodeParams, decode: Decoder = _decode) -> Decoded:
        """The recording's clips, decoded now or earlier; :class:`UnreadableFootage` if none."""
        key = (os.path.realpath(path), params)
        fp = fingerprint(path)
        if fp is None:
            raise UnreadableFootage("does not exist or cannot be read")
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.fingerprint != fp:  # changed on disk
                self._drop(key)
                entry = None
            if entry is not None:
                self._entries.move_to_end(key)
                self._hits += 1
        if entry is None:
            try:
                value: Decoded | UnreadableFootage = decode(path, params)
            except UnreadableFootage as exc:
                value = exc
            entry = self._put(key, fp, value)
        if isinstance(entry.value, UnreadableFootage):
            raise UnreadableFootage(str(entry.value))
        return entry.value

    def _drop(self, key: tuple[str, DecodeParams]) -> None:
        self._bytes -= self._entries.pop(key).nbytes

    def _put(self, key: tuple[str, DecodeParams], fp: tuple[int, int, str],
             value: Decoded | UnreadableFootage) -> _Entry:
        size = value.nbytes if isinstance(value, Decoded) else _FAILURE_BYTES
        entry = _Entry(fp, value, size)
        with self._lock:
            self._decodes += 1
            if key in self._entries:
                self._drop(key)
            if size > self.max_bytes:
                return entry  # larger than the whole cache: used once, not kept
            while self._bytes + size > self.max_bytes and self._entries:
                self._drop(next(iter(self._entries)))
            self._entries[key] = entry
            self._bytes += size
        return entry


#: the process's cache, used by every real-footage source unless it is given its own
SHARED_CACHE = ClipCache()
