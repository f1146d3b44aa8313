"""Local trainer: plain and DP-SGD (fl_client/trainer.py), and the DP event it reports."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from fl_client.trainer import (
    TrainConfig,
    derive_seeds,
    run_local_round,
    train_local,
    trained_parameter_names,
)
from privacy.dp_event import PoissonGaussianEvent
from privacy.encoder import EncoderConfig, build_model, load_numpy_state, state_to_numpy
from privacy.vib import VIBCriterion, VIBOutput, VIBTarget

TINY = EncoderConfig(image_size=32, frames=2, latent_dim=4, width=8, num_activities=3, proj_dim=4)
MODES = ("ghost", "hooks")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fake_clips(n: int, cfg: EncoderConfig = TINY, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Clips whose activity is learnable: label k brightens colour channel k, plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, cfg.num_activities, n)
    x = rng.normal(90, 25, (n, cfg.frames, cfg.image_size, cfg.image_size, 3))
    for i in range(n):
        x[i, ..., y[i] % 3] += 90
    return np.clip(x, 0, 255).astype(np.uint8), y


def global_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    return state_to_numpy(build_model(TINY, seed=seed))


def sgd(params, lr):
    return torch.optim.SGD(params, lr=lr)


# --------------------------------------------------------------------------------------
# DP-SGD: the update is the clipped per-clip gradient sum plus Opacus' noise
# --------------------------------------------------------------------------------------


def _hand_update(start, cfg, batch, utility):
    """Per-clip gradients by a per-clip loop, clipped, summed: (clipped sum, unclipped sum,
    per-clip norms, trained parameter names)."""
    model = build_model(TINY)
    load_numpy_state(model, start)
    model.train()
    names = trained_parameter_names(model, utility)
    params = dict(model.named_parameters())
    crit = VIBCriterion(cfg.beta, utility, reduction="sum")
    sup, ssl = utility in ("supervised", "both"), utility in ("ssl", "both")
    clipped = {n: torch.zeros_like(params[n]) for n in names}
    raw = {n: torch.zeros_like(params[n]) for n in names}
    norms = []
    for i in range(batch.view.shape[0]):
        out: VIBOutput = model(batch.view[i:i + 1], batch.eps[i:i + 1], logits=sup, online=ssl)
        t = batch.target
        target = VIBTarget(labels=None if t.labels is None else t.labels[i:i + 1],
                           target_proj=None if t.target_proj is None else t.target_proj[i:i + 1])
        grads = torch.autograd.grad(crit(out, target), [params[n] for n in names])
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads)).item()
        factor = min(1.0, cfg.clip_norm / (norm + 1e-6))
        norms.append(norm)
        for n, g in zip(names, grads):
            clipped[n] += factor * g
            raw[n] += g
    return clipped, raw, norms, names


def _noise_like_opacus(names, start, sigma, clip, seed):
    """The noise Opacus' optimizer draws: N(0, (sigma*C)^2) per parameter, in optimizer
    order, from the trainer's seeded noise generator."""
    g = torch.Generator().manual_seed(derive_seeds(seed)["noise"])
    return {n: torch.normal(0.0, sigma * clip, size=start[n].shape, generator=g, dtype=torch.float32)
            for n in names}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("utility", ["supervised", "both"])
def test_dp_update_is_clipped_per_clip_sum_plus_noise(mode, utility):
    n = 6  # N == batch_size: q = 1, the Poisson draw takes every clip: a known batch
    x, y = fake_clips(n)
    start = global_arrays()
    cfg = TrainConfig(epochs=1, batch_size=n, lr=0.5, beta=0.05, utility=utility, dp_sgd=True,
                      noise_multiplier=0.8, clip_norm=0.05, seed=11)
    seen = []
    res = run_local_round(TINY, start, x, y, cfg, grad_sample_mode=mode, optimizer_factory=sgd,
                          probe=lambda step, idx, batch: seen.append((idx.clone(), batch)))
    assert len(seen) == 1 and seen[0][0].tolist() == list(range(n))
    clipped, raw, norms, names = _hand_update(start, cfg, seen[0][1], utility)
    # clipping must bind for this check to mean anything
    assert max(norms) > 2 * cfg.clip_norm
    noise = _noise_like_opacus(names, start, cfg.noise_multiplier, cfg.clip_norm, cfg.seed)
    expected_batch = n  # q * N
    total = 0
    for name in names:
        want = start[name] - cfg.lr * (clipped[name].numpy() + noise[name].numpy()) / expected_batch
        got = res.arrays[name]
        assert np.allclose(got, want, atol=2e-6, rtol=1e-4), name
        unclipped = start[name] - cfg.lr * (raw[name].numpy() + noise[name].numpy()) / expected_batch
        total += float(np.abs(unclipped - got).max())
    assert total > 1e-3  # the unclipped update is measurably different
    for name in set(start) - set(names):  # heads the utility does not use stay put
        assert np.array_equal(res.arrays[name], start[name]), name
    assert res.dp_event == PoissonGaussianEvent(sample_rate=1.0, noise_multiplier=0.8, steps=1)


