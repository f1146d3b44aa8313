"""Variational Information Bottleneck objective: KL rate, utility terms, the criterion.

Loss per clip i::

    L_i = U_i + beta * KL( q(z | x_i) || N(0, I) )

with ``U_i`` one of

* ``"supervised"``: cross-entropy of the activity head on the sampled z_i;
* ``"ssl"``: view invariance without negatives (BYOL-style regression): the online
  projector + predictor applied to z of view 1 of clip i is regressed onto the *target*
  projection of view 2 of the same clip (``2 - 2 cos``, i.e. squared distance of the
  L2-normalised vectors). The target network is a frozen copy of the weights the round
  started from, so it is a fixed function of public (global) weights;
* ``"both"``: the sum of the two.

Optionally ``+ invariance_weight * I_i``, the identity-invariance penalty of clip i's
posterior mean (or sampled z, by loss) under a *frozen* device discriminator
(privacy.identity_adversary): its weights are constants of the round, not trained
parameters, and the penalty reads row i only.

Every term is a function of clip i alone (no batch statistics, no in-batch negatives),
so per-example gradient clipping in DP-SGD bounds each clip's influence. The criterion
honours ``.reduction`` (``"none"`` -> per-clip losses ``[N]``), which Opacus' ghost
clipping relies on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from privacy.identity_adversary import (
    DEFAULT_INVARIANCE_LOSS,
    ON_POSTERIOR_MEAN,
    Discriminator,
    check_invariance_loss,
    invariance_per_sample,
)
from privacy.wire.train import UTILITIES

REDUCTIONS = ("none", "mean", "sum")
LN2 = math.log(2.0)


def kl_per_sample(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) in nats, one value per row: shape [N]."""
    if mu.shape != logvar.shape or mu.dim() != 2:
        raise ValueError(f"mu and logvar must both be [N, D], got {tuple(mu.shape)} and {tuple(logvar.shape)}")
    return 0.5 * (mu.pow(2) + torch.expm1(logvar) - logvar).sum(dim=1)


def kl_bits(mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """Per-clip KL(q(z|x) || N(0, I)) in bits (float64, shape [N])."""
    mu = np.asarray(mu, dtype=np.float64)
    logvar = np.asarray(logvar, dtype=np.float64)
    if mu.shape != logvar.shape or mu.ndim != 2:
        raise ValueError(f"mu and logvar must both be [N, D], got {mu.shape} and {logvar.shape}")
    # expm1(lv) - lv is exact near lv = 0 where exp(lv) - 1 - lv cancels.
    nats = 0.5 * (mu**2 + np.expm1(logvar) - logvar).sum(axis=1)
    return nats / LN2


def check_utility(utility: str) -> str:
    if utility not in UTILITIES:
        raise ValueError(f"utility must be one of {UTILITIES}, got {utility!r}")
    return utility


def uses_supervised(utility: str) -> bool:
    return check_utility(utility) in ("supervised", "both")


def uses_ssl(utility: str) -> bool:
    return check_utility(utility) in ("ssl", "both")


def byol_regression(online: Tensor, target: Tensor) -> Tensor:
    """Per-row ``|| normalise(online) - normalise(target) ||^2 = 2 - 2 cos``: shape [N]."""
    p = F.normalize(online, dim=-1, eps=1e-6)
    t = F.normalize(target.detach(), dim=-1, eps=1e-6)
    return (p - t).pow(2).sum(dim=-1)


@dataclass
class VIBOutput:
    """What the model's training forward returns (per clip, batch first)."""

    mu: Tensor
    logvar: Tensor
    z: Tensor
    logits: Tensor | None = None  # activity head on z, [N, num_activities]
    online: Tensor | None = None  # predictor(projector(z)), [N, proj_dim]


@dataclass
class VIBTarget:
    """What the loss compares against: activity labels and/or target projections."""

    labels: Tensor | None = None  # [N] int64
    target_proj: Tensor | None = None  # [N, proj_dim], from the frozen target network
    devices: Tensor | None = None  # [N] int64 device index (only the "reversal" invariance loss)


class VIBCriterion(nn.Module):
    """``utility + beta * KL`` per clip, reduced according to ``self.reduction``.

    ``reduction`` is read on every call (Opacus' ghost clipping flips it to ``"none"``
    to obtain the per-clip losses, then back). The last call's per-clip terms are kept,
    detached, in ``last_terms`` for metrics.

    With ``adversary`` (a fitted :class:`~privacy.identity_adversary.Discriminator`) and
    ``invariance_weight > 0`` the loss gains ``invariance_weight * I_i`` (term
    ``"invariance"``). The discriminator is held as a frozen submodule of the criterion,
    outside the model Opacus wraps, so DP-SGD never trains or clips it.
    """

    def __init__(self, beta: float, utility: str = "supervised", reduction: str = "mean", *,
                 adversary: Discriminator | None = None, invariance_weight: float = 0.0,
                 invariance_loss: str = DEFAULT_INVARIANCE_LOSS):
        super().__init__()
        if not (isinstance(invariance_weight, (int, float)) and math.isfinite(invariance_weight)
                and invariance_weight >= 0):
            raise ValueError(f"invariance_weight must be a finite number >= 0, got {invariance_weight!r}")
        if invariance_weight > 0 and adversary is None:
            raise ValueError("invariance_weight > 0 needs a fitted device discriminator (adversary)")
        self.invariance_weight = float(invariance_weight)
        self.invariance_loss = check_invariance_loss(invariance_loss)
        self.adversary = adversary.module() if adversary is not None and invariance_weight > 0 else None
        if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta >= 0):
            raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
        self.beta = float(beta)
        self.utility = check_utility(utility)
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction
        self.last_terms: dict[str, Tensor] = {}

    def per_sample(self, out: VIBOutput, target: VIBTarget) -> dict[str, Tensor]:
        kl = kl_per_sample(out.mu, out.logvar)
        util = torch.zeros_like(kl)
        if uses_supervised(self.utility):
            if out.logits is None or target.labels is None:
                raise ValueError("supervised utility needs logits and labels")
            util = util + F.cross_entropy(out.logits, target.labels, reduction="none")
        if uses_ssl(self.utility):
            if out.online is None or target.target_proj is None:
                raise ValueError("ssl utility needs online and target projections")
            util = util + byol_regression(out.online, target.target_proj)
        loss = util + self.beta * kl
        terms = {"utility": util, "kl": kl}
        if self.adversary is not None:
            read = out.mu if self.invariance_loss in ON_POSTERIOR_MEAN else out.z
            inv = invariance_per_sample(self.adversary(read), self.invariance_loss, target.devices)
            terms["invariance"] = inv
            loss = loss + self.invariance_weight * inv
        return terms | {"loss": loss}

    def forward(self, out: VIBOutput, target: VIBTarget) -> Tensor:
        terms = self.per_sample(out, target)
        self.last_terms = {k: v.detach() for k, v in terms.items()}
        loss = terms["loss"]
        if self.reduction == "none":
            return loss
        if self.reduction == "sum":
            return loss.sum()
        if self.reduction == "mean":
            return loss.mean()
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {self.reduction!r}")


