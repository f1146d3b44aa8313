"""Representation upload: what a device sends when the server asks for its representations.

Per clip only three things leave the device: one payload-v1 (`privacy.payload`: the
quantised z, fixed size), the capture time (synthetic day and hour) and the clip id.
Frames, mu and logvar never do.

**z is a sample of q(z|x)**, drawn with noise from the OS CSPRNG and then quantised. The KL
rate KL(q(z|x) || N(0, I)) bounds I(X; Z) for the *sampled* Z (and, by data processing,
for its quantisation); it bounds nothing for the deterministic mean mu(x). Every upload
draws fresh noise, so each Z_t depends on its clip X_t alone and the sum of the KL rates
over the uploads bounds I(X_1..X_T; Z_1..Z_T) (DESIGN.md, docs/representations.md).

**Side channels.** Whoever watches encrypted traffic sees the sizes and times of messages,
and activity can be inferred from those alone. So a batch reveals neither how many clips
the device really had nor what they showed:

* the server asks on a fixed schedule for a fixed count M of clips (`query.upload`);
* the reply is one blob in the BATCH format below whose length depends only on
  (M, latent_dim, dtype). A device with fewer than M clips to send (or whose information
  cap stops it) fills the batch with dummy records, flagged only inside the blob;
* the device runs the encoder on exactly M clips whatever it holds (dummies on a blank
  clip), so the work, and with it the reply's timing, does not count its real clips.

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
    56       M*(P+40) records: payload (P) | day (u32) | hour (u8) | real (u8) |
                      reserved (u16, 0) | clip id (32 bytes, UTF-8, NUL-padded; a
                      longer id is replaced by "h-" + 30 hex digits of its SHA-256)
    end      4        CRC-32 of every preceding byte (u32)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import ConfigRecord

from fl_client.info_ledger import InfoLedger
from fl_client.synthetic import Clip, FleetSpec, device_clips
from privacy.encoder import EncoderConfig, build_model, encode, load_numpy_state
from privacy.payload import decode_payload, encode_payload, payload_size
from privacy.vib import kl_bits

MAGIC = b"MSRB"
BATCH_VERSION = 1
FLAG_CAPPED = 0x01
CLIP_ID_BYTES = 32
MAX_CLIPS = 1024  # per batch: keeps one reply well under Flower's message limits
_HEADER = struct.Struct("<4sBBHHHIQ32s")
_RECORD_TAIL = struct.Struct(f"<IBBH{CLIP_ID_BYTES}s")
_CRC = struct.Struct("<I")


class UploadRefused(RuntimeError):
    """The device will not answer this upload request (the reason names what is wrong)."""


# -- the encoder version -----------------------------------------------------------------


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

    def to_record(self) -> ConfigRecord:
        return ConfigRecord({"run-id": self.run_id, "server-round": self.server_round,
                             "collection": self.collection, "clips": self.clips,
                             "dtype": self.dtype, "encoder-version": self.encoder_version,
                             "info-bits-cap": float(self.info_bits_cap),
                             "server-bits": int(self.server_bits),
                             "bundles-dir": self.bundles_dir})

    @classmethod
    def from_record(cls, record: ConfigRecord) -> UploadRequest:
        """Rebuild and validate; a missing or bad key raises ValueError naming it."""
        try:
            return cls(run_id=str(record["run-id"]), server_round=int(record["server-round"]),
                       collection=int(record["collection"]), clips=int(record["clips"]),
                       dtype=str(record["dtype"]),
                       encoder_version=str(record["encoder-version"]),
                       info_bits_cap=float(record["info-bits-cap"]),
                       server_bits=int(record["server-bits"]),
                       bundles_dir=str(record.get("bundles-dir", "")))
        except KeyError as exc:
            raise ValueError(f"malformed upload request: missing {exc.args[0]}") from None


# -- the batch --------------------------------------------------------------------------


@dataclass(frozen=True)
class UploadRecord:
    """One clip's upload (real) or a dummy that only keeps the batch at its fixed size."""

    payload: bytes
    day: int
    hour: int
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
    body = b"".join(r.payload + _RECORD_TAIL.pack(r.day, r.hour, int(r.real), 0,
                                                  fixed_clip_id(r.clip_id)) for r in records)
    blob = head + body
    return blob + _CRC.pack(zlib.crc32(blob) & 0xFFFFFFFF)


