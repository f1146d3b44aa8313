"""The two plaintexts of an unlinkable upload, and the nesting that hides each from a party.

INNER record, format version 1, sealed to the analyzer (integers little-endian)::

    0   4  magic b"MSRI"          8   4  day (u32): coarsened capture day; NO_DAY = dropped
    4   1  version (u8) = 1       12  16 pseudonym: fresh random bytes, never the clip id
    5   1  real (u8): 0 = dummy   28  P  payload (privacy.payload v1, P bytes)
    6   2  P (u16)

OUTER batch, format version 1, sealed to the shuffler::

    0   4  magic b"MSRO"          6   2  M: inner ciphertexts (u16)
    4   1  version (u8) = 1       8   4  S: size of each inner ciphertext (u32)
    5   1  min crowd (u8)         12  M*S the inner ciphertexts

Why each field is what it is:

* every inner record has the same size (the payload is fixed-size, dummies carry a payload
  of the same size), so the shuffler's output cannot be split by length into real and
  dummy, or by device; and the outer batch's size is a function of M and P alone;
* the clip id would link a device's records across collections (ids are stable, often
  counters); a fresh 16-byte pseudonym per record still lets the analyzer address a row
  while linking nothing;
* the capture day is coarsened to a window (`coarsen_day`) or dropped: an exact day and
  hour are a fingerprint of a device's routine; no hour is carried at all;
* the outer header carries the smallest crowd the device accepts (its pinned minimum,
  `privacy.shuffle.pin`; 0 = the shuffler's own): only the shuffler reads it, and it
  releases the collection only if every sender's minimum is met;
* the inner context names the run, the collection and the encoder version, so an inner
  ciphertext cannot be replayed into another collection or attributed to another model.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import x25519 as _x25519

from privacy.shuffle.sealed import OVERHEAD, open_sealed, seal

INNER_MAGIC = b"MSRI"
OUTER_MAGIC = b"MSRO"
FORMAT_VERSION = 1
PSEUDONYM_BYTES = 16
NO_DAY = 0xFFFFFFFF  # the inner record's day when the run drops capture time
MAX_GRANULARITY_DAYS = 3650
_INNER = struct.Struct(f"<4sBBHI{PSEUDONYM_BYTES}s")
_OUTER = struct.Struct("<4sBBHI")
MAX_RECORDS = 0xFFFF


@dataclass(frozen=True)
class InnerRecord:
    """One record as the analyzer sees it: no device, no clip id, a coarse day at most."""

    payload: bytes
    day: int | None  # first day of the capture window; None: the run drops capture time
    pseudonym: bytes
    real: bool


def coarsen_day(day: int, granularity_days: int) -> int | None:
    """The first day of the `granularity_days`-wide window holding `day`; None when the
    granularity is 0 (capture time dropped). Windows start at day 0 for every device, so a
    window says nothing about which device chose it."""
    if not 0 <= granularity_days <= MAX_GRANULARITY_DAYS:
        raise ValueError(f"time granularity must be 0..{MAX_GRANULARITY_DAYS} days, "
                         f"got {granularity_days}")
    if day < 0:
        raise ValueError(f"capture day must be >= 0, got {day}")
    return None if granularity_days == 0 else day - day % granularity_days


def new_pseudonym() -> bytes:
    return secrets.token_bytes(PSEUDONYM_BYTES)


def inner_plaintext_size(payload_bytes: int) -> int:
    return _INNER.size + payload_bytes


def inner_size(payload_bytes: int) -> int:
    """Bytes of one inner ciphertext: a function of the payload size alone."""
    return inner_plaintext_size(payload_bytes) + OVERHEAD


def outer_size(records: int, payload_bytes: int) -> int:
    """Bytes of a device's outer blob: a function of (M, P) alone, never of its content."""
    return _OUTER.size + records * inner_size(payload_bytes) + OVERHEAD


def encode_inner(record: InnerRecord) -> bytes:
    if len(record.pseudonym) != PSEUDONYM_BYTES:
        raise ValueError(f"a pseudonym is {PSEUDONYM_BYTES} bytes, got {len(record.pseudonym)}")
    if record.day is not None and not 0 <= record.day < NO_DAY:
        raise ValueError(f"inner record day out of range: {record.day}")
    day = NO_DAY if record.day is None else record.day
    if not 1 <= len(record.payload) <= 0xFFFF:
        raise ValueError(f"inner record payload must be 1..65535 bytes, got "
                         f"{len(record.payload)}")
    return _INNER.pack(INNER_MAGIC, FORMAT_VERSION, int(record.real), len(record.payload),
                       day, record.pseudonym) + record.payload