@pytest.mark.parametrize("mode", MODES)
def test_dp_noise_has_std_sigma_c_over_batch(mode):
    n = 8
    x, y = fake_clips(n, seed=3)
    start = global_arrays(seed=1)
    sigma, clip = 3.0, 0.2
    cfg = TrainConfig(epochs=1, batch_size=n, lr=1.0, dp_sgd=True, noise_multiplier=sigma,
                      clip_norm=clip, seed=5)
    seen = []
    res = run_local_round(TINY, start, x, y, cfg, grad_sample_mode=mode, optimizer_factory=sgd,
                          probe=lambda step, idx, batch: seen.append(batch))
    clipped, _, _, names = _hand_update(start, cfg, seen[0], "supervised")
    residual = np.concatenate([
        ((res.arrays[k] - start[k]) / -cfg.lr - clipped[k].numpy() / n).ravel() for k in names])
    assert residual.size > 3000
    assert np.std(residual) == pytest.approx(sigma * clip / n, rel=0.06)
    assert abs(np.mean(residual)) < 4 * sigma * clip / n / math.sqrt(residual.size)
    # a bigger sigma really means more noise: same seed, sigma x 10 -> residual x 10
    cfg10 = dataclasses.replace(cfg, noise_multiplier=10 * sigma)
    res10 = run_local_round(TINY, start, x, y, cfg10, grad_sample_mode=mode, optimizer_factory=sgd)
    residual10 = np.concatenate([
        ((res10.arrays[k] - start[k]) / -cfg.lr - clipped[k].numpy() / n).ravel() for k in names])
    assert np.allclose(residual10, 10 * residual, atol=1e-5)


def test_ghost_and_hooks_agree():
    x, y = fake_clips(10, seed=4)
    start = global_arrays()
    cfg = TrainConfig(epochs=2, batch_size=4, utility="both", dp_sgd=True, seed=2, clip_norm=0.1)
    a = run_local_round(TINY, start, x, y, cfg, grad_sample_mode="ghost")
    b = run_local_round(TINY, start, x, y, cfg, grad_sample_mode="hooks")
    assert a.dp_event == b.dp_event
    for k in a.arrays:
        assert np.allclose(a.arrays[k], b.arrays[k], atol=1e-5), k


def test_hooks_mode_skips_batch_conv_grads_only_while_the_stepper_is_open():
    """In hooks mode the frame convs compute no batch weight gradient (DP-SGD uses the
    per-clip sampler's only); after ``close`` plain training of the same model updates
    them again."""
    from fl_client.trainer import DPStepper, make_batch
    from privacy.encoder import FrameConv2d, frames_to_tensor

    model = build_model(TINY, seed=0).train()
    convs = [m for m in model.modules() if isinstance(m, FrameConv2d)]
    x, y = fake_clips(4, seed=1)
    batch = make_batch(frames_to_tensor(x), torch.as_tensor(y), latent_dim=TINY.latent_dim,
                       utility="supervised", target_model=None,
                       eps_gen=torch.Generator().manual_seed(0),
                       aug_gen=torch.Generator().manual_seed(0))
    params = [p for n, p in model.named_parameters() if not n.startswith(("projector", "predictor"))]
    stepper = DPStepper(model, torch.optim.SGD(params, lr=0.1), VIBCriterion(0.01, "supervised"),
                        noise_multiplier=1.0, clip_norm=1.0, expected_batch_size=4.0,
                        noise_generator=torch.Generator().manual_seed(0))
    try:
        assert all(m.per_clip_grads_only for m in convs)
        before = convs[0].weight.detach().clone()
        stepper.step(batch)
        assert not torch.equal(before, convs[0].weight)  # clipped + noised per-clip sum applied
    finally:
        stepper.close()
    assert not any(m.per_clip_grads_only for m in convs)
    model.zero_grad(set_to_none=True)
    out = model(batch.view, batch.eps)
    torch.nn.functional.cross_entropy(out.logits, torch.as_tensor(y)).backward()
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in convs)


