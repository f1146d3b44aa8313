"""The prime field Shamir sharing works in: GF(2^521 - 1).

A Mersenne prime comfortably larger than the 256-bit secrets shared (X25519 private keys
and 32-byte self-mask seeds), so a secret is a field element with no reduction. Python
ints do the arithmetic; constant time is not a goal (the shares are the secrets, and they
only travel encrypted).
"""

from __future__ import annotations

import os

PRIME = (1 << 521) - 1
ELEMENT_BYTES = 66  # ceil(521 / 8)


def random_element() -> int:
    """A uniform element of the field from the OS CSPRNG (rejection sampling, no bias)."""
    while True:
        value = int.from_bytes(os.urandom(ELEMENT_BYTES), "big") & ((1 << 521) - 1)
        if value < PRIME:
            return value


def inverse(value: int) -> int:
    """Multiplicative inverse (Fermat); 0 has none."""
    if value % PRIME == 0:
        raise ZeroDivisionError("0 has no inverse in the field")
    return pow(value, PRIME - 2, PRIME)


def to_bytes(value: int) -> bytes:
    return (value % PRIME).to_bytes(ELEMENT_BYTES, "big")


def from_bytes(data: bytes) -> int:
    if len(data) != ELEMENT_BYTES:
        raise ValueError(f"a field element is {ELEMENT_BYTES} bytes, got {len(data)}")
    value = int.from_bytes(data, "big")
    if value >= PRIME:
        raise ValueError("not a field element (>= p)")
    return value
