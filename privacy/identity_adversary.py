"""A device discriminator over released representations, and the per-clip invariance loss.

The VIB rate term bounds *all* information a representation carries, identity included,
but one clip's representation still says which device filmed it well above chance, and
that leak accumulates over a device's history. This module gives the encoder a second,
still attack-agnostic, signal: the one label every federated system knows anyway, the
**device id** of each stored representation. No identity, place or routine label is used.

* :func:`fit_discriminator` fits a small classifier ``p(d | z)`` (softmax regression or a
  one-hidden-layer MLP; no BatchNorm) on released ``z`` tagged with their device index.
  Training is full-batch Adam from a seeded initialisation, so it is a deterministic
  function of ``(z, devices, seed)``. The result is a frozen :class:`Discriminator` of
  plain numpy arrays: it crosses the wire to devices as an ArrayRecord.
* :func:`invariance_per_sample` is the encoder's penalty on *one clip's* sampled ``z``:

  - ``"entropy"``: ``log K - H(p(d | z))``, zero when the frozen
    discriminator's posterior is uniform over the K devices. It needs no label at all, so
    a device applies it without knowing its own index among the server's classes.
  - ``"entropy-mean"``: the same on the clip's posterior mean instead of its sample. On
    the sample, noise in z makes single posteriors confident (low entropy), so the
    penalty pays the encoder to *shrink* its noise, which releases more about everything;
    on the mean it does not.
  - ``"logit-spread"`` (the default): the variance of the discriminator's K logits on the posterior
    mean, ``mean_k (l_k - mean(l))^2``: zero exactly where the entropy is maximal, but
    quadratic instead of saturating, so the clips the discriminator is surest about get
    the largest push, and a clip gains nothing by moving into another device's region.
  - ``"reversal"``: gradient reversal on the clip's own device index, i.e. the encoder
    maximises the discriminator's cross-entropy; with the discriminator frozen this is
    unbounded, so it is capped at chance: ``relu(log K - CE(p(d | z), d))``.

  The default was picked by measurement (scripts/invariance_probe.py, docs/representations.md):
  on the sample, both entropy and reversal made single-clip identity *easier* to read;
  on the mean, the logit spread gave the best utility for the identity it removed.

Why this is valid under DP-SGD: the penalty of clip i is a function of clip i's ``z``
alone and of the discriminator's weights, which are constants within a local round
(public data shipped with the global model, never a trained parameter). Per-clip gradient
clipping therefore still bounds each clip's influence. Nothing here mixes rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

INVARIANCE_LOSSES = ("entropy", "entropy-mean", "logit-spread", "reversal")
#: losses read on the clip's posterior mean rather than on its sampled z
ON_POSTERIOR_MEAN = ("entropy-mean", "logit-spread")
DEFAULT_INVARIANCE_LOSS = "logit-spread"

#: ArrayRecord / dict keys of a discriminator's arrays (hidden.* only for the MLP)
ARRAY_KEYS = ("hidden.weight", "hidden.bias", "out.weight", "out.bias")


class DeviceDiscriminator(nn.Module):
    """``p(d | z)``: softmax regression (``hidden=0``) or one ReLU hidden layer."""

    def __init__(self, latent_dim: int, num_classes: int, hidden: int = 0):
        super().__init__()
        if latent_dim < 1 or num_classes < 2 or hidden < 0:
            raise ValueError(f"need latent_dim >= 1, num_classes >= 2, hidden >= 0; got "
                             f"{latent_dim}, {num_classes}, {hidden}")
        self.hidden = nn.Linear(latent_dim, hidden) if hidden else None
        self.out = nn.Linear(hidden or latent_dim, num_classes)

    def forward(self, z: Tensor) -> Tensor:
        h = F.relu(self.hidden(z)) if self.hidden is not None else z
        return self.out(h)


@dataclass(frozen=True)
class Discriminator:
    """A fitted device discriminator as plain arrays (float32), frozen."""

    out_weight: np.ndarray  # [K, H or D]
    out_bias: np.ndarray  # [K]
    hidden_weight: np.ndarray | None = None  # [H, D]
    hidden_bias: np.ndarray | None = None  # [H]

    def __post_init__(self) -> None:
        _check_arrays(self.out_weight, self.out_bias, self.hidden_weight, self.hidden_bias)

    @property
    def num_classes(self) -> int:
        return int(self.out_weight.shape[0])

    @property
    def latent_dim(self) -> int:
        w = self.hidden_weight if self.hidden_weight is not None else self.out_weight
        return int(w.shape[1])

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {"out.weight": self.out_weight, "out.bias": self.out_bias}
        if self.hidden_weight is not None and self.hidden_bias is not None:
            arrays |= {"hidden.weight": self.hidden_weight, "hidden.bias": self.hidden_bias}
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Discriminator:
        """Rebuild from :meth:`to_arrays`' dict; ValueError naming what is wrong."""
        unknown = sorted(set(arrays) - set(ARRAY_KEYS))
        if unknown:
            raise ValueError(f"discriminator arrays: unknown key(s) {', '.join(unknown)}")
        for key in ("out.weight", "out.bias"):
            if key not in arrays:
                raise ValueError(f"discriminator arrays: missing {key}")
        if ("hidden.weight" in arrays) != ("hidden.bias" in arrays):
            raise ValueError("discriminator arrays: hidden.weight and hidden.bias come together")
        return cls(out_weight=np.asarray(arrays["out.weight"]), out_bias=np.asarray(arrays["out.bias"]),
                   hidden_weight=arrays.get("hidden.weight"), hidden_bias=arrays.get("hidden.bias"))

    def module(self) -> DeviceDiscriminator:
        """A frozen torch module with these weights (no parameter requires grad)."""
        hidden = 0 if self.hidden_weight is None else int(self.hidden_weight.shape[0])
        net = DeviceDiscriminator(self.latent_dim, self.num_classes, hidden)
        with torch.no_grad():
            net.out.weight.copy_(torch.from_numpy(self.out_weight))
            net.out.bias.copy_(torch.from_numpy(self.out_bias))
            if net.hidden is not None:
                assert self.hidden_weight is not None and self.hidden_bias is not None
                net.hidden.weight.copy_(torch.from_numpy(self.hidden_weight))
                net.hidden.bias.copy_(torch.from_numpy(self.hidden_bias))
        return net.eval().requires_grad_(False)

    def predict_proba(self, z: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(self.module()(torch.as_tensor(np.asarray(z, np.float32))), -1).numpy()


def _check_arrays(ow: np.ndarray, ob: np.ndarray, hw: np.ndarray | None, hb: np.ndarray | None) -> None:
    for name, a in (("out.weight", ow), ("out.bias", ob), ("hidden.weight", hw), ("hidden.bias", hb)):
        if a is None:
            continue
        if not isinstance(a, np.ndarray) or a.dtype != np.float32:
            raise ValueError(f"discriminator {name} must be a float32 numpy array")
        if not np.isfinite(a).all():
            raise ValueError(f"discriminator {name} has non-finite values")
    if ow.ndim != 2 or ob.shape != (ow.shape[0],) or ow.shape[0] < 2:
        raise ValueError(f"discriminator out.weight must be [K>=2, H] with out.bias [K], got "
                         f"{ow.shape} and {ob.shape}")
    if (hw is None) != (hb is None):
        raise ValueError("discriminator hidden.weight and hidden.bias come together")
    if hw is not None and hb is not None and (hw.ndim != 2 or hb.shape != (hw.shape[0],)
                                              or ow.shape[1] != hw.shape[0]):
        raise ValueError(f"discriminator hidden.weight {hw.shape} / hidden.bias {hb.shape} do not "
                         f"fit out.weight {ow.shape}")


def fit_discriminator(z: np.ndarray, devices: np.ndarray, seed: int, *, hidden: int = 0,
                      steps: int = 300, lr: float = 1e-2, weight_decay: float = 1e-3) -> Discriminator:
    """Fit ``p(d | z)`` on released representations ``z`` [N, D] tagged with device indices
    ``devices`` [N] in ``0..K-1`` (K = max + 1 >= 2); full-batch Adam on the mean
    cross-entropy, deterministic given ``seed``."""
    z = np.asarray(z, dtype=np.float32)
    d = np.asarray(devices)
    if z.ndim != 2 or len(z) < 2:
        raise ValueError(f"z must be [N >= 2, D], got {z.shape}")
    if d.shape != (len(z),) or not np.issubdtype(d.dtype, np.integer):
        raise ValueError(f"devices must be integer indices, one per row of z ({len(z)}), got "
                         f"{d.dtype} {d.shape}")
    if d.min() < 0 or len(np.unique(d)) < 2:
        raise ValueError("devices must be indices >= 0 naming at least 2 devices")
    if not np.isfinite(z).all():
        raise ValueError("z has non-finite values")
    k = int(d.max()) + 1
    gen = torch.Generator().manual_seed(int(seed))
    net = DeviceDiscriminator(z.shape[1], k, hidden)
    with torch.no_grad():
        for p in net.parameters():  # seeded init, independent of the global RNG
            bound = 1.0 / math.sqrt(p.shape[-1] if p.dim() > 1 else max(1, p.shape[0]))
            p.copy_((torch.rand(p.shape, generator=gen) * 2 - 1) * bound)
    zt, dt = torch.from_numpy(z), torch.from_numpy(d.astype(np.int64))
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(zt), dt).backward()
        opt.step()
    arr = {n: p.detach().numpy().astype(np.float32).copy() for n, p in net.named_parameters()}
    return Discriminator.from_arrays(arr)