# --------------------------------------------------------------------------------------
# The reported DP event, keys, determinism
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,batch,epochs,q,steps", [
    (12, 4, 2, 4 / 12, 6),
    (10, 4, 1, 0.4, 3),  # B does not divide N: q is still exactly B/N, ceil(N/B) steps
    (5, 8, 3, 1.0, 3),  # N <= batch: q = 1, no amplification, reported as such
])
def test_dp_event_and_keys(n, batch, epochs, q, steps):
    x, y = fake_clips(n)
    start = global_arrays()
    cfg = TrainConfig(epochs=epochs, batch_size=batch, dp_sgd=True, noise_multiplier=1.3)
    res = train_local(TINY, start, x, y, cfg)
    assert res.dp_event == PoissonGaussianEvent(sample_rate=q, noise_multiplier=1.3, steps=steps)
    assert res.metrics["steps"] == steps
    assert res.num_examples == n
    assert res.arrays.keys() == start.keys()
    assert all(res.arrays[k].shape == start[k].shape and res.arrays[k].dtype == np.float32
               for k in start)
    for key in ("loss", "kl_bits", "utility_loss", "steps", "train_seconds"):
        assert math.isfinite(res.metrics[key])


def test_empty_poisson_draws_are_noise_only_steps():
    n = 30
    x, y = fake_clips(n)
    start = global_arrays()
    cfg = TrainConfig(epochs=1, batch_size=1, dp_sgd=True, seed=0)  # q = 1/30
    res = run_local_round(TINY, start, x, y, cfg, grad_sample_mode="ghost", optimizer_factory=sgd)
    assert res.metrics["empty_steps"] > 0  # P(no empty among 30 draws) ~ 1e-6
    assert res.dp_event.steps == 30 and res.dp_event.sample_rate == pytest.approx(1 / 30)
    assert all(np.all(np.isfinite(v)) for v in res.arrays.values())
    hooks = run_local_round(TINY, start, x, y, cfg, grad_sample_mode="hooks", optimizer_factory=sgd)
    for k in res.arrays:
        assert np.allclose(res.arrays[k], hooks.arrays[k], atol=1e-5), k


@pytest.mark.parametrize("dp", [False, True])
def test_same_seed_same_arrays(dp):
    x, y = fake_clips(9)
    start = global_arrays()
    cfg = TrainConfig(epochs=1, batch_size=4, utility="both", dp_sgd=dp, seed=7)
    a = train_local(TINY, start, x, y, cfg)
    b = train_local(TINY, start, x, y, cfg)
    c = train_local(TINY, start, x, y, dataclasses.replace(cfg, seed=8))
    assert all(np.array_equal(a.arrays[k], b.arrays[k]) for k in a.arrays)
    assert any(not np.array_equal(a.arrays[k], c.arrays[k]) for k in a.arrays)
    assert (a.dp_event is None) == (not dp)


def test_plain_training_reduces_the_loss():
    x, y = fake_clips(32, seed=1)
    start = global_arrays()

    def loss_of(arrays):
        model = build_model(TINY)
        load_numpy_state(model, arrays)
        model.eval()
        from privacy.encoder import frames_to_tensor

        with torch.no_grad():
            out = model(frames_to_tensor(x), None)
            crit = VIBCriterion(0.01, "supervised")
            acc = float((out.logits.argmax(1).numpy() == y).mean())
            return float(crit(out, VIBTarget(labels=torch.from_numpy(y)))), acc

    before, acc_before = loss_of(start)
    res = train_local(TINY, start, x, y, TrainConfig(epochs=12, batch_size=8, lr=1e-2))
    after, acc_after = loss_of(res.arrays)
    assert after < 0.5 * before
    assert acc_after >= 0.9 > acc_before
    assert res.metrics["steps"] == 12 * 4


def test_ssl_round_runs_and_moves_the_predictor():
    x, y = fake_clips(8)
    start = global_arrays()
    res = train_local(TINY, start, x, y, TrainConfig(utility="ssl", batch_size=4))
    assert not np.array_equal(res.arrays["predictor.0.weight"], start["predictor.0.weight"])
    assert np.array_equal(res.arrays["activity_head.weight"], start["activity_head.weight"])
    assert 0.0 <= res.metrics["utility_loss"] <= 4.0


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("field,value", [
    ("lr", -1e-3), ("lr", 0.0), ("epochs", 0), ("batch_size", 0), ("beta", -0.1),
    ("utility", "contrastive"), ("seed", -1), ("lr", float("nan")),
])
def test_bad_train_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_dp_needs_positive_noise_and_clip():
    with pytest.raises(ValueError, match="noise_multiplier"):
        TrainConfig(dp_sgd=True, noise_multiplier=0.0)
    with pytest.raises(ValueError, match="clip_norm"):
        TrainConfig(dp_sgd=True, clip_norm=-1.0)
    TrainConfig(dp_sgd=False, noise_multiplier=0.0)  # irrelevant without DP


