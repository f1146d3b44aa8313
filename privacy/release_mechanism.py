"""Randomized release of representations: the Gaussian mechanism on the clipped posterior mean.

The KL rate bounds what one sampled ``z`` reveals about its clip, but only in bits, and a
few bits per clip add up: a history of a device's representations can name it. This
mechanism gives every upload a formal (epsilon, delta) guarantee that composes over the
device's whole history, charged to the same per-device DP ledger as DP-SGD:

* **what is released**: ``y = s * (clip(mu(x), C) + N(0, std^2 I))`` with ``mu(x)`` the
  posterior mean, ``clip`` the scaling of the row to L2 norm at most ``C``, and
  ``s = 1 / sqrt(C^2 / D + std^2)`` a fixed, public scale that puts ``y`` at about unit
  variance per coordinate (so the int8 payload's fixed range fits it). ``s`` depends on no
  clip: post-processing, free in privacy;
* **sensitivity**: replacing one clip by any other moves ``clip(mu)`` by at most ``2C``
  in L2 norm, so one upload is the Gaussian mechanism with noise multiplier
  ``std / (2C)`` (replace-one adjacency). Removing a clip (its slot becomes a dummy, the
  zero vector plus the same noise) moves it by at most ``C``: the replace-one multiplier is
  the smaller, so charging it is conservative for both neighbouring relations;
* **accounting**: each release of ``n`` clips is charged as the event
  ``DpEvent(sample_rate=1, noise_multiplier=std / (2C), steps=n,
  kind=RANDOMIZED_RELEASE)``. Composing every upload of a device *sequentially* (not in
  parallel over its distinct clips) is what bounds the accumulation threat: whatever is
  common to all of a device's clips (who wears it, where it lives) is protected at the
  device level by the composition over every clip it ever released;
* **information**: with ``||clip(mu)|| <= C``, the release is a Gaussian channel with input
  power ``C^2``, so ``I(X; y) <= D/2 * log2(1 + C^2 / (D std^2))`` bits per clip
  (capacity of D parallel channels under a total power constraint, water-filling spreads
  it evenly). The bound does not depend on the clip, so charging it reveals nothing.

The noise is supplied by the caller: on a device from the OS CSPRNG
(:func:`privacy.secure_normal.secure_standard_normal`, see why there), in the evaluation
from a seeded generator (reproducible figures of the same mechanism).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from privacy.accounting.budget import PlannedRelease, calibrate_noise
from privacy.accounting.events import DpEvent, EventKind, check_delta
from privacy.checks import is_finite, is_int


@dataclass(frozen=True)
class GaussianRelease:
    """Clip the posterior mean to L2 norm ``clip_norm``, add N(0, std^2), rescale."""

    clip_norm: float
    noise_multiplier: float  # std / (2 * clip_norm)

    def __post_init__(self) -> None:
        for name in ("clip_norm", "noise_multiplier"):
            value = getattr(self, name)
            if not is_finite(value) or value <= 0:
                raise ValueError(f"release {name} must be a finite number > 0, got {value!r}")
            object.__setattr__(self, name, float(value))

    @property
    def std(self) -> float:
        """Standard deviation of the noise added to each coordinate of the clipped mean."""
        return 2.0 * self.clip_norm * self.noise_multiplier

    def scale(self, latent_dim: int) -> float:
        """The public output scale: about unit variance per released coordinate."""
        return 1.0 / math.sqrt(self.clip_norm**2 / latent_dim + self.std**2)

    def clip(self, mu: np.ndarray) -> np.ndarray:
        """Every row scaled down to L2 norm <= clip_norm (rows within it are unchanged)."""
        mu = np.asarray(mu, np.float64)
        norms = np.linalg.norm(mu, axis=1, keepdims=True)
        return mu * np.minimum(1.0, self.clip_norm / np.maximum(norms, 1e-12))

    def apply(self, mu: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """float32 [N, D]: the released vectors, given standard-normal ``noise`` [N, D]."""
        mu = np.asarray(mu)
        noise = np.asarray(noise)
        if mu.ndim != 2 or noise.shape != mu.shape:
            raise ValueError(f"mu must be [N, D] and noise the same shape, got {mu.shape} and "
                             f"{noise.shape}")
        out = (self.clip(mu) + self.std * noise.astype(np.float64)) * self.scale(mu.shape[1])
        return out.astype(np.float32)

    def event(self, clips: int) -> DpEvent:
        """The ledger event of one upload of ``clips`` released vectors."""
        if not is_int(clips) or clips < 1:
            raise ValueError(f"a release charges at least one clip, got {clips!r}")
        return DpEvent(1.0, self.noise_multiplier, int(clips), EventKind.RANDOMIZED_RELEASE)

    def information_bits(self, latent_dim: int) -> float:
        """Upper bound on I(clip; released vector) in bits (Gaussian channel capacity)."""
        if not is_int(latent_dim) or latent_dim < 1:
            raise ValueError(f"latent_dim must be an int >= 1, got {latent_dim!r}")
        return 0.5 * latent_dim * math.log2(1.0 + self.clip_norm**2 / (latent_dim * self.std**2))


def calibrate_release(epsilon: float, delta: float, clips: int, clip_norm: float) -> GaussianRelease:
    """The release whose ``clips`` uploads compose to (epsilon, delta) per device (PLD figure).

    ``clips`` is the horizon the operator budgets for: every upload of a device during it
    (per day, per run, or for life). The calibration is dp-accounting's, on fedmsr's
    reported figure (``privacy.accounting.budget.calibrate_noise``).
    """
    if not is_finite(epsilon) or epsilon <= 0:
        raise ValueError(f"release epsilon must be a finite number > 0, got {epsilon!r}")
    if not is_int(clips) or clips < 1:
        raise ValueError(f"release horizon must be an int >= 1 clips, got {clips!r}")
    multiplier = calibrate_noise([PlannedRelease(1.0, int(clips), EventKind.RANDOMIZED_RELEASE)],
                                 float(epsilon), check_delta(delta))
    return GaussianRelease(clip_norm, multiplier)
