"""Representation uploads on the wire: the server's request and the device's batch.

The server asks (`query.upload`) for a fixed count M of clips; the device answers with
one blob whose length depends only on (M, latent_dim, dtype), real records first and
dummy records after them (`fl_client.uploads` says why: sizes must not reveal content).

BATCH format version 1 (integers little-endian)::

    offset   size     field
    0        4        magic b"MSRB"
    4        1        version (u8) = 1
    5        1        flags (u8): bit 0 = the information cap stopped the device
    6        2        M: records in the batch (u16)
    8        2        R: real records among them, the first R (u16)
    10       2        P: payload size (u16), privacy.payload.payload_size(D, dtype)
    12       4        bits charged for the R real clips (u32, whole bits, rounded up)
    16       8        the device's information total before this batch (u64, bits)
    24       32       encoder version (SHA-256 digest, see `encoder_version`)
    56       M*(P+40) records: payload (P) | day (u32) | hour (u8; 255: unknown) | real (u8) |
                      reserved (u16, 0) | clip id (32 bytes, UTF-8, NUL-padded; a
                      longer id is replaced by "h-" + 30 hex digits of its SHA-256)
    end      4        CRC-32 of every preceding byte (u32)

Unlinkable collection (docs/representations.md): a request that carries the analyzer's and
the shuffler's public keys asks for a SEALED reply instead. Only the device's ledger charge
is in the clear; the records travel inside the outer blob (`privacy.shuffle.records`), whose
size is a function of (M, payload size) alone.

SEALED format version 1 (integers little-endian)::

    offset   size     field
    0        4        magic b"MSRS"
    4        1        version (u8) = 1
    5        1        flags (u8): bit 0 = the information cap stopped the device
    6        2        M: records sealed in the outer blob (u16)
    8        2        R: real records among them (u16), the ledger charge's clip count
    10       2        reserved (u16, 0)
    12       4        bits charged for the R real clips (u32)
    16       8        the device's information total before this batch (u64, bits)
    24       32       encoder version (SHA-256 digest)
    56       4        L: length of the outer blob (u32)
    60       L        the outer blob, sealed to the shuffler
    end      4        CRC-32 of every preceding byte (u32)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import ConfigRecord

from privacy.payload import decode_payload, payload_size
from privacy.shuffle.records import CollectionSettings, collection_label
from privacy.wire.records import config_bytes, config_float, config_int, config_str

if TYPE_CHECKING:
    from privacy.encoder import EncoderConfig

MAGIC = b"MSRB"
BATCH_VERSION = 1
FLAG_CAPPED = 0x01
CLIP_ID_BYTES = 32
UNKNOWN_HOUR = 255  # a record's hour byte when the footage gives no hour of capture
MAX_CLIPS = 1024  # per batch: keeps one reply well under Flower's message limits
_HEADER = struct.Struct("<4sBBHHHIQ32s")
_RECORD_TAIL = struct.Struct(f"<IBBH{CLIP_ID_BYTES}s")
_CRC = struct.Struct("<I")
SEALED_MAGIC = b"MSRS"
SEALED_VERSION = 1
_SEALED_HEADER = struct.Struct("<4sBBHHHIQ32sI")
KEY_BYTES = 32  # an X25519 public key


def encoder_version(model: EncoderConfig, arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 (hex) over the encoder configuration and every array (name, dtype, shape,
    bytes), in name order: the identity of the function that produced a representation.

    Server and device compute it the same way from the same global arrays, so a stored
    representation names exactly the model it came from and two versions are never mixed.
    """
    digest = hashlib.sha256(b"fedmsr-encoder-version/1\n")
    digest.update(json.dumps(dataclasses.asdict(model), sort_keys=True).encode())
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        head = f"\n{name}\0{value.dtype.str}\0{','.join(map(str, value.shape))}\0".encode()
        digest.update(struct.pack("<Q", len(head)) + head)
        digest.update(value.tobytes())
    return digest.hexdigest()


# -- the request ------------------------------------------------------------------------


