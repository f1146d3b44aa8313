"""What each compared method releases per clip, and what the attackers get to see.

Two families, one interface (:class:`Representation`):

* **pixel baselines** release (transformed) frames: raw, Gaussian blur, pixelation,
  additive pixel noise. The attackers' input for them is a fixed, public feature map of
  the released clip (:func:`pixel_features`: the temporal mean frame at full resolution and
  the temporal standard deviation at half resolution), and the reconstruction attacker may
  also simply look at the released frames (:meth:`PixelRepresentation.released_frames`).
* **encoders** (the non-private encoder at beta = 0, the MSR at several beta, the MSR
  trained with DP-SGD, a federated run's final model) release one sample
  ``z ~ q(z | x)`` per clip, quantised exactly as the upload payload does (int8 through
  :func:`privacy.payload.encode_payload`): attackers see what the server would store, not
  the posterior mean, because the KL information bound is a bound on the *sampled* z.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from privacy.encoder import VIBModel, encode
from privacy.payload import decode_payload, encode_payload
from privacy.release_mechanism import GaussianRelease
from privacy.vib import kl_bits

PIXEL_KINDS = ("raw", "blur", "pixelate", "noise")


class Representation(Protocol):
    name: str
    family: str  # "pixels" | "encoder"

    def features(self, x: np.ndarray, seed: int) -> np.ndarray:
        """float32 [N, F]: what an attacker observes for each clip of ``x``."""
        ...


def _check_clips(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != np.uint8 or x.ndim != 5 or x.shape[-1] != 3:
        raise ValueError(f"clips must be uint8 [N, T, H, W, 3], got {x.dtype}{x.shape}")
    return x


def mean_frames(x: np.ndarray) -> np.ndarray:
    """float32 [N, H, W, 3] in [0, 1]: each clip's temporal mean frame.

    The reconstruction target everywhere: beyond its kernel-3 temporal convolution the
    encoder pools frames by their temporal mean, so a clip's frame-by-frame sequence is
    not what its outputs keep, but the scene is.
    """
    return _check_clips(x).astype(np.float32).mean(axis=1) / 255.0


def pixel_features(x: np.ndarray) -> np.ndarray:
    """Public feature map of released frames: mean frame (full res) + temporal std (half res)."""
    x = _check_clips(x).astype(np.float32) / 255.0
    n, _t, h, w, c = x.shape
    mean = x.mean(axis=1)
    std = x.std(axis=1).reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
    return np.concatenate([mean.reshape(n, -1), std.reshape(n, -1)], axis=1).astype(np.float32)


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(np.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of every frame (reflect padding), uint8 out."""
    x = _check_clips(x).astype(np.float32)
    k = _gaussian_kernel(sigma)
    r = len(k) // 2
    out = x
    for axis in (2, 3):
        pad = [(0, 0)] * 5
        pad[axis] = (r, r)
        p = np.pad(out, pad, mode="reflect")
        size = out.shape[axis]
        out = sum(k[i] * np.take(p, np.arange(i, i + size), axis=axis) for i in range(len(k)))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def pixelate(x: np.ndarray, block: int) -> np.ndarray:
    """Mean over ``block x block`` cells, repeated back to full size (mosaic)."""
    x = _check_clips(x)
    n, t, h, w, c = x.shape
    if h % block or w % block:
        raise ValueError(f"pixelation block {block} must divide the frame size {h}x{w}")
    cells = x.astype(np.float32).reshape(n, t, h // block, block, w // block, block, c).mean(axis=(3, 5))
    big = np.repeat(np.repeat(cells, block, axis=2), block, axis=3)
    return np.clip(np.rint(big), 0, 255).astype(np.uint8)


def pixel_noise(x: np.ndarray, std: float, seed: int) -> np.ndarray:
    """Additive i.i.d. Gaussian noise of ``std`` (in [0, 1] units) on every pixel."""
    x = _check_clips(x)
    rng = np.random.default_rng(seed)
    noisy = x.astype(np.float32) + rng.normal(0.0, std * 255.0, size=x.shape).astype(np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class PixelRepresentation:
    """A pixel baseline: ``kind`` in PIXEL_KINDS with its strength (sigma / block / std)."""

    name: str
    kind: str
    strength: float = 0.0
    family: str = field(default="pixels", init=False)

    def __post_init__(self) -> None:
        if self.kind not in PIXEL_KINDS:
            raise ValueError(f"pixel baseline kind must be one of {PIXEL_KINDS}, got {self.kind!r}")

    def released_frames(self, x: np.ndarray, seed: int) -> np.ndarray:
        if self.kind == "raw":
            return _check_clips(x)
        if self.kind == "blur":
            return blur(x, self.strength)
        if self.kind == "pixelate":
            return pixelate(x, int(self.strength))
        return pixel_noise(x, self.strength, seed)

    def features(self, x: np.ndarray, seed: int) -> np.ndarray:
        return pixel_features(self.released_frames(x, seed))


def quantize_like_payload(z: np.ndarray) -> np.ndarray:
    """Round-trip every row through the int8 upload payload (what the server stores)."""
    z = np.asarray(z, dtype=np.float32)
    return np.stack([decode_payload(encode_payload(row, "int8")) for row in z]) if len(z) else z


@dataclass(frozen=True)
class EncoderRepresentation:
    """An encoder: releases one payload-quantised sample of q(z | x) per clip."""

    name: str
    model: VIBModel
    beta: float
    dp_sgd: bool = False
    family: str = field(default="encoder", init=False)

    def posterior(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return encode(self.model, x)

    def features(self, x: np.ndarray, seed: int) -> np.ndarray:
        mu, logvar = self.posterior(x)
        eps = np.random.default_rng(seed).standard_normal(mu.shape).astype(np.float32)
        return quantize_like_payload(mu + np.exp(0.5 * logvar) * eps)

    def mean_kl_bits(self, x: np.ndarray) -> float:
        mu, logvar = self.posterior(x)
        return float(np.mean(kl_bits(mu, logvar)))


@dataclass(frozen=True)
class RandomizedRepresentation:
    """An encoder behind the randomized release: per clip, the Gaussian mechanism on its
    clipped posterior mean (:class:`privacy.release_mechanism.GaussianRelease`), quantised
    like the payload. ``clips`` is how many releases of one device the reported epsilon
    composes (the accumulation horizon attacked)."""

    name: str
    base: EncoderRepresentation
    mechanism: GaussianRelease
    family: str = field(default="encoder", init=False)

    @property
    def model(self) -> VIBModel:
        return self.base.model

    @property
    def beta(self) -> float:
        return self.base.beta

    @property
    def dp_sgd(self) -> bool:
        return self.base.dp_sgd

    def features(self, x: np.ndarray, seed: int) -> np.ndarray:
        mu, _ = self.base.posterior(x)
        noise = np.random.default_rng(seed).standard_normal(mu.shape)
        return quantize_like_payload(self.mechanism.apply(mu, noise))

    def mean_kl_bits(self, x: np.ndarray) -> float:
        """The release's information bound per clip (it does not depend on the clip)."""
        return self.mechanism.information_bits(self.base.model.cfg.latent_dim)


def default_pixel_baselines(image_size: int) -> list[PixelRepresentation]:
    """Raw, blur (sigma = size/16 px), pixelation (block = size/8), noise (std 0.2)."""
    return [
        PixelRepresentation("raw pixels", "raw"),
        PixelRepresentation("blur", "blur", image_size / 16),
        PixelRepresentation("pixelation", "pixelate", image_size // 8),
        PixelRepresentation("pixel noise", "noise", 0.2),
    ]
