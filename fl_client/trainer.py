"""Local training of the VIB encoder on one device's clips: plain or DP-SGD (Opacus).

One call = one local round: a fresh model loaded with the global weights, a fresh
optimizer (Adam) and, with DP-SGD, a fresh Opacus wrapping. Nothing survives between
calls; the caller keeps the device's privacy accounting and composes the returned
``PoissonGaussianEvent`` into it.

DP-SGD here is the Sampled Gaussian Mechanism exactly as accounted:

* Poisson sampling: every step includes each of the N clips independently with
  probability ``q = min(1, batch_size / N)`` (``q = 1`` when N <= batch_size: no
  amplification, and the event says so); ``ceil(N / batch_size)`` steps per epoch;
  an empty draw is still a step (noise only) and is counted;
* per-clip gradients of ``utility + beta * KL`` (+ ``invariance_weight * I`` against a
  frozen device discriminator, when one is given; every term a function of one clip),
  clipped to ``clip_norm`` in L2 over all trained parameters, summed, plus Gaussian noise
  of std ``noise_multiplier * clip_norm``, divided by the expected batch size ``q * N``;
* per-clip gradients come from Opacus hooks (``grad_sample_mode="hooks"``, the default):
  each layer's per-clip gradient from its input and output gradient, clipped and summed
  by Opacus' ``DPOptimizer``. The frame-batched conv/GroupNorm layers bring their own
  per-clip samplers (privacy/encoder.py) that cost about one ordinary weight gradient.
  ``grad_sample_mode="ghost"`` (Opacus fast gradient clipping through
  ``DPLossFastGradientClipping``, which flips our criterion's ``.reduction`` to ``"none"``
  to get per-clip losses, then backpropagates the clipping-weighted sum in a second pass)
  is implemented and tested to give the same update; it is not the default because the
  ghost-norm trick only covers Linear layers here: the conv layers, where the compute
  is, need their per-clip gradients materialised either way, so ghost only adds the
  second backward pass (bench/dp_step.py measures both).

We assemble the objects ``PrivacyEngine.make_private`` would build (grad-sample module,
DP optimizer, DP loss) ourselves, with the same Opacus classes, because ``make_private``
derives the sampling rate as ``1 / len(data_loader) = 1 / ceil(N / B)`` (not ``B / N``
when B does not divide N) and draws Poisson batches from an unseeded generator; here
``q`` is exactly the rate the sampler uses and every random draw is seeded.

Seeding: everything random (Poisson draws / shuffles, reparameterisation noise,
augmentations, the DP noise) comes from generators derived from ``cfg.seed``
(``derive_seeds``), so the same inputs + seed give the same arrays. NOTE: whoever knows
the seed can regenerate the DP noise; in a deployment the seed must contain a secret the
server does not know (see docs/encoder.md).
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from privacy.dp_event import PoissonGaussianEvent
from privacy.encoder import (
    EncoderConfig,
    FrameConv2d,
    VIBModel,
    build_model,
    check_clips,
    frames_to_tensor,
    load_numpy_state,
    register_grad_samplers,
    state_to_numpy,
)
from privacy.checks import is_int
from privacy.identity_adversary import (
    DEFAULT_INVARIANCE_LOSS,
    Discriminator,
    fit_discriminator,
    stacked,
)
from privacy.vib import (
    LN2,
    VIBCriterion,
    VIBTarget,
    augment_clips,
    augment_labelled_clips,
    uses_ssl,
    uses_supervised,
)
from privacy.wire.train import TrainConfig, sample_rate, steps_per_epoch, validate_train_config

GRAD_SAMPLE_MODES = ("ghost", "hooks", "functorch")  # functorch: Opacus' generic vmap path
DEFAULT_GRAD_SAMPLE_MODE = "hooks"  # see the module docstring and bench/dp_step.py
SEED_STREAMS = ("sampling", "reparam", "augment", "noise")


@dataclass(frozen=True)
class TrainResult:
    arrays: dict[str, np.ndarray]  # the trained model's full state (build_model's keys)
    num_examples: int
    metrics: dict[str, float]  # loss, kl_bits (mean per clip), utility_loss, steps, train_seconds, ...
    dp_event: PoissonGaussianEvent | None  # None when dp_sgd is False


def derive_seeds(seed: int) -> dict[str, int]:
    """Independent 63-bit seeds for each random stream, derived from ``seed``."""
    state = np.random.SeedSequence([int(seed), 0x6D7372]).generate_state(len(SEED_STREAMS), np.uint64)
    return {name: int(s) >> 1 for name, s in zip(SEED_STREAMS, state)}


def _generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _default_optimizer(params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr)


def trained_parameter_names(model: VIBModel, utility: str) -> list[str]:
    """Parameters a round trains: the heads the utility does not use stay frozen."""
    skip: tuple[str, ...] = ()
    if not uses_ssl(utility):
        skip += ("projector.", "predictor.")
    if not uses_supervised(utility):
        skip += ("activity_head.",)
    return [n for n, _ in model.named_parameters() if not n.startswith(skip)]


# --------------------------------------------------------------------------------------
# Steppers: one optimisation step on a batch; shared by the trainer and bench/dp_step.py
# --------------------------------------------------------------------------------------


@dataclass
class Batch:
    view: torch.Tensor  # [n, T, 3, H, W] input of the online network
    eps: torch.Tensor  # [n, D] reparameterisation noise
    target: VIBTarget


class PlainStepper:
    """Non-private step: mean loss, backward, optimizer step."""

    mode = "plain"

    def __init__(self, model: VIBModel, optimizer: torch.optim.Optimizer, criterion: VIBCriterion):
        self.model, self.optimizer, self.criterion = model, optimizer, criterion
        self.sup, self.ssl = uses_supervised(criterion.utility), uses_ssl(criterion.utility)

    def step(self, batch: Batch) -> dict[str, torch.Tensor]:
        self.optimizer.zero_grad(set_to_none=True)
        out = self.model(batch.view, batch.eps, logits=self.sup, online=self.ssl)
        loss = self.criterion(out, batch.target)
        loss.backward()
        self.optimizer.step()
        return self.criterion.last_terms

    def empty_step(self) -> None:  # nothing to learn from, nothing released
        return None


class DPStepper:
    """DP-SGD step with Opacus (ghost clipping or per-sample-gradient hooks)."""

    def __init__(self, model: VIBModel, optimizer: torch.optim.Optimizer, criterion: VIBCriterion, *,
                 noise_multiplier: float, clip_norm: float, expected_batch_size: float,
                 noise_generator: torch.Generator, grad_sample_mode: str = DEFAULT_GRAD_SAMPLE_MODE):
        if grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise ValueError(f"grad_sample_mode must be one of {GRAD_SAMPLE_MODES}, got {grad_sample_mode!r}")
        if criterion.reduction != "mean":
            raise ValueError("the DP criterion must start with reduction='mean'")
        # Opacus is imported here, on the first DP step: plain training never pays for it.
        from opacus.grad_sample import (
            GradSampleModule,
            GradSampleModuleFastGradientClipping,
        )
        from opacus.optimizers import (
            DPOptimizer,
            DPOptimizerFastGradientClipping,
        )
        from opacus.utils.fast_gradient_clipping_utils import (
            DPLossFastGradientClipping,
        )
        from opacus.validators import ModuleValidator

        register_grad_samplers()
        ModuleValidator.validate(model, strict=True)  # training mode, no BatchNorm etc.
        self.mode = grad_sample_mode
        self._frame_convs: list[FrameConv2d] = []
        self.criterion = criterion
        self.sup, self.ssl = uses_supervised(criterion.utility), uses_ssl(criterion.utility)
        kw: dict[str, Any] = {
            "noise_multiplier": noise_multiplier, "max_grad_norm": clip_norm,
            "expected_batch_size": expected_batch_size, "loss_reduction": "mean",
            "generator": noise_generator, "secure_mode": False,
        }
        if grad_sample_mode == "ghost":
            self.module = GradSampleModuleFastGradientClipping(
                model, batch_first=True, loss_reduction="mean", strict=True,
                max_grad_norm=clip_norm, use_ghost_clipping=True)
            self.optimizer = DPOptimizerFastGradientClipping(optimizer, **kw)
            self.dp_loss = DPLossFastGradientClipping(self.module, self.optimizer, criterion, "mean")
        else:
            self.module = GradSampleModule(model, batch_first=True, loss_reduction="mean", strict=True,
                                           force_functorch=grad_sample_mode == "functorch")
            self.module.forbid_grad_accumulation()
            self.optimizer = DPOptimizer(optimizer, **kw)
            self.dp_loss = criterion
            if grad_sample_mode == "hooks":  # last: nothing below can fail and leave it set
                self._frame_convs = [m for m in model.modules() if isinstance(m, FrameConv2d)]
                for m in self._frame_convs:
                    m.per_clip_grads_only = True
        # Opacus' optimizers divide by this; it must be the *expected* Poisson batch size.
        self.optimizer.expected_batch_size = expected_batch_size

    def step(self, batch: Batch) -> dict[str, torch.Tensor]:
        self.optimizer.zero_grad(set_to_none=True)
        out = self.module(batch.view, batch.eps, logits=self.sup, online=self.ssl)
        loss = self.dp_loss(out, batch.target)
        with warnings.catch_warnings():
            # the stem's input needs no gradient; PyTorch says so for every full backward hook
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            loss.backward()  # ghost: both passes (norms, then clipping-weighted loss)
        self.optimizer.step()  # (hooks: clip) + noise + /expected_batch_size + Adam
        return self.criterion.last_terms

    def empty_step(self) -> None:
        """A Poisson draw with no clip: the release is the noise alone (still a step)."""
        self.optimizer.zero_grad(set_to_none=True)
        for p in self.optimizer.params:
            if self.mode == "ghost":
                p.grad = torch.zeros_like(p)
            else:
                p.grad_sample = p.new_zeros((0, *p.shape))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def close(self) -> None:
        """Remove Opacus' hooks and give the frame convs their batch gradients back (plain
        training of the same model after a DP round must update them)."""
        try:
            self.module.remove_hooks()
        finally:
            for m in self._frame_convs:
                m.per_clip_grads_only = False


def make_batch(x: torch.Tensor, y: torch.Tensor | None, *, latent_dim: int, utility: str,
               target_model: VIBModel | None, eps_gen: torch.Generator,
               aug_gen: torch.Generator, devices: torch.Tensor | None = None) -> Batch:
    """Inputs of one step: online view, reparameterisation noise, targets (all per clip)."""
    n = x.shape[0]
    target = VIBTarget(labels=y if uses_supervised(utility) else None, devices=devices)
    if uses_ssl(utility):
        view = augment_clips(x, aug_gen)
        other = augment_clips(x, aug_gen)
        assert target_model is not None
        with torch.no_grad():
            target.target_proj = target_model.target_projection(other)
    else:
        view = augment_labelled_clips(x, aug_gen)
    eps = torch.randn(n, latent_dim, generator=eps_gen)
    return Batch(view=view, eps=eps, target=target)


# --------------------------------------------------------------------------------------
# The local round
# --------------------------------------------------------------------------------------


def _check_labels(y: np.ndarray, n: int, num_activities: int) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"y_activity must have shape [{n}] (one label per clip), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y_activity must be integer labels, got dtype {y.dtype}")
    if n and (y.min() < 0 or y.max() >= num_activities):
        raise ValueError(f"y_activity must be in 0..{num_activities - 1}, got {y.min()}..{y.max()}")
    return y.astype(np.int64)


def _check_adversary(model_cfg: EncoderConfig, cfg: TrainConfig,
                     discriminator: Discriminator | None) -> Discriminator | None:
    """The discriminator the round uses: None when the invariance weight is 0."""
    if cfg.invariance_weight == 0:
        return None
    if not isinstance(discriminator, Discriminator):
        raise ValueError("invariance_weight > 0 needs a fitted device discriminator; got "
                         f"{type(discriminator).__name__}")
    if discriminator.latent_dim != model_cfg.latent_dim:
        raise ValueError(f"the device discriminator reads z of dimension {discriminator.latent_dim}, "
                         f"the encoder's latent_dim is {model_cfg.latent_dim}")
    return discriminator


def _check_devices(devices: np.ndarray | None, n: int, k: int) -> np.ndarray:
    d = np.asarray(devices) if devices is not None else None
    if d is None or d.shape != (n,) or not np.issubdtype(d.dtype, np.integer):
        raise ValueError(f"the reversal invariance loss needs devices: one integer device index per clip ({n})")
    if n and (d.min() < 0 or d.max() >= k):
        raise ValueError(f"devices must be in 0..{k - 1} (the discriminator's classes), got {d.min()}..{d.max()}")
    return d.astype(np.int64)


def train_local(model_cfg: EncoderConfig, global_arrays: dict[str, np.ndarray], x: np.ndarray,
                y_activity: np.ndarray, cfg: TrainConfig,
                discriminator: Discriminator | None = None) -> TrainResult:
    """One local round starting from ``global_arrays`` (see module docstring); with
    ``cfg.invariance_weight > 0``, against the server's frozen device ``discriminator``
    (the label-free ``"entropy"`` loss: a device needs no index among the server's classes)."""
    return run_local_round(model_cfg, global_arrays, x, y_activity, cfg, discriminator=discriminator)


def run_local_round(model_cfg: EncoderConfig, global_arrays: dict[str, np.ndarray], x: np.ndarray,
                    y_activity: np.ndarray, cfg: TrainConfig, *,
                    grad_sample_mode: str = DEFAULT_GRAD_SAMPLE_MODE,
                    optimizer_factory: Callable[[list[nn.Parameter], float], torch.optim.Optimizer]
                    | None = None,
                    probe: Callable[[int, torch.Tensor, Batch], None] | None = None,
                    discriminator: Discriminator | None = None,
                    invariance_loss: str = DEFAULT_INVARIANCE_LOSS,
                    devices: np.ndarray | None = None) -> TrainResult:
    """``train_local`` with test/bench hooks: the DP mode, the base optimizer, a probe
    called as ``probe(step, indices, batch)`` before every non-empty step; and the frozen
    device ``discriminator`` the ``cfg.invariance_weight`` term is taken against (required
    when the weight is > 0; ``devices`` [N], each clip's device index, only for the
    ``"reversal"`` loss)."""
    t0 = time.perf_counter()
    if not isinstance(model_cfg, EncoderConfig):
        raise ValueError(f"model_cfg must be an EncoderConfig, got {type(model_cfg).__name__}")  # noqa: TRY004
    if not isinstance(cfg, TrainConfig):
        raise ValueError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")  # noqa: TRY004
    validate_train_config(cfg)
    check_clips(model_cfg, x, "x")
    n = int(x.shape[0])
    if n < 1:
        raise ValueError("x must hold at least one clip")
    y = _check_labels(y_activity, n, model_cfg.num_activities)
    adversary = _check_adversary(model_cfg, cfg, discriminator)
    dt = None
    if adversary is not None and invariance_loss == "reversal":
        dt = torch.from_numpy(_check_devices(devices, n, adversary.num_classes))

    seeds = derive_seeds(cfg.seed)
    sampling_gen = _generator(seeds["sampling"])
    eps_gen = _generator(seeds["reparam"])
    aug_gen = _generator(seeds["augment"])

    model = build_model(model_cfg)
    load_numpy_state(model, global_arrays)
    model.train()
    target_model = None
    if uses_ssl(cfg.utility):  # frozen copy of the received weights for the whole round
        target_model = copy.deepcopy(model).eval().requires_grad_(False)
    trained = set(trained_parameter_names(model, cfg.utility))
    for name, p in model.named_parameters():
        p.requires_grad_(name in trained)
    params = [p for name, p in model.named_parameters() if name in trained]
    optimizer = (optimizer_factory or _default_optimizer)(params, float(cfg.lr))
    criterion = VIBCriterion(cfg.beta, cfg.utility, reduction="mean", adversary=adversary,
                             invariance_weight=cfg.invariance_weight, invariance_loss=invariance_loss)

    xt = frames_to_tensor(x)
    yt = torch.from_numpy(y)
    per_epoch = steps_per_epoch(n, cfg.batch_size)
    q = sample_rate(n, cfg.batch_size)
    if cfg.dp_sgd:
        stepper: PlainStepper | DPStepper = DPStepper(
            model, optimizer, criterion, noise_multiplier=float(cfg.noise_multiplier),
            clip_norm=float(cfg.clip_norm), expected_batch_size=q * n,
            noise_generator=_generator(seeds["noise"]), grad_sample_mode=grad_sample_mode)
    else:
        stepper = PlainStepper(model, optimizer, criterion)

    sums = {"loss": 0.0, "kl": 0.0, "utility": 0.0}
    if adversary is not None:
        sums["invariance"] = 0.0
    seen = 0
    steps = 0
    empty = 0
    try:
        for _ in range(cfg.epochs):
            if cfg.dp_sgd:
                batches = ((torch.rand(n, generator=sampling_gen) < q).nonzero().flatten()
                           for _ in range(per_epoch))
            else:
                perm = torch.randperm(n, generator=sampling_gen)
                batches = (perm[i:i + cfg.batch_size] for i in range(0, n, cfg.batch_size))
            for idx in batches:
                if idx.numel() == 0:
                    stepper.empty_step()
                    steps += 1
                    empty += 1
                    continue
                batch = make_batch(xt[idx], yt[idx], latent_dim=model_cfg.latent_dim,
                                   utility=cfg.utility, target_model=target_model,
                                   eps_gen=eps_gen, aug_gen=aug_gen,
                                   devices=None if dt is None else dt[idx])
                if probe is not None:
                    probe(steps, idx, batch)
                terms = stepper.step(batch)
                steps += 1
                seen += idx.numel()
                for key in sums:
                    sums[key] += float(terms[key].sum())
    finally:
        if isinstance(stepper, DPStepper):
            stepper.close()

    arrays = state_to_numpy(model)
    denom = max(seen, 1)
    metrics = {
        "loss": sums["loss"] / denom,
        "kl_bits": sums["kl"] / denom / LN2,
        "utility_loss": sums["utility"] / denom,
        **({"invariance_loss": sums["invariance"] / denom} if adversary is not None else {}),
        "steps": float(steps),
        "examples_seen": float(seen),
        "train_seconds": time.perf_counter() - t0,
    }
    event = None
    if cfg.dp_sgd:
        metrics["empty_steps"] = float(empty)
        metrics["sample_rate"] = q
        event = PoissonGaussianEvent(sample_rate=q, noise_multiplier=float(cfg.noise_multiplier),
                                     steps=steps)
    return TrainResult(arrays=arrays, num_examples=n, metrics=metrics, dp_event=event)


# --------------------------------------------------------------------------------------
# Central alternating training (the evaluation's stand-in for the federated protocol)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InvariantResult:
    arrays: dict[str, np.ndarray]  # the final model's full state
    discriminators: tuple[Discriminator, ...]  # one per stage, in the order fitted
    #: the discriminator's training accuracy on the released z at each refit: how well the
    #: device id can still be read from the encoder it was fitted on
    device_accuracy: tuple[float, ...]


def released_z(model_cfg: EncoderConfig, arrays: dict[str, np.ndarray], x: np.ndarray,
               seed: int) -> np.ndarray:
    """What the encoder releases for each clip, ``z ~ q(z|x)`` (seeded sampling noise)."""
    from privacy.encoder import encode

    model = build_model(model_cfg)
    load_numpy_state(model, arrays)
    mu, logvar = encode(model, x)
    eps = np.random.default_rng(seed).standard_normal(mu.shape).astype(np.float32)
    return mu + np.exp(0.5 * logvar) * eps


def train_invariant(model_cfg: EncoderConfig, init_arrays: dict[str, np.ndarray], x: np.ndarray,
                    y_activity: np.ndarray, devices: np.ndarray, cfg: TrainConfig, *,
                    stages: int | None = None, hidden: int = 0,
                    invariance_loss: str = DEFAULT_INVARIANCE_LOSS, memory: int = 1) -> InvariantResult:
    """Alternate encoder training and device-discriminator fits, centrally.

    Mirrors the federated protocol, where the server refits the discriminator on the
    representations it collects between rounds: the ``cfg.epochs`` epochs are split into
    ``stages + 1`` chunks; the first trains without the invariance term, then ``stages``
    times: fit a discriminator on the current encoder's released z of every clip, tagged
    with ``devices`` (each clip's device index; no other label), and train the next chunk
    with ``cfg.invariance_weight`` against it (frozen). DP-SGD, if ``cfg.dp_sgd``, applies
    per chunk exactly as in a device round (the events compose; not returned here).
    ``stages`` defaults to a refit every 2 epochs (``epochs // 2 - 1``, at least 1): the
    measured schedule (scripts/invariance_probe.py); with few refits the encoder learns to
    dodge one stale discriminator. ``memory`` > 1 (``"logit-spread"`` only): train against the last ``memory``
    discriminators at once (`privacy.identity_adversary.stacked`).
    """
    if not is_int(memory) or memory < 1 or (memory > 1 and invariance_loss != "logit-spread"):
        raise ValueError(f"memory must be an int >= 1, and 1 unless the loss is logit-spread; got {memory!r}")
    if stages is None:
        stages = max(1, cfg.epochs // 2 - 1)
    if not is_int(stages) or stages < 1:
        raise ValueError(f"stages must be an int >= 1, got {stages!r}")
    if cfg.epochs < stages + 1:
        raise ValueError(f"epochs ({cfg.epochs}) must be >= stages + 1 ({stages + 1})")
    d = np.asarray(devices)
    if d.shape != (len(x),) or not np.issubdtype(d.dtype, np.integer):
        raise ValueError(f"devices must be one integer index per clip ({len(x)}), got {d.dtype} {d.shape}")
    chunk = cfg.epochs // (stages + 1)
    first = cfg.epochs - chunk * stages
    arrays = train_local(model_cfg, init_arrays, x, y_activity,
                         replace(cfg, epochs=first, invariance_weight=0.0)).arrays
    fitted: list[Discriminator] = []
    accuracy: list[float] = []
    for stage in range(stages):
        z = released_z(model_cfg, arrays, x, seed=cfg.seed * 7919 + stage)
        disc = fit_discriminator(z, d, seed=cfg.seed + stage, hidden=hidden)
        accuracy.append(float((disc.predict_proba(z).argmax(-1) == d).mean()))
        fitted.append(disc)
        arrays = run_local_round(model_cfg, arrays, x, y_activity,
                                 replace(cfg, epochs=chunk, seed=cfg.seed + stage + 1),
                                 discriminator=stacked(fitted[-memory:]) if memory > 1 else disc,
                                 invariance_loss=invariance_loss, devices=d).arrays
    return InvariantResult(arrays, tuple(fitted), tuple(accuracy))