def decode_batch(blob: bytes) -> Batch:
    """Parse and check a batch; ValueError naming the defect (size, checksum, payloads)."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise ValueError(f"batch must be bytes, got {type(blob).__name__}")  # noqa: TRY004
    blob = bytes(blob)
    if len(blob) < _HEADER.size + _CRC.size:
        raise ValueError(f"batch too short: {len(blob)} bytes")
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
            if not 0 <= hour <= 23:
                raise ValueError(f"batch record {i}: hour {hour} is not 0..23")
        records.append(UploadRecord(payload, day, hour, raw_id.rstrip(b"\0").decode("utf-8"),
                                    bool(is_real)))
    return Batch(tuple(records), digest.hex(), bits, before, bool(flags & FLAG_CAPPED))


# -- the device's side ------------------------------------------------------------------


@dataclass(frozen=True)
class Capture:
    """Clips a device holds for one collection (frames never leave the device)."""

    frames: np.ndarray  # uint8 [R, T, H, W, 3], R <= M
    days: Sequence[int]
    hours: Sequence[int]
    clip_ids: Sequence[str]

    @classmethod
    def of(cls, clips: Sequence[Clip], frames: int, image_size: int) -> Capture:
        if not clips:
            return cls(np.zeros((0, frames, image_size, image_size, 3), np.uint8), (), (), ())
        return cls(np.stack([c.frames for c in clips]), [c.meta.day for c in clips],
                   [c.meta.hour for c in clips], [c.meta.clip_id for c in clips])


def stream_slots(spec: FleetSpec, collection: int, clips: int) -> list[tuple[int, int]]:
    """(day, clip index) of a synthetic device's clips for a collection.

    The capture stream starts on the first day after the fleet spec's days (days the
    device trained on and days the server holds out as the attacker's own data come
    before it) and runs on: collection c gets stream positions (c-1)*M .. c*M-1. Which
    clips a collection covers is fixed by (c, M): nothing about the content chooses them.
    """
    first = (collection - 1) * clips
    return [(spec.days + p // spec.clips_per_day, p % spec.clips_per_day)
            for p in range(first, first + clips)]


def synthetic_capture(spec: FleetSpec, device: int, collection: int, clips: int) -> Capture:
    """A simulated device's clips for `collection` (always M of them: it keeps filming)."""
    slots = stream_slots(spec, collection, clips)
    wanted = sorted({day for day, _ in slots})
    longer = dataclasses.replace(spec, days=wanted[-1] + 1)
    rendered = device_clips(longer, device, wanted)  # day-major, clips_per_day per day
    by_slot = {(c.meta.day, k % spec.clips_per_day): c for k, c in enumerate(rendered)}
    return Capture.of([by_slot[s] for s in slots], spec.frames, spec.image_size)


@dataclass(frozen=True)
class Privatized:
    """Quantised samples of the real clips, the dummy payload, and each real clip's KL rate."""

    payloads: list[bytes]  # [R]
    dummy: bytes
    bits: np.ndarray  # float64 [R]


def privatize(model_cfg: EncoderConfig, arrays: Mapping[str, np.ndarray], capture: Capture,
              clips: int, dtype: str, rng: np.random.Generator) -> Privatized:
    """Encode exactly `clips` clips (the real ones, then blank placeholders), sample z.

    Everything is computed for all M slots, dummies included, so the work does not depend
    on how many clips were real.
    """
    real = len(capture.clip_ids)
    if real > clips:
        raise ValueError(f"capture holds {real} clips, the batch only {clips}")
    model = build_model(model_cfg)
    load_numpy_state(model, dict(arrays))
    blank = np.zeros((clips - real, *capture.frames.shape[1:]), np.uint8)
    mu, logvar = encode(model, np.concatenate([capture.frames, blank]))
    z = mu + np.exp(0.5 * logvar) * rng.standard_normal(mu.shape, dtype=np.float32)
    payloads = [encode_payload(row, dtype) for row in z]
    dummy = encode_payload(np.zeros(model_cfg.latent_dim, np.float32), dtype)
    return Privatized(payloads[:real], dummy, kl_bits(mu[:real], logvar[:real]))


def assemble(privatized: Privatized, capture: Capture, clips: int, sent: int, charge: int,
             before: int, version: str) -> Batch:
    """The batch: the first `sent` real clips, then dummies up to `clips` records."""
    records = [UploadRecord(privatized.payloads[i], int(capture.days[i]),
                            int(capture.hours[i]), str(capture.clip_ids[i]), True)
               for i in range(sent)]
    records += [UploadRecord(privatized.dummy, 0, 0, "", False)] * (clips - sent)
    return Batch(tuple(records), version, charge, before, sent < len(capture.clip_ids))


def answer_upload(request: UploadRequest, model_cfg: EncoderConfig,
                  arrays: Mapping[str, np.ndarray], capture: Capture, ledger: InfoLedger,
                  own_cap: float | None, rng: np.random.Generator) -> bytes:
    """The device's whole answer: check the model, privatize, charge the ledger, encode.

    The ledger is charged (on disk) before the batch exists, so a crash after it can only
    over-count. The device counts from the larger of its own total and the server's (a
    lost or restored-from-old-backup file cannot lower the spend below what was recorded
    upstream), and its cap is the smaller of its own and the registry's.
    """
    version = encoder_version(model_cfg, arrays)
    if version != request.encoder_version:
        raise UploadRefused(f"the arrays sent are encoder {version[:12]}, the request names "
                            f"{request.encoder_version[:12]}: refusing to upload")
    privatized = privatize(model_cfg, arrays, capture, request.clips, request.dtype, rng)
    caps = [c for c in (own_cap, request.info_bits_cap or None) if c is not None]
    spend = ledger.spend(request.run_id, request.collection, privatized.bits,
                         min(caps) if caps else None, floor=request.server_bits)
    batch = assemble(privatized, capture, request.clips, spend.clips, spend.bits,
                     spend.before, version)
    return encode_batch(batch)
