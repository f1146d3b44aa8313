"""A file of payloads: what ``fedmsr privatize`` writes, the only thing that leaves a device.

Container format version 1 (integers little-endian)::

    offset   size   field
    0        4      magic b"MSRP"
    4        1      container version (u8) = 1
    5        1      reserved (u8) = 0
    6        2      P: bytes of one payload (u16), ``privacy.payload.payload_size(D, dtype)``
    8        4      N: payloads in the file (u32)
    12       32     encoder version (SHA-256 digest of the model that produced them,
                    ``privacy.wire.upload.encoder_version``)
    44       N*P    N payload version 1 records (``privacy.payload``), in clip order
    44+N*P   4      CRC-32 (``zlib.crc32``) of every preceding byte (u32)

Nothing else is in the file: no clip ids, file names, capture times or frame counts. Its
size is ``48 + N * P``, so it says how many clips were privatized and nothing about them.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from privacy.payload import decode_payload

__all__ = ["PayloadFile", "decode_payload_file", "encode_payload_file"]

MAGIC = b"MSRP"
CONTAINER_VERSION = 1
_HEADER = struct.Struct("<4sBBHI32s")
_CRC = struct.Struct("<I")


@dataclass(frozen=True)
class PayloadFile:
    """The parsed container: the encoder version (hex) and the payload records."""

    encoder_version: str
    payloads: tuple[bytes, ...]


def encode_payload_file(payloads: Sequence[bytes], encoder_version: str) -> bytes:
    """The container holding ``payloads`` (all of one size) from model ``encoder_version``."""
    try:
        digest = bytes.fromhex(encoder_version)
    except (ValueError, TypeError):
        digest = b""
    if len(digest) != 32:
        raise ValueError(f"encoder_version must be 64 hex digits, got {encoder_version!r}")
    sizes = {len(p) for p in payloads}
    if len(sizes) > 1:
        raise ValueError(f"payloads must all have one size, got sizes {sorted(sizes)}")
    size = sizes.pop() if sizes else 0
    if size > 0xFFFF or len(payloads) > 0xFFFFFFFF:
        raise ValueError(f"{len(payloads)} payloads of {size} bytes do not fit the container")
    body = _HEADER.pack(MAGIC, CONTAINER_VERSION, 0, size, len(payloads), digest) \
        + b"".join(payloads)
    return body + _CRC.pack(zlib.crc32(body) & 0xFFFFFFFF)


def decode_payload_file(blob: bytes) -> PayloadFile:
    """Parse a container and check every record (``ValueError`` naming the defect)."""
    blob = bytes(blob)
    if len(blob) < _HEADER.size + _CRC.size:
        raise ValueError(f"payload file too short: {len(blob)} bytes")
    magic, version, _, size, count, digest = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise ValueError(f"payload file has bad magic {magic!r}, expected {MAGIC!r}")
    if version != CONTAINER_VERSION:
        raise ValueError(f"payload file version {version} is not supported "
                         f"(this build reads version {CONTAINER_VERSION})")
    expected = _HEADER.size + count * size + _CRC.size
    if len(blob) != expected:
        raise ValueError(f"payload file length {len(blob)} does not match {count} payloads "
                         f"of {size} bytes: expected {expected}")
    (crc,) = _CRC.unpack_from(blob, expected - _CRC.size)
    if zlib.crc32(blob[: expected - _CRC.size]) & 0xFFFFFFFF != crc:
        raise ValueError("payload file checksum mismatch: the file is corrupted")
    records = tuple(blob[_HEADER.size + i * size: _HEADER.size + (i + 1) * size]
                    for i in range(count))
    for i, record in enumerate(records):
        try:
            decode_payload(record)
        except ValueError as exc:
            raise ValueError(f"payload {i}: {exc}") from None
    return PayloadFile(digest.hex(), records)
