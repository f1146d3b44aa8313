"""Upload payload: one clip's representation z as a fixed-size byte string.

Format version 1 (all integers little-endian)::

    offset  size  field
    0       4     magic  b"MSRZ"
    4       1     version (u8) = 1
    5       1     dtype code (u8): 1 = int8, 2 = float16, 3 = float32
    6       2     latent_dim D (u16, 1..65535)
    8       D*w   the D values (w = 1, 2 or 4 bytes)
    8+D*w   4     CRC-32 (zlib.crc32) of every preceding byte (u32)

The size depends only on ``(latent_dim, dtype)``: ``12 + D * w`` bytes. Nothing in the
payload depends on the content beyond the values themselves (no per-clip scale, no
compression), so its length says nothing about the clip.

``int8`` uses a fixed, content-independent scale: z is clipped to ``[-Z_CLIP, Z_CLIP]``
(``Z_CLIP = 4.0``, i.e. 4 standard deviations of the N(0, I) prior the KL term pulls z
towards) and mapped to the integers ``-127..127``; the decoded value is within
``Z_CLIP / 254`` (half a step, ~0.0157) of the clipped value. ``float16`` saturates at
its largest finite value (65504); ``float32`` is exact. Non-finite z is refused.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from privacy.checks import is_int

PAYLOAD_VERSION = 1
MAGIC = b"MSRZ"
Z_CLIP = 4.0
INT8_LEVELS = 127
INT8_STEP = Z_CLIP / INT8_LEVELS
INT8_MAX_ERROR = INT8_STEP / 2  # for |z| <= Z_CLIP
_F16_MAX = float(np.finfo(np.float16).max)

_HEADER = struct.Struct("<4sBBH")
_CRC = struct.Struct("<I")
_DTYPES: dict[str, tuple[int, np.dtype]] = {
    "int8": (1, np.dtype("<i1")),
    "float16": (2, np.dtype("<f2")),
    "float32": (3, np.dtype("<f4")),
}
_CODES = {code: (name, dt) for name, (code, dt) in _DTYPES.items()}
MAX_LATENT_DIM = 0xFFFF


def _dtype_entry(dtype: str) -> tuple[int, np.dtype]:
    try:
        return _DTYPES[dtype]
    except (KeyError, TypeError):
        raise ValueError(
            f"payload dtype must be one of {sorted(_DTYPES)}, got {dtype!r}"
        ) from None


def payload_size(latent_dim: int, dtype: str) -> int:
    """Bytes of one clip's payload for ``(latent_dim, dtype)``."""
    _, dt = _dtype_entry(dtype)
    if not is_int(latent_dim):
        raise ValueError(f"latent_dim must be an int, got {latent_dim!r}")
    if not 1 <= int(latent_dim) <= MAX_LATENT_DIM:
        raise ValueError(f"latent_dim must be in 1..{MAX_LATENT_DIM}, got {latent_dim}")
    return _HEADER.size + int(latent_dim) * dt.itemsize + _CRC.size


def encode_payload(z: np.ndarray, dtype: str = "int8") -> bytes:
    """Serialise one clip's ``z`` (shape ``[D]``) into a fixed-size payload."""
    code, dt = _dtype_entry(dtype)
    arr = np.asarray(z)
    if arr.ndim != 1:
        raise ValueError(f"z must be one clip's vector of shape [latent_dim], got shape {arr.shape}")
    if not 1 <= arr.shape[0] <= MAX_LATENT_DIM:
        raise ValueError(f"z must have 1..{MAX_LATENT_DIM} values, got {arr.shape[0]}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"z must be real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError("z contains NaN or infinite values; refusing to encode")
    if dtype == "int8":
        q = np.rint(np.clip(arr, -Z_CLIP, Z_CLIP) / INT8_STEP)
        body = np.clip(q, -INT8_LEVELS, INT8_LEVELS).astype(dt).tobytes()
    elif dtype == "float16":
        body = np.clip(arr, -_F16_MAX, _F16_MAX).astype(dt).tobytes()
    else:
        body = np.clip(arr, -np.finfo(np.float32).max, np.finfo(np.float32).max).astype(dt).tobytes()
    head = _HEADER.pack(MAGIC, PAYLOAD_VERSION, code, arr.shape[0]) + body
    return head + _CRC.pack(zlib.crc32(head) & 0xFFFFFFFF)


def decode_payload(blob: bytes) -> np.ndarray:
    """Parse a payload back into ``z`` (float32, shape ``[D]``); ValueError on any defect."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise ValueError(f"payload must be bytes, got {type(blob).__name__}")  # noqa: TRY004
    blob = bytes(blob)
    if len(blob) < _HEADER.size + _CRC.size:
        raise ValueError(
            f"payload too short: {len(blob)} bytes, a header and checksum alone take "
            f"{_HEADER.size + _CRC.size}"
        )
    magic, version, code, dim = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise ValueError(f"payload has bad magic {magic!r}, expected {MAGIC!r} (not an MSR payload)")
    if version != PAYLOAD_VERSION:
        raise ValueError(
            f"payload version {version} is not supported (this build reads version {PAYLOAD_VERSION})"
        )
    if code not in _CODES:
        raise ValueError(f"payload has unknown dtype code {code} (known: {sorted(_CODES)})")
    name, dt = _CODES[code]
    if dim == 0:
        raise ValueError("payload declares latent_dim 0")
    expected = payload_size(dim, name)
    if len(blob) != expected:
        raise ValueError(
            f"payload length {len(blob)} does not match latent_dim={dim}, dtype={name}: "
            f"expected {expected} bytes"
        )
    (crc,) = _CRC.unpack_from(blob, expected - _CRC.size)
    if zlib.crc32(blob[: expected - _CRC.size]) & 0xFFFFFFFF != crc:
        raise ValueError("payload checksum mismatch: the payload is corrupted")
    values = np.frombuffer(blob, dtype=dt, count=dim, offset=_HEADER.size)
    if name == "int8":
        if np.any(values < -INT8_LEVELS):
            raise ValueError("payload holds int8 value -128, which no encoder produces")
        return (values.astype(np.float32) * np.float32(INT8_STEP)).astype(np.float32)
    out = values.astype(np.float32)
    if not np.all(np.isfinite(out)):
        raise ValueError("payload holds non-finite values")
    return out
