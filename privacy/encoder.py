"""The privatization encoder: clip -> q(z | x) = N(mu, diag(exp(logvar))).

Architecture (per clip ``x``: T frames of H x W RGB):

* motion first: each frame is given with its difference from the frame before (6
  channels), so the first conv already sees what moved;
* a per-frame convolutional stem + 2 conv stages, every conv followed by GroupNorm
  (never BatchNorm: per-frame statistics only, nothing shared across clips) and SiLU.
  All T frames of all clips go through each conv as *one* batch of N*T images
  (``FrameConv2d`` / ``FrameGroupNorm`` take ``[N, T, C, H, W]``); the stem's stride is
  ``image_size // 16`` so 32x32 and 64x64 clips both reach the stages at 16x16, and the
  stages end on a 4x4 grid of cells;
* a temporal convolution (kernel 3, shared by every cell, residual) over each cell's
  per-frame features, then the temporal mean: the spatial layout is kept (where in the
  frame something happens) up to the posterior head, and only the order of frames beyond
  the temporal kernel is pooled away;
* an MLP from the 16 cells' features to ``(mu, logvar)`` of a ``latent_dim`` Gaussian
  (``logvar`` softly bounded to ``[-8, 8]``, starting at ``LOGVAR_INIT``);
* heads on the sampled ``z``: an activity classifier; an SSL projector + predictor.

DP-SGD: Opacus computes per-example gradients per layer from the layer's input and
output gradient, with the batch on dim 0. ``FrameConv2d`` / ``FrameGroupNorm`` keep the
*clip* on dim 0 (their inputs are ``[N, T, ...]``) and come with their own per-example
gradient functions (given to Opacus by ``register_grad_samplers``) that sum the T frames
of each clip, so the unit Opacus clips is the clip, never a frame. The per-clip conv weight gradient is computed
with the same kernel as an ordinary weight gradient (``convolution_backward`` on that
clip's T frames), which is what keeps a DP step cheap on CPU. There is no bare
``nn.Parameter`` on the top-level module and no buffer anywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from privacy.encoder_config import EncoderConfig
from privacy.vib import VIBOutput

LOGVAR_BOUND = 8.0
#: side of the spatial grid the frame convs end on, kept up to the posterior head
GRID = 4
#: initial log-variance of the posterior: a start near deterministic codes, so the first
#: steps at small beta learn from mu rather than from noise
LOGVAR_INIT = -4.0


# --------------------------------------------------------------------------------------
# Frame-batched layers with per-clip gradient samplers
# --------------------------------------------------------------------------------------


class _ConvInputGradOnly(torch.autograd.Function):
    """A convolution whose backward gives the input's gradient only.

    Under DP-SGD with Opacus' hooks the weight's gradient of the whole batch is never used:
    the per-clip sampler computes every clip's own gradient from the layer's input and
    output gradient, and the optimiser clips and sums those. Skipping the batch weight
    gradient saves one full weight-gradient convolution per layer and step.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None,
                layer: FrameConv2d) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.layer = layer
        return F.conv2d(x, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight = ctx.saved_tensors
        layer = ctx.layer
        grad_in = None
        if ctx.needs_input_grad[0]:
            grad_in = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, list(layer.stride), list(layer.padding),
                list(layer.dilation), False, [0, 0], layer.groups, [True, False, False])[0]
        return grad_in, None, None, None


class FrameConv2d(nn.Conv2d):
    """``nn.Conv2d`` applied to every frame: ``[N, T, C, H, W] -> [N, T, C', H', W']``.

    ``per_clip_grads_only`` (set by the DP-SGD stepper for Opacus' hooks mode) leaves the
    parameters' batch gradients out of the backward pass: only the per-clip gradients of
    the registered sampler are computed, which is all DP-SGD uses.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding)
        self.per_clip_grads_only = False

    def forward(self, x: Tensor) -> Tensor:
        n, t = x.shape[:2]
        flat = x.reshape(n * t, *x.shape[2:])
        if self.per_clip_grads_only:
            y = _ConvInputGradOnly.apply(flat, self.weight, self.bias, self)
        else:
            y = self._conv_forward(flat, self.weight, self.bias)
        return y.view(n, t, *y.shape[1:])


class FrameGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` per frame: statistics over (C/G, H, W) of one frame of one clip."""

    def forward(self, x: Tensor) -> Tensor:
        n, t = x.shape[:2]
        y = F.group_norm(x.reshape(n * t, *x.shape[2:]), self.num_groups, self.weight, self.bias,
                         self.eps)
        return y.view(x.shape)