# --------------------------------------------------------------------------------------
# Augmentations for the self-supervised utility: each clip gets its own random
# parameters (drawn from an explicit generator), nothing is computed across clips.
# --------------------------------------------------------------------------------------


def augment_labelled_clips(x: Tensor, generator: torch.Generator) -> Tensor:
    """One random, label-preserving view per clip for the supervised utility.

    ``x``: float [N, T, 3, H, W] in [0, 1]. What changes between cameras, places and days
    but not what a clip shows being done: lighting and white balance (brightness and
    contrast x0.6..1.4, per-channel gain x0.8..1.2) and where the action sits in the frame
    (the whole clip translated by up to an eighth of the frame, reflect-padded). No flip
    and no temporal crop: a label may name a direction or a speed (left vs right, walk vs
    run). Parameters are drawn per clip from ``generator``; nothing is computed across
    clips, so DP-SGD's per-clip bound holds.
    """
    if x.dim() != 5:
        raise ValueError(f"clips must be [N, T, 3, H, W], got {tuple(x.shape)}")
    n, t, c, h, w = x.shape
    if n == 0:
        return x.clone()
    u = torch.rand(n, 7, generator=generator).to(x.device)
    bright = (0.6 + 0.8 * u[:, 0]).view(n, 1, 1, 1, 1)
    contrast = (0.6 + 0.8 * u[:, 1]).view(n, 1, 1, 1, 1)
    gain = (0.8 + 0.4 * u[:, 2:5]).view(n, 1, 3, 1, 1)
    mean = x.mean(dim=(1, 2, 3, 4), keepdim=True)
    view = (((x - mean) * contrast + mean) * bright * gain).clamp(0.0, 1.0)
    pad = max(1, h // 8)
    padded = F.pad(view.reshape(n, t * c, h, w), (pad, pad, pad, pad), mode="reflect")
    dy = torch.floor(u[:, 5] * (2 * pad + 1)).clamp(max=2 * pad).long().tolist()
    dx = torch.floor(u[:, 6] * (2 * pad + 1)).clamp(max=2 * pad).long().tolist()
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    return out.reshape(n, t, c, h, w).contiguous()


def augment_clips(x: Tensor, generator: torch.Generator) -> Tensor:
    """One random view per clip. ``x``: float [N, T, 3, H, W] in [0, 1].

    * temporal crop: a random window of T/2..T frames, resampled (nearest) to T frames;
    * colour jitter: brightness (x0.7..1.3), contrast (x0.7..1.3 about the clip's own
      mean), per-channel gain (x0.9..1.1);
    * horizontal flip with probability 1/2.
    """
    if x.dim() != 5:
        raise ValueError(f"clips must be [N, T, 3, H, W], got {tuple(x.shape)}")
    n, t = x.shape[:2]
    dev = x.device
    if n == 0:
        return x.clone()
    u = torch.rand(n, 8, generator=generator).to(dev)
    # temporal crop
    min_len = max(1, t // 2)
    length = min_len + torch.floor(u[:, 0] * (t - min_len + 1)).clamp(max=t - min_len)
    start = torch.floor(u[:, 1] * (t - length + 1)).clamp(max=t - length)
    idx = start[:, None] + torch.floor(torch.arange(t, device=dev)[None, :] * length[:, None] / t)
    idx = idx.long().clamp(0, t - 1)
    view = torch.gather(x, 1, idx[:, :, None, None, None].expand_as(x))
    # colour jitter
    bright = (0.7 + 0.6 * u[:, 2]).view(n, 1, 1, 1, 1)
    contrast = (0.7 + 0.6 * u[:, 3]).view(n, 1, 1, 1, 1)
    gain = (0.9 + 0.2 * u[:, 4:7]).view(n, 1, 3, 1, 1)
    mean = view.mean(dim=(1, 2, 3, 4), keepdim=True)
    view = ((view - mean) * contrast + mean) * bright * gain
    view = view.clamp(0.0, 1.0)
    # horizontal flip
    flip = u[:, 7] < 0.5
    view = torch.where(flip.view(n, 1, 1, 1, 1), view.flip(-1), view)
    return view.contiguous()
