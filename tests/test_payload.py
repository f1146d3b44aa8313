"""Upload payload format (privacy/payload.py)."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from privacy.payload import (
    INT8_MAX_ERROR,
    MAGIC,
    PAYLOAD_VERSION,
    Z_CLIP,
    decode_payload,
    encode_payload,
    payload_size,
)

DTYPES = ("int8", "float16", "float32")


def _reseal(body: bytes) -> bytes:
    """Recompute the CRC so that only the field under test is wrong."""
    return body + struct.pack("<I", zlib.crc32(body) & 0xFFFFFFFF)


def test_sizes():
    assert PAYLOAD_VERSION == 1
    assert payload_size(32, "int8") == 8 + 32 + 4
    assert payload_size(32, "float16") == 8 + 64 + 4
    assert payload_size(32, "float32") == 8 + 128 + 4
    with pytest.raises(ValueError, match="dtype"):
        payload_size(32, "int4")
    with pytest.raises(ValueError, match="latent_dim"):
        payload_size(0, "int8")


def test_int8_round_trip_within_quantisation_bound():
    rng = np.random.default_rng(0)
    z = rng.normal(scale=1.5, size=(200, 32))
    z = np.clip(z, -Z_CLIP, Z_CLIP)
    for row in z:
        back = decode_payload(encode_payload(row, "int8"))
        assert back.dtype == np.float32 and back.shape == (32,)
        assert np.max(np.abs(back - row)) <= INT8_MAX_ERROR + 1e-6
    assert INT8_MAX_ERROR == pytest.approx(Z_CLIP / 254)


def test_int8_clips_to_the_fixed_range():
    z = np.array([-1e6, -Z_CLIP - 0.5, 0.0, Z_CLIP + 3.0, 1e30])
    back = decode_payload(encode_payload(z, "int8"))
    assert np.allclose(back, [-Z_CLIP, -Z_CLIP, 0.0, Z_CLIP, Z_CLIP], atol=1e-6)


def test_float_round_trips():
    rng = np.random.default_rng(1)
    z = rng.normal(size=16).astype(np.float32)
    assert np.array_equal(decode_payload(encode_payload(z, "float32")), z)
    back16 = decode_payload(encode_payload(z, "float16"))
    assert np.allclose(back16, z, rtol=1e-3, atol=1e-4)
    assert np.all(np.isfinite(decode_payload(encode_payload(np.full(4, 1e9), "float16"))))


@pytest.mark.parametrize("dtype", DTYPES)
def test_fixed_size_whatever_the_content(dtype):
    d = 24
    contents = [
        np.zeros(d), np.full(d, 0.3), np.full(d, -7.0), np.full(d, 1e30), np.full(d, -1e30),
        np.full(d, 1e-40), np.linspace(-1e4, 1e4, d), np.random.default_rng(2).normal(size=d),
        np.full(d, np.finfo(np.float64).max), np.arange(d, dtype=np.int64),
    ]
    sizes = {len(encode_payload(z, dtype)) for z in contents}
    assert sizes == {payload_size(d, dtype)}
    for z in contents:
        assert np.all(np.isfinite(decode_payload(encode_payload(z, dtype))))


def test_encode_rejects_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        encode_payload(np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="NaN or infinite"):
        encode_payload(np.array([np.inf, 0.0]), "float32")
    with pytest.raises(ValueError, match="shape"):
        encode_payload(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="dtype"):
        encode_payload(np.zeros(3), "bfloat16")


def test_bad_blobs_are_rejected_with_clear_errors():
    good = encode_payload(np.linspace(-1, 1, 8), "int8")
    assert decode_payload(good).shape == (8,)
    body = good[:-4]
    with pytest.raises(ValueError, match="magic"):
        decode_payload(_reseal(b"JPEG" + body[4:]))
    with pytest.raises(ValueError, match="version 2"):
        decode_payload(_reseal(body[:4] + bytes([2]) + body[5:]))
    with pytest.raises(ValueError, match="dtype code 9"):
        decode_payload(_reseal(body[:5] + bytes([9]) + body[6:]))
    with pytest.raises(ValueError, match="length"):
        decode_payload(good[:-1])
    with pytest.raises(ValueError, match="length"):
        decode_payload(good + b"\x00")
    with pytest.raises(ValueError, match="length"):  # header claims more values than sent
        decode_payload(_reseal(body[:6] + struct.pack("<H", 9) + body[8:]))
    with pytest.raises(ValueError, match="too short"):
        decode_payload(MAGIC)
    with pytest.raises(ValueError, match="checksum"):
        flipped = bytearray(good)
        flipped[10] ^= 0x01
        decode_payload(bytes(flipped))
    with pytest.raises(ValueError, match="-128"):
        decode_payload(_reseal(body[:8] + b"\x80" + body[9:]))
    with pytest.raises(ValueError, match="bytes"):
        decode_payload("MSRZ")  # type: ignore[arg-type]
    nan16 = encode_payload(np.zeros(2), "float16")[:-4]
    with pytest.raises(ValueError, match="non-finite"):
        decode_payload(_reseal(nan16[:8] + np.array([np.nan, 0], "<f2").tobytes()))