def test_data_validation_names_the_field():
    x, y = fake_clips(4)
    start = global_arrays()
    with pytest.raises(ValueError, match="x must have shape"):
        train_local(TINY, start, x[:, :1], y, TrainConfig())
    with pytest.raises(ValueError, match="x must have shape"):
        train_local(dataclasses.replace(TINY, image_size=64), start, x, y, TrainConfig())
    with pytest.raises(ValueError, match="y_activity"):
        train_local(TINY, start, x, y[:3], TrainConfig())
    with pytest.raises(ValueError, match="y_activity"):
        train_local(TINY, start, x, y + 10, TrainConfig())
    bad = dict(start)
    bad.pop("encoder.stem.weight")
    with pytest.raises(ValueError, match="missing"):
        train_local(TINY, bad, x, y, TrainConfig())


def test_dp_event_validation_and_dict_round_trip():
    ev = PoissonGaussianEvent(sample_rate=0.25, noise_multiplier=1.1, steps=40)
    assert PoissonGaussianEvent.from_dict(ev.to_dict()) == ev
    assert ev.to_dict() == {"sample_rate": 0.25, "noise_multiplier": 1.1, "steps": 40}
    with pytest.raises(ValueError, match="sample_rate"):
        PoissonGaussianEvent(sample_rate=0.0, noise_multiplier=1.0, steps=1)
    with pytest.raises(ValueError, match="sample_rate"):
        PoissonGaussianEvent(sample_rate=1.5, noise_multiplier=1.0, steps=1)
    with pytest.raises(ValueError, match="noise_multiplier"):
        PoissonGaussianEvent(sample_rate=0.5, noise_multiplier=0.0, steps=1)
    with pytest.raises(ValueError, match="steps"):
        PoissonGaussianEvent(sample_rate=0.5, noise_multiplier=1.0, steps=-1)
    with pytest.raises(ValueError, match="steps"):
        PoissonGaussianEvent(sample_rate=0.5, noise_multiplier=1.0, steps=2.5)
    with pytest.raises(ValueError, match="missing"):
        PoissonGaussianEvent.from_dict({"sample_rate": 0.5, "steps": 1})
    with pytest.raises(ValueError, match="unknown"):
        PoissonGaussianEvent.from_dict({**ev.to_dict(), "delta": 1e-5})


def test_opacus_and_dp_accounting_load_only_when_dp_is_used():
    """A fresh process: the ClientApp and the CLI import neither Opacus nor dp_accounting
    (each costs 1-2 s in every ClientApp process a SuperNode spawns); the first DP-SGD
    stepper loads Opacus with fedmsr's per-clip samplers registered, and the first epsilon
    loads dp_accounting."""
    import subprocess
    import sys

    script = """
import sys, torch
import fl_client.client_app, fl_server.cli
assert not {"opacus", "dp_accounting"} & set(sys.modules), sorted(sys.modules)
from fl_client.trainer import DPStepper
from privacy.encoder import EncoderConfig, FrameConv2d, FrameGroupNorm, build_model
from privacy.vib import VIBCriterion
model = build_model(EncoderConfig(image_size=32, frames=2, latent_dim=4), seed=0).train()
DPStepper(model, torch.optim.SGD(model.parameters(), lr=0.1), VIBCriterion(0.01, "supervised"),
          noise_multiplier=1.0, clip_norm=1.0, expected_batch_size=4.0,
          noise_generator=torch.Generator().manual_seed(0), grad_sample_mode="hooks")
from opacus.grad_sample import GradSampleModule
assert all(GradSampleModule.GRAD_SAMPLERS[t].__module__ == "privacy.encoder"
           for t in (FrameConv2d, FrameGroupNorm))
assert "dp_accounting" not in sys.modules
from privacy.accounting import pld_epsilon
assert 0 < pld_epsilon([{"sample_rate": 0.1, "noise_multiplier": 1.0, "steps": 10}], 1e-5)
assert "dp_accounting" in sys.modules
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
