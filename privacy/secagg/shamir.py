"""Shamir t-of-n secret sharing of 32-byte secrets over GF(2^521 - 1).

A secret is the constant term of a random degree t-1 polynomial; the share for a holder is
the polynomial at x = holder id + 1 (ids are non-negative, so x is never 0 and never
repeats). Any t shares interpolate the secret; t-1 shares are consistent with every
secret (perfect secrecy), which is what stops the server from unmasking one update with
fewer than t devices' help.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from privacy.secagg.errors import ShamirError
from privacy.secagg.field import PRIME, inverse, random_element

SECRET_BYTES = 32


@dataclass(frozen=True)
class Share:
    x: int
    y: int


def x_for(holder_id: int) -> int:
    """The evaluation point of a holder: id + 1 (0 would be the secret itself)."""
    if holder_id < 0 or holder_id + 1 >= PRIME:
        raise ShamirError(f"holder id {holder_id} is not a valid share index")
    return holder_id + 1


def split(secret: bytes, threshold: int, holders: Sequence[int]) -> dict[int, Share]:
    """Shares of `secret` for each holder id; any `threshold` of them recover it."""
    if len(secret) != SECRET_BYTES:
        raise ShamirError(f"secrets are {SECRET_BYTES} bytes, got {len(secret)}")
    if len(set(holders)) != len(holders):
        raise ShamirError("holder ids must be distinct")
    if not 1 <= threshold <= len(holders):
        raise ShamirError(f"threshold {threshold} must be in 1..{len(holders)} (holders)")
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [random_element() for _ in range(threshold - 1)]
    return {h: Share(x_for(h), _evaluate(coefficients, x_for(h))) for h in holders}


def combine(shares: Iterable[Share], threshold: int) -> bytes:
    """The secret from (at least) `threshold` shares, by Lagrange interpolation at 0.

    Exactly the first `threshold` shares are used; a result that does not fit in 32 bytes
    means the shares were inconsistent (with overwhelming probability), and is refused.
    """
    chosen = list(shares)[:threshold]
    if len(chosen) < threshold:
        raise ShamirError(f"need {threshold} shares, got {len(chosen)}")
    xs = [s.x for s in chosen]
    if len(set(xs)) != len(xs) or any(x % PRIME == 0 for x in xs):
        raise ShamirError("shares must have distinct non-zero x")
    value = _interpolate_at_zero(chosen)
    if value >= 1 << (8 * SECRET_BYTES):
        raise ShamirError("shares are inconsistent (interpolated value is not a secret)")
    return value.to_bytes(SECRET_BYTES, "big")


def interpolate_at_zero(shares: Sequence[Share]) -> int:
    """The raw field value at 0 of the polynomial through `shares` (for tests and checks)."""
    return _interpolate_at_zero(list(shares))


def _evaluate(coefficients: Sequence[int], x: int) -> int:
    result = 0
    for c in reversed(coefficients):
        result = (result * x + c) % PRIME
    return result


def _interpolate_at_zero(shares: Sequence[Share]) -> int:
    """Lagrange at 0, accumulated as one fraction so only a single inversion is needed."""
    num_total, den_total = 0, 1
    for i, si in enumerate(shares):
        num, den = si.y, 1
        for j, sj in enumerate(shares):
            if i != j:
                num = num * (-sj.x) % PRIME
                den = den * (si.x - sj.x) % PRIME
        num_total = (num_total * den + num * den_total) % PRIME
        den_total = den_total * den % PRIME
    return num_total * inverse(den_total) % PRIME