def stacked(discriminators: list[Discriminator] | tuple[Discriminator, ...]) -> Discriminator:
    """Several linear discriminators as one, for the ``"logit-spread"`` loss: each one's
    logits centred across its own classes (rows and bias minus their mean), then stacked.
    The centred logits of all of them then have mean 0, so the spread of the stack is the
    class-weighted mean of each one's own spread: one penalty that keeps the encoder out
    of every subspace an earlier discriminator read the device from."""
    if not discriminators:
        raise ValueError("stacked needs at least one discriminator")
    if any(d.hidden_weight is not None for d in discriminators):
        raise ValueError("only linear discriminators (hidden=0) can be stacked")
    ws = [d.out_weight - d.out_weight.mean(axis=0, keepdims=True) for d in discriminators]
    bs = [d.out_bias - d.out_bias.mean() for d in discriminators]
    return Discriminator(out_weight=np.concatenate(ws).astype(np.float32),
                         out_bias=np.concatenate(bs).astype(np.float32))


def check_invariance_loss(name: str) -> str:
    if name not in INVARIANCE_LOSSES:
        raise ValueError(f"invariance loss must be one of {INVARIANCE_LOSSES}, got {name!r}")
    return name


def invariance_per_sample(logits: Tensor, loss: str = DEFAULT_INVARIANCE_LOSS,
                          devices: Tensor | None = None) -> Tensor:
    """Per-row invariance penalty [N] from the frozen discriminator's ``logits`` [N, K] on
    each clip's sampled z (see the module docstring); ``devices`` [N] only for
    ``"reversal"``."""
    check_invariance_loss(loss)
    log_k = math.log(logits.shape[-1])
    logp = torch.log_softmax(logits, dim=-1)
    if loss == "logit-spread":
        centred = logits - logits.mean(dim=-1, keepdim=True)
        return centred.pow(2).mean(dim=-1)
    if loss in ("entropy", "entropy-mean"):
        entropy = -(logp.exp() * logp).sum(dim=-1)
        return log_k - entropy
    if devices is None:
        raise ValueError("the reversal invariance loss needs each clip's device index")
    ce = F.nll_loss(logp, devices, reduction="none")
    return F.relu(log_k - ce)
