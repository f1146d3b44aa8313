"""Fixed-point encoding of weighted updates into Z_{2^k}, with overflow ruled out.

Range and modulus. Each coordinate is clipped to [-clip, clip] (the device clips its
update before masking; DP clipping happens earlier still), mapped to an integer level
v = round(x * scale) in [-L, L] and shifted to u = v + L in [0, 2L]. The device uploads
w * u for its integer weight w in [1, max_weight] (FedAvg: its number of examples, capped)
and, as one extra coordinate, w itself, so the server learns only the weighted sum and
the total weight, never one device's weight.

No overflow, by construction. The sum over at most `max_devices` inputs is at most
max_devices * max_weight * 2L; L is chosen as the largest integer with
max_devices * max_weight * 2L <= 2^k - 1, so the modular sum equals the integer sum. A
configuration with no such L >= 1 is refused (EncodingError) rather than silently wrapped.

L is also capped at 2^52 so every level is exact in float64.

Norm bound. With `norm` > 0 the device first clips its update to that L2 norm (then to
the coordinate range, which only shrinks it), so the weighted mean of honest inputs has
norm <= `norm` (a weighted mean of vectors in a ball stays in the ball), and the decoded
mean at most `norm + sqrt(d) * quantisation_bound`: `check_mean` holds the server to
that and a hostile device whose input breaks it fails the round instead of moving the
model. Within the bound nothing distinguishes a poisoned input from an honest one.

Quantisation bound. The decoded weighted mean differs from the weighted mean of the
clipped inputs by at most 1 / (2 * scale) = clip / (2L) per coordinate (each level is off
by at most half a step; a weighted average of errors cannot exceed their maximum).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from privacy.secagg.errors import EncodingError

MIN_BITS, MAX_BITS = 8, 64
MAX_LEVELS = 1 << 52


def dtype_for(bits: int) -> np.dtype:
    """The unsigned dtype whose natural wrap-around is a multiple of 2^bits."""
    return np.dtype(np.uint32) if bits <= 32 else np.dtype(np.uint64)


def reduce(values: np.ndarray, bits: int) -> np.ndarray:
    """Reduce wrap-around arithmetic in the dtype to Z_{2^bits}."""
    if bits in (32, 64):
        return values
    return values & values.dtype.type((1 << bits) - 1)


@dataclass(frozen=True)
class EncodingSpec:
    """clip: coordinate range [-clip, clip]; mod_bits: modulus 2^mod_bits;
    max_weight: largest integer weight a device may use; max_devices: most inputs summed."""

    clip: float = 1.0
    mod_bits: int = 32
    max_weight: int = 1
    max_devices: int = 100
    #: L2 bound every update is clipped to before encoding (0: none); see `check_mean`.
    norm: float = 0.0

    def __post_init__(self) -> None:
        if not (np.isfinite(self.clip) and self.clip > 0):
            raise EncodingError(f"clip must be a positive finite number, got {self.clip}")
        if not (np.isfinite(self.norm) and self.norm >= 0):
            raise EncodingError(f"norm must be a finite number >= 0, got {self.norm}")
        if not MIN_BITS <= self.mod_bits <= MAX_BITS:
            raise EncodingError(f"mod_bits must be in {MIN_BITS}..{MAX_BITS}, got {self.mod_bits}")
        if self.max_weight < 1 or self.max_devices < 1:
            raise EncodingError("max_weight and max_devices must be >= 1")
        if self.levels < 1:
            raise EncodingError(
                f"mod_bits={self.mod_bits} cannot hold the sum of {self.max_devices} inputs of "
                f"weight <= {self.max_weight}: raise mod_bits or lower max_weight/max_devices")
        assert self.max_sum <= self.modulus - 1, "overflow bound violated"  # proof, checked

    @property
    def modulus(self) -> int:
        return 1 << self.mod_bits

    @property
    def levels(self) -> int:
        """L: the largest level count whose worst-case sum still fits below 2^k, capped at
        2^52 so that every level (up to 2L = 2^53) is exact in float64 while encoding."""
        return min((self.modulus - 1) // (2 * self.max_devices * self.max_weight), MAX_LEVELS)

    @property
    def scale(self) -> float:
        return self.levels / self.clip

    @property
    def max_sum(self) -> int:
        """The largest value any coordinate of a sum (including the weight) can take."""
        return max(self.max_devices * self.max_weight * 2 * self.levels,
                   self.max_devices * self.max_weight)

    @property
    def quantisation_bound(self) -> float:
        """Per-coordinate bound on |decoded mean - mean of clipped inputs|."""
        return 0.5 / self.scale

    @property
    def dtype(self) -> np.dtype:
        return dtype_for(self.mod_bits)

    @staticmethod
    def encoded_length(update_length: int) -> int:
        """Elements a device masks for an update of `update_length`: the values, then w."""
        return update_length + 1

    def check_devices(self, n: int) -> None:
        if n > self.max_devices:
            raise EncodingError(f"{n} devices exceed the encoding's max_devices={self.max_devices};"
                                " the sum could overflow: raise max_devices (and mod_bits)")

    def encode(self, update: np.ndarray, weight: int) -> np.ndarray:
        """The element of Z_{2^k}^(d+1) a device masks: w * (level + L) and then w."""
        if int(weight) != weight or not 1 <= weight <= self.max_weight:
            raise EncodingError(f"weight must be an integer in 1..{self.max_weight}, got {weight}")
        x = np.asarray(update, dtype=np.float64).ravel()
        if not np.all(np.isfinite(x)):
            raise EncodingError("update has non-finite values")
        if self.norm > 0:
            length = float(np.linalg.norm(x))
            if length > self.norm:
                x = x * (self.norm / length)
        levels = np.rint(np.clip(x, -self.clip, self.clip) * self.scale)
        shifted = np.clip(levels + self.levels, 0, 2 * self.levels).astype(np.uint64)
        out = np.empty(self.encoded_length(x.size), dtype=self.dtype)
        out[:-1] = shifted * np.uint64(weight)
        out[-1] = weight
        return out

    def decode(self, total: np.ndarray, inputs: int) -> tuple[np.ndarray, int]:
        """(weighted mean, total weight) from the unmasked modular sum of `inputs` inputs.

        sum(w * v) = S - L * W is computed in the modular integers and read as a signed
        value (|sum(w * v)| <= W * L < 2^(k-1) by the overflow bound), so no precision is
        lost before the final division even at k = 64.
        """
        self.check_devices(inputs)
        weight = int(total[-1])
        if not inputs <= weight <= inputs * self.max_weight:
            raise EncodingError(f"total weight {weight} impossible for {inputs} inputs: "
                                "the sum was not unmasked correctly")
        offset = self.dtype.type((self.levels * weight) % self.modulus)
        centred = reduce(total[:-1].astype(self.dtype) - offset, self.mod_bits)
        # Two's complement at k bits, sign-extended to 64: move the k bits to the top of a
        # uint64, read it as int64 and shift back arithmetically (exact for every k <= 64).
        shift = 64 - self.mod_bits
        top = centred.astype(np.uint64) << np.uint64(shift)
        signed = (top.view(np.int64) >> np.int64(shift)).astype(np.float64)
        return signed / (self.scale * weight), weight


    def mean_bound(self, length: int) -> float:
        """The largest L2 norm an honest weighted mean of `length` values can decode to."""
        return self.norm + float(np.sqrt(length)) * self.quantisation_bound

    def check_mean(self, mean: np.ndarray) -> None:
        """EncodingError when the decoded mean is longer than per-device clipping allows
        (some input was not clipped: a hostile device). No check without a `norm`."""
        if self.norm <= 0:
            return
        length = float(np.linalg.norm(mean))
        if not length <= self.mean_bound(mean.size):
            raise EncodingError(f"aggregate has L2 norm {length:.6g}, more than the "
                                f"{self.mean_bound(mean.size):.6g} that clipping every update "
                                f"to {self.norm:g} allows: an input was not clipped")


def modular_sum(vectors: Iterable[np.ndarray], bits: int) -> np.ndarray:
    """Sum in Z_{2^bits} (wrap-around in the dtype, then reduce)."""
    total: np.ndarray | None = None
    for v in vectors:
        total = v.copy() if total is None else np.add(total, v, out=total)
    if total is None:
        raise ValueError("nothing to sum")
    return reduce(total, bits)