def _frame_conv_grad_sample(layer: FrameConv2d, activations: list[Tensor], backprops: Tensor):
    """Per-clip gradients of a FrameConv2d: the frames of clip i summed, one clip at a time."""
    x = activations[0].to(backprops.dtype)
    n = x.shape[0]
    ret: dict[Tensor, Tensor] = {}
    if layer.weight.requires_grad:
        gw = backprops.new_empty((n, *layer.weight.shape))
        for i in range(n):
            gw[i] = torch.ops.aten.convolution_backward(
                backprops[i], x[i], layer.weight, None, list(layer.stride), list(layer.padding),
                list(layer.dilation), False, [0, 0], layer.groups, [False, True, False],
            )[1]
        ret[layer.weight] = gw
    if layer.bias is not None and layer.bias.requires_grad:
        ret[layer.bias] = backprops.sum(dim=(1, 3, 4))
    return ret


def _frame_group_norm_grad_sample(layer: FrameGroupNorm, activations: list[Tensor],
                                  backprops: Tensor):
    """Per-clip gradients of FrameGroupNorm's affine parameters (frames summed)."""
    x = activations[0].to(backprops.dtype)
    n, t = x.shape[:2]
    ret: dict[Tensor, Tensor] = {}
    if layer.weight is not None and layer.weight.requires_grad:
        xhat = F.group_norm(x.reshape(n * t, *x.shape[2:]), layer.num_groups, None, None,
                            layer.eps).view(x.shape)
        ret[layer.weight] = (backprops * xhat).sum(dim=(1, 3, 4))
    if layer.bias is not None and layer.bias.requires_grad:
        ret[layer.bias] = backprops.sum(dim=(1, 3, 4))
    return ret


def register_grad_samplers() -> None:
    """Give Opacus the per-clip gradient functions of the frame layers (idempotent).

    Called by whoever wraps the model for DP-SGD rather than at import: importing Opacus
    costs about two seconds, and every process that only runs the encoder (the server,
    the CLI, a SuperNode's ClientApp answering a check-in) would pay it.
    """
    from opacus.grad_sample import register_grad_sampler

    register_grad_sampler(FrameConv2d)(_frame_conv_grad_sample)
    register_grad_sampler(FrameGroupNorm)(_frame_group_norm_grad_sample)


# --------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------


def _groups(channels: int) -> int:
    for g in (8, 4, 2, 1):
        if channels % g == 0:
            return g
    return 1