def decode_inner(plain: bytes) -> InnerRecord:
    if len(plain) < _INNER.size:
        raise ValueError(f"inner record too short: {len(plain)} bytes")
    magic, version, real, size, day, pseudonym = _INNER.unpack_from(plain)
    if magic != INNER_MAGIC or version != FORMAT_VERSION:
        raise ValueError(f"inner record has magic {magic!r} version {version}, expected "
                         f"{INNER_MAGIC!r} version {FORMAT_VERSION}")
    if real > 1 or len(plain) != _INNER.size + size:
        raise ValueError(f"inner record is malformed (real flag {real}, {len(plain)} bytes "
                         f"for a {size}-byte payload)")
    return InnerRecord(plain[_INNER.size:], None if day == NO_DAY else day, pseudonym,
                       bool(real))


def seal_batch(records: Sequence[InnerRecord], analyzer_public: bytes, shuffler_public: bytes,
               inner_context: bytes, outer_context: bytes, min_crowd: int = 0) -> bytes:
    """The device's nested encryption: each record to the analyzer, the list to the shuffler.

    The inner ciphertexts are put in a random order before the outer seal, so even the
    shuffler could not tell real records (which the device lists first) from dummies by
    position; it cannot read either.
    """
    if not 1 <= len(records) <= MAX_RECORDS:
        raise ValueError(f"a batch holds 1..{MAX_RECORDS} records, got {len(records)}")
    if len({len(r.payload) for r in records}) != 1:
        raise ValueError("every record of a batch must have the same payload size")
    if not 0 <= min_crowd <= 0xFF:
        raise ValueError(f"a batch's minimum crowd is 0..255, got {min_crowd}")
    inner = [seal(analyzer_public, encode_inner(r), inner_context) for r in records]
    secrets.SystemRandom().shuffle(inner)
    body = _OUTER.pack(OUTER_MAGIC, FORMAT_VERSION, min_crowd, len(inner), len(inner[0])) + b"".join(inner)
    return seal(shuffler_public, body, outer_context)


@dataclass(frozen=True)
class OuterBatch:
    """An opened outer blob: what the shuffler holds for one sender until the release."""

    inner: tuple[bytes, ...]
    inner_size: int
    min_crowd: int  # the least crowd its sender accepts (0: the shuffler's own)


def open_outer(private: _x25519.X25519PrivateKey, blob: bytes, context: bytes) -> OuterBatch:
    """The shuffler's view of one sender's blob: M opaque inner ciphertexts of one size."""
    body = open_sealed(private, blob, context)
    if len(body) < _OUTER.size:
        raise ValueError(f"outer batch too short: {len(body)} bytes")
    magic, version, min_crowd, count, size = _OUTER.unpack_from(body)
    if magic != OUTER_MAGIC or version != FORMAT_VERSION:
        raise ValueError(f"outer batch has magic {magic!r} version {version}, expected "
                         f"{OUTER_MAGIC!r} version {FORMAT_VERSION}")
    if count < 1 or size <= OVERHEAD or len(body) != _OUTER.size + count * size:
        raise ValueError(f"outer batch declares {count} records of {size} bytes in "
                         f"{len(body)} bytes")
    start = _OUTER.size
    return OuterBatch(tuple(body[start + i * size:start + (i + 1) * size] for i in range(count)),
                      size, min_crowd)


def open_inner(private: _x25519.X25519PrivateKey, ciphertext: bytes, context: bytes
               ) -> InnerRecord:
    """The analyzer's view of one released ciphertext (SealError / ValueError if bad)."""
    return decode_inner(open_sealed(private, ciphertext, context))


def inner_context(run_id: str, collection: int, encoder_version: str) -> bytes:
    return f"fedmsr-shuffle/inner/v1\0{run_id}\0{collection}\0{encoder_version}".encode()


@dataclass(frozen=True)
class CollectionSettings:
    """Every per-collection setting a device's sealed records depend on."""

    run_id: str
    collection: int
    clips: int  # M
    dtype: str  # payload dtype
    encoder_version: str
    analyzer_key: bytes
    time_granularity_days: int
    release_clip: float  # 0 = sampled uploads
    release_noise: float


def collection_label(settings: CollectionSettings) -> str:
    """How the device, the collector and the shuffler name one collection: a hash of every
    setting in `settings`.

    Why a hash of all of them: the shuffler checks the crowd per label. If the label named
    only (run, collection), a server could give one device a setting of its own (another
    analyzer key, another time window, another release noise, another M) inside an honest
    crowd and pick that device's rows out of the release by the setting alone. With every
    setting in the label, which is also in the outer context the device seals to, a device
    given different settings lands in a collection of its own and must pass the crowd
    check alone.
    """
    parts = [settings.run_id, str(settings.collection), str(settings.clips), settings.dtype,
             settings.encoder_version, settings.analyzer_key.hex(),
             str(settings.time_granularity_days), float(settings.release_clip).hex(),
             float(settings.release_noise).hex()]
    return "c1-" + hashlib.sha256("\0".join(parts).encode()).hexdigest()


def outer_context(label: str) -> bytes:
    return f"fedmsr-shuffle/outer/v1\0{label}".encode()