@dataclass(frozen=True)
class UploadRequest:
    """What the server asks for: M clips of collection `collection` of run `run_id`."""

    run_id: str
    server_round: int
    collection: int  # 1, 2, ... within the run: which slice of the capture stream
    clips: int  # M, fixed by the run's configuration, never by the device's content
    dtype: str  # payload dtype (privacy.payload)
    encoder_version: str
    info_bits_cap: float  # the registry's cap for this device; 0 = none
    server_bits: int  # what the server's ledger says the device has uploaded so far
    bundles_dir: str = ""  # simulation only: where the simulated enrollment's bundles are
    #: Randomized release (`privacy.release_mechanism.GaussianRelease`): the L2 norm the
    #: posterior mean is clipped to and the noise multiplier; 0 = off (a sample of q(z|x)).
    #: Absent from older requests, which therefore decode as "off".
    release_clip: float = 0.0
    release_noise: float = 0.0
    #: The registry's epsilon cap for this device (0 = none): the device checks the smaller
    #: of it and its own before reserving a randomized release.
    release_epsilon_cap: float = 0.0
    # unlinkable collection: both public keys (X25519, raw) or neither; the granularity
    # (days, 0 = drop) the device coarsens capture days to before sealing
    analyzer_key: bytes = b""
    shuffler_key: bytes = b""
    time_granularity_days: int = 0

    @property
    def unlinkable(self) -> bool:
        """The device must answer with a SEALED reply (see the module doc)."""
        return bool(self.shuffler_key)

    def __post_init__(self) -> None:
        if not self.run_id:
            raise ValueError("upload request: run-id is empty")
        for name in ("server_round", "collection"):
            if getattr(self, name) < 1:
                raise ValueError(f"upload request: {name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.clips <= MAX_CLIPS:
            raise ValueError(f"upload request: clips must be in 1..{MAX_CLIPS}, got {self.clips}")
        payload_size(1, self.dtype)  # ValueError naming the dtype
        if len(self.encoder_version) != 64:
            raise ValueError("upload request: encoder-version must be a SHA-256 hex digest")
        if not (math.isfinite(self.info_bits_cap) and self.info_bits_cap >= 0):
            raise ValueError(f"upload request: info-bits-cap must be >= 0, "
                             f"got {self.info_bits_cap}")
        if self.server_bits < 0:
            raise ValueError(f"upload request: server-bits must be >= 0, got {self.server_bits}")
        if bool(self.analyzer_key) != bool(self.shuffler_key):
            raise ValueError("upload request: analyzer-key and shuffler-key go together")
        for name in ("analyzer_key", "shuffler_key"):
            key = getattr(self, name)
            if key and len(key) != KEY_BYTES:
                raise ValueError(f"upload request: {name.replace('_', '-')} must be a "
                                 f"{KEY_BYTES}-byte X25519 public key, got {len(key)} bytes")
        if not 0 <= self.time_granularity_days <= 3650:
            raise ValueError(f"upload request: time-granularity-days must be 0..3650, got "
                             f"{self.time_granularity_days}")
        for name in ("release_clip", "release_noise", "release_epsilon_cap"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"upload request: {name.replace('_', '-')} must be a finite "
                                 f"number >= 0, got {value}")
        if (self.release_clip > 0) != (self.release_noise > 0):
            raise ValueError("upload request: release-clip and release-noise are both > 0 "
                             "(randomized release) or both 0 (off), got "
                             f"{self.release_clip} and {self.release_noise}")

    @property
    def collection_label(self) -> str:
        """The shuffler's name for the collection this request is part of: a hash of every
        setting the device's sealed records depend on (`privacy.shuffle.records`)."""
        return collection_label(CollectionSettings(
            self.run_id, self.collection, self.clips, self.dtype, self.encoder_version,
            self.analyzer_key, self.time_granularity_days, self.release_clip,
            self.release_noise))

    @property
    def randomized(self) -> bool:
        """Whether the device must release through the Gaussian mechanism."""
        return self.release_noise > 0

    def to_record(self) -> ConfigRecord:
        return ConfigRecord({"run-id": self.run_id, "server-round": self.server_round,
                             "collection": self.collection, "clips": self.clips,
                             "dtype": self.dtype, "encoder-version": self.encoder_version,
                             "info-bits-cap": float(self.info_bits_cap),
                             "server-bits": int(self.server_bits),
                             "bundles-dir": self.bundles_dir,
                             "release-clip": float(self.release_clip),
                             "release-noise": float(self.release_noise),
                             "release-epsilon-cap": float(self.release_epsilon_cap),
                             **({"analyzer-key": self.analyzer_key,
                                 "shuffler-key": self.shuffler_key,
                                 "time-granularity-days": self.time_granularity_days}
                                if self.unlinkable else {})})

    @classmethod
    def from_record(cls, record: ConfigRecord) -> UploadRequest:
        """Rebuild and validate; a missing or bad key raises ValueError naming it."""
        try:
            analyzer, shuffler, granularity = _unlinkable_fields(record)
            return cls(run_id=config_str(record, "run-id"),
                       server_round=config_int(record, "server-round"),
                       collection=config_int(record, "collection"),
                       clips=config_int(record, "clips"), dtype=config_str(record, "dtype"),
                       encoder_version=config_str(record, "encoder-version"),
                       info_bits_cap=config_float(record, "info-bits-cap"),
                       server_bits=config_int(record, "server-bits"),
                       bundles_dir=(config_str(record, "bundles-dir")
                                    if "bundles-dir" in record else ""),
                       release_clip=(config_float(record, "release-clip")
                                     if "release-clip" in record else 0.0),
                       release_noise=(config_float(record, "release-noise")
                                      if "release-noise" in record else 0.0),
                       release_epsilon_cap=(config_float(record, "release-epsilon-cap")
                                            if "release-epsilon-cap" in record else 0.0),
                       analyzer_key=analyzer, shuffler_key=shuffler,
                       time_granularity_days=granularity)
        except KeyError as exc:
            raise ValueError(f"malformed upload request: missing {exc.args[0]}") from None


def _unlinkable_fields(record: ConfigRecord) -> tuple[bytes, bytes, int]:
    """(analyzer key, shuffler key, granularity): keys an ordinary request does not have."""
    if "shuffler-key" not in record and "analyzer-key" not in record:
        return b"", b"", 0
    return (config_bytes(record, "analyzer-key"), config_bytes(record, "shuffler-key"),
            config_int(record, "time-granularity-days"))


# -- the batch --------------------------------------------------------------------------


@dataclass(frozen=True)
class UploadRecord:
    """One clip's upload (real) or a dummy that only keeps the batch at its fixed size."""

    payload: bytes
    day: int
    hour: int | None  # None: the footage does not say at what hour it was filmed
    clip_id: str
    real: bool


@dataclass(frozen=True)
class Batch:
    records: tuple[UploadRecord, ...]
    encoder_version: str
    bits: int  # charged for the real records (whole bits, rounded up)
    device_bits_before: int  # the device's total before this batch
    capped: bool

    @property
    def real(self) -> tuple[UploadRecord, ...]:
        return tuple(r for r in self.records if r.real)


def batch_size(clips: int, latent_dim: int, dtype: str) -> int:
    """Bytes of a batch of `clips` records: a function of the request alone."""
    return _HEADER.size + clips * (payload_size(latent_dim, dtype) + _RECORD_TAIL.size) + _CRC.size


def fixed_clip_id(clip_id: str) -> bytes:
    """The id as exactly CLIP_ID_BYTES bytes; a longer id is replaced by its hash."""
    raw = clip_id.encode("utf-8")
    if len(raw) > CLIP_ID_BYTES or b"\0" in raw:
        raw = ("h-" + hashlib.sha256(raw).hexdigest()[:CLIP_ID_BYTES - 2]).encode()
    return raw.ljust(CLIP_ID_BYTES, b"\0")


def _hour_byte(hour: int | None) -> int:
    """The hour's byte on the wire: 0..23, or UNKNOWN_HOUR."""
    if hour is None:
        return UNKNOWN_HOUR
    if not 0 <= hour <= 23:
        raise ValueError(f"a record's hour must be 0..23 or None (unknown), got {hour}")
    return hour


def encode_batch(batch: Batch) -> bytes:
    records = batch.records
    if not 1 <= len(records) <= MAX_CLIPS:
        raise ValueError(f"a batch holds 1..{MAX_CLIPS} records, got {len(records)}")
    sizes = {len(r.payload) for r in records}
    if len(sizes) != 1:
        raise ValueError("every payload of a batch must have the same size")
    real = sum(r.real for r in records)
    if any(r.real for r in records[real:]):
        raise ValueError("real records come first in a batch")
    head = _HEADER.pack(MAGIC, BATCH_VERSION, FLAG_CAPPED if batch.capped else 0, len(records),
                        real, sizes.pop(), batch.bits, batch.device_bits_before,
                        bytes.fromhex(batch.encoder_version))
    body = b"".join(r.payload + _RECORD_TAIL.pack(r.day, _hour_byte(r.hour), int(r.real), 0,
                                                  fixed_clip_id(r.clip_id)) for r in records)
    blob = head + body
    return blob + _CRC.pack(zlib.crc32(blob) & 0xFFFFFFFF)


def _checked_bytes(blob: object, what: str, minimum: int) -> bytes:
    """`blob` as bytes of at least `minimum` bytes; ValueError naming `what` otherwise."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise ValueError(f"{what} must be bytes, got {type(blob).__name__}")  # noqa: TRY004
    if len(blob) < minimum:
        raise ValueError(f"{what} too short: {len(blob)} bytes")
    return bytes(blob)


def decode_batch(blob: bytes) -> Batch:
    """Parse and check a batch; ValueError naming the defect (size, checksum, payloads)."""
    blob = _checked_bytes(blob, "batch", _HEADER.size + _CRC.size)
    magic, version, flags, count, real, size, bits, before, digest = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise ValueError(f"batch has bad magic {magic!r}, expected {MAGIC!r}")
    if version != BATCH_VERSION:
        raise ValueError(f"batch version {version} is not supported (this build reads "
                         f"{BATCH_VERSION})")
    if not 1 <= count <= MAX_CLIPS or real > count:
        raise ValueError(f"batch declares {count} records with {real} real ones")
    expected = _HEADER.size + count * (size + _RECORD_TAIL.size) + _CRC.size
    if len(blob) != expected:
        raise ValueError(f"batch length {len(blob)} does not match its header ({expected})")
    (crc,) = _CRC.unpack_from(blob, expected - _CRC.size)
    if zlib.crc32(blob[:expected - _CRC.size]) & 0xFFFFFFFF != crc:
        raise ValueError("batch checksum mismatch: the batch is corrupted")
    records = []
    offset = _HEADER.size
    for i in range(count):
        payload = blob[offset:offset + size]
        day, hour, is_real, _, raw_id = _RECORD_TAIL.unpack_from(blob, offset + size)
        offset += size + _RECORD_TAIL.size
        if bool(is_real) != (i < real) or is_real > 1:
            raise ValueError(f"batch record {i}: real flag {is_real} disagrees with the header")
        if is_real:
            decode_payload(payload)  # ValueError on any defect of a payload
            if not (0 <= hour <= 23 or hour == UNKNOWN_HOUR):
                raise ValueError(f"batch record {i}: hour {hour} is not 0..23 "
                                 f"(or {UNKNOWN_HOUR}: unknown)")
        records.append(UploadRecord(payload, day, None if hour == UNKNOWN_HOUR else hour,
                                    raw_id.rstrip(b"\0").decode("utf-8"), bool(is_real)))
    return Batch(tuple(records), digest.hex(), bits, before, bool(flags & FLAG_CAPPED))


# -- the sealed reply (unlinkable collection) -------------------------------------------


@dataclass(frozen=True)
class SealedBatch:
    """A device's unlinkable reply: its ledger charge in the clear, its records sealed."""

    outer: bytes  # privacy.shuffle.records.seal_batch: only the shuffler can open it
    records: int  # M
    clips: int  # R, real records inside (the ledger charge's clip count)
    encoder_version: str
    bits: int
    device_bits_before: int
    capped: bool


def encode_sealed(batch: SealedBatch) -> bytes:
    if not 1 <= batch.records <= MAX_CLIPS or not 0 <= batch.clips <= batch.records:
        raise ValueError(f"a sealed batch holds 1..{MAX_CLIPS} records with at most as many "
                         f"real ones, got {batch.records} and {batch.clips}")
    head = _SEALED_HEADER.pack(SEALED_MAGIC, SEALED_VERSION, FLAG_CAPPED if batch.capped else 0,
                               batch.records, batch.clips, 0, batch.bits,
                               batch.device_bits_before, bytes.fromhex(batch.encoder_version),
                               len(batch.outer))
    blob = head + batch.outer
    return blob + _CRC.pack(zlib.crc32(blob) & 0xFFFFFFFF)


def sealed_size(outer_bytes: int) -> int:
    """Bytes of a SEALED reply around an outer blob of `outer_bytes`."""
    return _SEALED_HEADER.size + outer_bytes + _CRC.size


def decode_sealed(blob: bytes) -> SealedBatch:
    """Parse and check a SEALED reply; ValueError naming the defect."""
    blob = _checked_bytes(blob, "sealed batch", _SEALED_HEADER.size + _CRC.size)
    (magic, version, flags, count, real, _, bits, before, digest,
     length) = _SEALED_HEADER.unpack_from(blob)
    if magic != SEALED_MAGIC:
        raise ValueError(f"reply has magic {magic!r}, expected a sealed batch "
                         f"({SEALED_MAGIC!r}): the device did not seal its records")
    if version != SEALED_VERSION:
        raise ValueError(f"sealed batch version {version} is not supported (this build reads "
                         f"{SEALED_VERSION})")
    if not 1 <= count <= MAX_CLIPS or real > count:
        raise ValueError(f"sealed batch declares {count} records with {real} real ones")
    if len(blob) != sealed_size(length):
        raise ValueError(f"sealed batch length {len(blob)} does not match its header "
                         f"({sealed_size(length)})")
    (crc,) = _CRC.unpack_from(blob, len(blob) - _CRC.size)
    if zlib.crc32(blob[:-_CRC.size]) & 0xFFFFFFFF != crc:
        raise ValueError("sealed batch checksum mismatch: the batch is corrupted")
    outer = blob[_SEALED_HEADER.size:_SEALED_HEADER.size + length]
    return SealedBatch(outer, count, real, digest.hex(), bits, before, bool(flags & FLAG_CAPPED))
