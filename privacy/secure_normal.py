"""Standard normal noise from the operating system's cryptographic random source.

The on-device privatizer releases ``z = mu + exp(logvar / 2) * eps``; whoever can predict
``eps`` can subtract it and recover ``mu``, the deterministic function of the clip. So
``eps`` must be unpredictable to the server and to anyone who saw earlier releases:

* NumPy's generators (PCG64, Mersenne Twister) and ONNX's ``RandomNormal`` are *not*
  cryptographic: a few outputs, or a guessed seed, determine every later draw. A
  ``Generator`` seeded per call with 256 bits from ``os.urandom`` would not be predictable
  from seeds, but one call's outputs still expose its PCG64 state (128 bits, recoverable
  from outputs), so draws within one call are linked; we avoid that argument altogether.
* Here every uniform comes straight from ``os.urandom`` (the kernel CSPRNG: getrandom(2)
  on Linux), 64 random bits each, of which the top 53 make a double in ``(0, 1]``
  (``(k + 1) / 2**53``, never 0 so the logarithm is finite), and pairs of uniforms become
  pairs of independent N(0, 1) values by the Box–Muller transform
  ``sqrt(-2 ln u1) * (cos 2 pi u2, sin 2 pi u2)`` (exact for continuous uniforms).

Resolution: with 53-bit uniforms the largest ``|eps|`` is ``sqrt(-2 ln 2**-53)`` ~ 8.57,
a tail of probability ~1e-17 that is cut; ``int8`` payloads clip ``z`` at 4 anyway. The
values are computed in float64 and returned as float32.
"""

from __future__ import annotations

import math
import os

import numpy as np

from privacy.checks import is_int

__all__ = ["secure_standard_normal"]

_MANTISSA_BITS = 53


def _uniform_open0(count: int) -> np.ndarray:
    """``count`` float64 uniforms in ``(0, 1]`` from ``os.urandom``, 53 bits each."""
    words = np.frombuffer(os.urandom(8 * count), dtype="<u8")
    return ((words >> np.uint64(64 - _MANTISSA_BITS)).astype(np.float64) + 1.0) \
        * (2.0 ** -_MANTISSA_BITS)


def secure_standard_normal(shape: tuple[int, ...]) -> np.ndarray:
    """float32 array of independent N(0, 1) values, every bit from the OS CSPRNG."""
    if not all(is_int(n) and n >= 0 for n in shape):
        raise ValueError(f"shape must be non-negative ints, got {shape!r}")
    count = math.prod(shape)
    pairs = (count + 1) // 2
    u1, u2 = _uniform_open0(pairs), _uniform_open0(pairs)
    radius = np.sqrt(-2.0 * np.log(u1))
    angle = 2.0 * math.pi * u2
    values = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:count]
    return values.astype(np.float32).reshape(shape)
