"""User-level clipping of a model update: the sensitivity bound of central DP-FedAvg.

Central DP-FedAvg (strategies/central_dp.py) adds Gaussian noise of std ``sigma * C`` to the
*sum* of the devices' model updates; that is (epsilon, delta)-DP for each device only if no
device can move the sum by more than ``C`` in L2 norm. So each device clips its whole
update (every array, flattened in `privacy.secagg.codec` order) to norm ``C`` before it
leaves the device: clipping on the device is what lets it compose with secure aggregation,
where the server never sees an individual update and could not clip it.

The bound must hold for the update as the *receiver* computes it: the device sends its new
float32 weights (or, under SecAgg, their difference to the float32 global weights), and
rounding to float32 can lengthen a clipped float64 delta by a few ulps of the weights.
:func:`clipped_arrays` therefore re-measures after the rounding and shrinks until the
float32 update itself is within ``C``.
"""

from __future__ import annotations

import math

import numpy as np

from privacy.secagg.codec import flatten, unflatten

#: Shrink factor per retry when float32 rounding pushed the update just past the bound.
_SHRINK = 1.0 - 1e-6


def check_clip_norm(clip_norm: float) -> float:
    if isinstance(clip_norm, bool) or not math.isfinite(float(clip_norm)) or clip_norm <= 0:
        raise ValueError(f"clip_norm must be a finite number > 0, got {clip_norm!r}")
    return float(clip_norm)


def update_vector(global_arrays: dict[str, np.ndarray],
                  new_arrays: dict[str, np.ndarray]) -> np.ndarray:
    """new - global as one float64 vector (exact for float32 inputs)."""
    if set(global_arrays) != set(new_arrays):
        missing = sorted(set(global_arrays) ^ set(new_arrays))
        raise ValueError(f"update and global model have different arrays: {missing[:3]}")
    return flatten(new_arrays) - flatten(global_arrays)


def clip_l2(vector: np.ndarray, clip_norm: float) -> np.ndarray:
    """``vector * min(1, C / ||vector||)``: unchanged when already within the bound."""
    clip_norm = check_clip_norm(clip_norm)
    norm = float(np.linalg.norm(vector))
    if norm <= clip_norm:
        return vector
    return vector * (clip_norm / norm)


def clipped_arrays(global_arrays: dict[str, np.ndarray], new_arrays: dict[str, np.ndarray],
                   clip_norm: float) -> dict[str, np.ndarray]:
    """``global + clip(new - global)`` in the arrays' own dtypes, with
    ``||update_vector(global, result)|| <= clip_norm`` guaranteed after rounding."""
    clip_norm = check_clip_norm(clip_norm)
    delta = update_vector(global_arrays, new_arrays)
    base = flatten(global_arrays)
    like = {k: np.asarray(v) for k, v in global_arrays.items()}
    scale = min(1.0, clip_norm / max(float(np.linalg.norm(delta)), 1e-300))
    while True:
        out = unflatten(base + delta * scale, like)
        norm = float(np.linalg.norm(update_vector(global_arrays, out)))
        if norm <= clip_norm:
            return out
        scale *= min(_SHRINK, clip_norm / norm)