class TemporalConv(nn.Linear):
    """A temporal convolution of kernel 3 over per-frame features, shared by every cell.

    ``[N, T, S, C] -> [N, T, S, C']``: frame t of cell s sees frames t-1, t, t+1 of that
    cell (zeros past either end). It is an ``nn.Linear`` on the three frames' features
    concatenated. Its type is not one Opacus has a sampler for, so Opacus computes its
    per-clip gradients with its functorch fallback (the layer's own forward, vmapped over
    the clip dimension): every frame and cell of a clip is summed into that clip's
    gradient, and clips never mix (``test_whole_model_per_clip_gradients_match_autograd``).
    """

    def __init__(self, channels: int, out_channels: int):
        super().__init__(3 * channels, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        pad = F.pad(x, (0, 0, 0, 0, 1, 1))  # one zero frame at each end of T
        window = torch.cat([pad[:, :-2], pad[:, 1:-1], pad[:, 2:]], dim=-1)
        return super().forward(window)


class FrameEncoder(nn.Module):
    """Frames and frame differences -> per-frame 4x4 feature grid -> temporal conv ->
    temporal mean, keeping the grid: ``[N, T, 3, H, W] -> [N, 16 * 2w]``."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        w = cfg.width
        stride = cfg.image_size // 16  # 2 at 32x32, 4 at 64x64: stages always see 16x16
        self.stem = FrameConv2d(6, w, kernel_size=stride + 1, stride=stride, padding=stride // 2)
        self.norm0 = FrameGroupNorm(_groups(w), w)
        self.conv1 = FrameConv2d(w, 2 * w, kernel_size=3, stride=2, padding=1)  # -> 8x8
        self.norm1 = FrameGroupNorm(_groups(2 * w), 2 * w)
        self.conv2 = FrameConv2d(2 * w, 2 * w, kernel_size=3, stride=2, padding=1)  # -> 4x4
        self.norm2 = FrameGroupNorm(_groups(2 * w), 2 * w)
        self.temporal = TemporalConv(2 * w, 2 * w)
        self.out_features = GRID * GRID * 2 * w

    def forward(self, x: Tensor) -> Tensor:
        # motion: each frame minus the one before (the first frame's difference is zero)
        diff = torch.cat([torch.zeros_like(x[:, :1]), x[:, 1:] - x[:, :-1]], dim=1)
        h = F.silu(self.norm0(self.stem(torch.cat([x, diff], dim=2))))
        h = F.silu(self.norm1(self.conv1(h)))
        h = F.silu(self.norm2(self.conv2(h)))  # [N, T, C, 4, 4]
        h = h.flatten(3).transpose(2, 3)  # [N, T, 16, C]: one feature vector per cell
        h = h + F.silu(self.temporal(h))
        return h.mean(dim=1).flatten(1)  # temporal mean; the grid stays


def _mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.SiLU(), nn.Linear(d_hidden, d_out))


class VIBModel(nn.Module):
    """Encoder -> (mu, logvar); activity head on z; SSL projector + predictor on z."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = FrameEncoder(cfg)
        f = self.encoder.out_features
        hidden = 4 * cfg.width
        self.posterior_head = _mlp(f, hidden, 2 * cfg.latent_dim)
        with torch.no_grad():
            last = cast(nn.Linear, self.posterior_head[2])
            last.bias[cfg.latent_dim:] = LOGVAR_BOUND * math.atanh(LOGVAR_INIT / LOGVAR_BOUND)
        self.activity_head = nn.Linear(cfg.latent_dim, cfg.num_activities)
        hidden = max(cfg.proj_dim, cfg.latent_dim) * 2
        self.projector = _mlp(cfg.latent_dim, hidden, cfg.proj_dim)
        self.predictor = _mlp(cfg.proj_dim, hidden, cfg.proj_dim)

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x``: float [N, T, 3, H, W] in [0, 1] -> (mu, logvar), each [N, latent_dim]."""
        stats = self.posterior_head(self.encoder(x))
        mu, raw = stats.chunk(2, dim=1)
        logvar = LOGVAR_BOUND * torch.tanh(raw / LOGVAR_BOUND)
        return mu, logvar

    def forward(self, x: Tensor, eps: Tensor | None = None, *, logits: bool = True,
                online: bool = False) -> VIBOutput:
        """Training forward: z = mu + exp(logvar / 2) * eps (eps = 0 gives z = mu)."""
        mu, logvar = self.posterior(x)
        z = mu if eps is None else mu + torch.exp(0.5 * logvar) * eps
        out = VIBOutput(mu=mu, logvar=logvar, z=z)
        if logits:
            out.logits = self.activity_head(z)
        if online:
            out.online = self.predictor(self.projector(z))
        return out

    def target_projection(self, x: Tensor) -> Tensor:
        """What the frozen target network produces for the other view: projector(mu)."""
        mu, _ = self.posterior(x)
        return self.projector(mu)


def build_model(cfg: EncoderConfig, seed: int = 0) -> VIBModel:
    """A freshly initialised model; the same (cfg, seed) gives the same weights."""
    if not isinstance(cfg, EncoderConfig):
        raise ValueError(f"cfg must be an EncoderConfig, got {type(cfg).__name__}")  # noqa: TRY004
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = VIBModel(cfg)
    return model


def frames_to_tensor(x: np.ndarray) -> Tensor:
    """uint8 ``[N, T, H, W, 3]`` -> float32 ``[N, T, 3, H, W]`` in [0, 1]."""
    x = np.asarray(x)
    if x.dtype != np.uint8:
        raise ValueError(f"clips must be uint8, got dtype {x.dtype}")
    if x.ndim != 5 or x.shape[-1] != 3:
        raise ValueError(f"clips must have shape [N, T, H, W, 3], got {x.shape}")
    t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 1, 4, 2, 3)
    return t.to(torch.float32).div_(255.0).contiguous()


def check_clips(cfg: EncoderConfig, x: np.ndarray, name: str = "x") -> None:
    """ValueError naming ``name`` unless ``x`` is uint8 [N, frames, size, size, 3]."""
    shape = getattr(x, "shape", None)
    want = (cfg.frames, cfg.image_size, cfg.image_size, 3)
    if shape is None or len(shape) != 5 or tuple(shape[1:]) != want:
        raise ValueError(
            f"{name} must have shape [N, {cfg.frames}, {cfg.image_size}, {cfg.image_size}, 3] "
            f"to match the EncoderConfig, got {shape}"
        )
    if np.asarray(x).dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 frames, got dtype {np.asarray(x).dtype}")


def _unwrap(model: nn.Module) -> nn.Module:
    # Opacus' GradSampleModule keeps the original model as ._module
    while hasattr(model, "_module") and isinstance(model._module, nn.Module):
        model = model._module
    return model


@torch.no_grad()
def encode(model: VIBModel, x: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Posterior parameters of every clip, in eval mode without gradients.

    Returns ``(mu, logvar)``, each float32 ``[N, latent_dim]``. Deterministic.
    """
    base = cast(VIBModel, _unwrap(model))
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    check_clips(base.cfg, x)
    was_training = base.training
    base.eval()
    try:
        mus, lvs = [], []
        for start in range(0, x.shape[0], batch_size):
            mu, lv = base.posterior(frames_to_tensor(x[start:start + batch_size]))
            mus.append(mu.numpy())
            lvs.append(lv.numpy())
    finally:
        base.train(was_training)
    d = base.cfg.latent_dim
    if not mus:
        return np.zeros((0, d), np.float32), np.zeros((0, d), np.float32)
    return (np.concatenate(mus).astype(np.float32, copy=False),
            np.concatenate(lvs).astype(np.float32, copy=False))


def state_to_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's full state as NumPy arrays (unwrapping an Opacus GradSampleModule)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in _unwrap(model).state_dict().items()}


def load_numpy_state(model: nn.Module, arrays: dict[str, np.ndarray]) -> None:
    """Load ``arrays`` (same keys and shapes as ``state_to_numpy``) into ``model``."""
    base = _unwrap(model)
    own = base.state_dict()
    missing = sorted(set(own) - set(arrays))
    unexpected = sorted(set(arrays) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"model arrays do not match the EncoderConfig: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{'...' if len(unexpected) > 5 else ''}"
        )
    state = {}
    for key, ref in own.items():
        value = np.asarray(arrays[key])
        if tuple(value.shape) != tuple(ref.shape):
            raise ValueError(
                f"model array {key!r} has shape {value.shape}, expected {tuple(ref.shape)}"
            )
        if not np.all(np.isfinite(value)):
            raise ValueError(f"model array {key!r} holds NaN or infinite values")
        state[key] = torch.as_tensor(np.array(value, dtype=np.float32, copy=True))
    base.load_state_dict(state, strict=True)


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in _unwrap(model).parameters())


__all__ = [
    "LOGVAR_BOUND",
    "EncoderConfig",
    "FrameConv2d",
    "FrameEncoder",
    "FrameGroupNorm",
    "TemporalConv",
    "VIBModel",
    "build_model",
    "check_clips",
    "encode",
    "frames_to_tensor",
    "load_numpy_state",
    "num_parameters",
    "state_to_numpy",
]
