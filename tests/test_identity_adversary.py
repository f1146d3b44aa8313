"""Identity-invariant training: the device discriminator, the per-clip invariance loss, and
its use under DP-SGD (privacy/identity_adversary.py, privacy/vib.py, fl_client/trainer.py)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from fl_client.trainer import (
    TrainConfig,
    derive_seeds,
    released_z,
    run_local_round,
    train_invariant,
    train_local,
    trained_parameter_names,
)
from privacy.encoder import (
    EncoderConfig,
    build_model,
    frames_to_tensor,
    load_numpy_state,
    register_grad_samplers,
    state_to_numpy,
)
from privacy.identity_adversary import (
    Discriminator,
    fit_discriminator,
    invariance_per_sample,
    stacked,
)
from privacy.vib import VIBCriterion, VIBTarget

TINY = EncoderConfig(image_size=32, frames=2, latent_dim=4, width=8, num_activities=3, proj_dim=4)
MODES = ("ghost", "hooks")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def device_clips(n: int, devices: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clips whose activity brightens a colour channel and whose device shows as a bright
    stripe at a device-specific row: both learnable, independent of each other."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, TINY.num_activities, n)
    d = np.arange(n) % devices
    x = rng.normal(90, 25, (n, TINY.frames, TINY.image_size, TINY.image_size, 3))
    for i in range(n):
        x[i, ..., y[i] % 3] += 70
        x[i, :, 4 + 8 * d[i]:8 + 8 * d[i], :, :] += 80
    return np.clip(x, 0, 255).astype(np.uint8), y, d


def separable(n: int = 90, k: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    d = np.arange(n) % k
    z = rng.normal(0, 0.3, (n, 4)).astype(np.float32)
    z[np.arange(n), d] += 2.0
    return z, d


# ------------------------------------------------------------------ the discriminator


def test_fit_is_deterministic_given_the_seed_and_learns_the_devices():
    z, d = separable()
    a, b, c = fit_discriminator(z, d, seed=1), fit_discriminator(z, d, seed=1), fit_discriminator(z, d, seed=2)
    assert all(np.array_equal(a.to_arrays()[k], b.to_arrays()[k]) for k in a.to_arrays())
    assert any(not np.array_equal(a.to_arrays()[k], c.to_arrays()[k]) for k in a.to_arrays())
    assert a.num_classes == 3 and a.latent_dim == 4
    assert (a.predict_proba(z).argmax(-1) == d).mean() > 0.95
    mlp = fit_discriminator(z, d, seed=1, hidden=8)
    assert set(mlp.to_arrays()) == {"hidden.weight", "hidden.bias", "out.weight", "out.bias"}
    assert (mlp.predict_proba(z).argmax(-1) == d).mean() > 0.95


def test_arrays_round_trip_and_bad_arrays_are_named():
    z, d = separable()
    disc = fit_discriminator(z, d, seed=0, hidden=5)
    back = Discriminator.from_arrays(disc.to_arrays())
    assert np.allclose(back.predict_proba(z), disc.predict_proba(z))
    arrays = disc.to_arrays()
    with pytest.raises(ValueError, match="hidden.weight and hidden.bias"):
        Discriminator.from_arrays({k: v for k, v in arrays.items() if k != "hidden.bias"})
    with pytest.raises(ValueError, match="unknown key"):
        Discriminator.from_arrays(arrays | {"extra": arrays["out.bias"]})
    with pytest.raises(ValueError, match="missing out.weight"):
        Discriminator.from_arrays({"out.bias": arrays["out.bias"]})
    with pytest.raises(ValueError, match="float32"):
        Discriminator.from_arrays(arrays | {"out.bias": arrays["out.bias"].astype(np.float64)})
    with pytest.raises(ValueError, match="non-finite"):
        Discriminator.from_arrays(arrays | {"out.bias": np.full(3, np.nan, np.float32)})
    with pytest.raises(ValueError, match="do not fit"):
        Discriminator.from_arrays(arrays | {"hidden.bias": np.zeros(4, np.float32)})
    with pytest.raises(ValueError, match="at least 2 devices"):
        fit_discriminator(z, np.zeros(len(z), np.int64), seed=0)
    with pytest.raises(ValueError, match="one per row"):
        fit_discriminator(z, d[:-1], seed=0)


# ------------------------------------------------------------------ the loss


def test_entropy_loss_is_zero_at_uniform_and_log_k_at_certainty():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [60.0, 0.0, 0.0, 0.0]])
    got = invariance_per_sample(logits, "entropy")
    assert got.shape == (2,)
    assert float(got[0]) == pytest.approx(0.0, abs=1e-6)
    assert float(got[1]) == pytest.approx(math.log(4), abs=1e-4)
    # reversal: capped at chance, zero once the right device is no likelier than uniform
    rev = invariance_per_sample(logits, "reversal", devices=torch.tensor([0, 1]))
    assert float(rev[0]) == pytest.approx(0.0, abs=1e-6) and float(rev[1]) == pytest.approx(0.0)
    rev = invariance_per_sample(logits, "reversal", devices=torch.tensor([0, 0]))
    assert float(rev[1]) == pytest.approx(math.log(4), abs=1e-4)
    with pytest.raises(ValueError, match="device index"):
        invariance_per_sample(logits, "reversal")
    with pytest.raises(ValueError, match="one of"):
        invariance_per_sample(logits, "kl")


@pytest.mark.parametrize("loss", ["entropy", "logit-spread", "reversal"])
def test_invariance_term_of_a_clip_reads_only_that_clip(loss):
    """The Jacobian of the per-clip penalties w.r.t. z is block-diagonal: no row mixing."""
    z, d = separable()
    disc = fit_discriminator(z, d, seed=0, hidden=6).module()
    zt = torch.tensor(z[:5], requires_grad=True)
    jac = torch.autograd.functional.jacobian(
        lambda v: invariance_per_sample(disc(v), loss, torch.tensor(d[:5])), zt)
    assert jac.shape == (5, 5, 4)
    for i in range(5):
        for j in range(5):
            if i != j:
                assert float(jac[i, j].abs().max()) == 0.0
    assert float(jac.abs().sum()) > 0


def test_criterion_needs_a_discriminator_for_a_weight_and_honours_reduction():
    z, d = separable(k=3)
    disc = fit_discriminator(z, d, seed=0)
    with pytest.raises(ValueError, match="needs a fitted device discriminator"):
        VIBCriterion(0.1, invariance_weight=1.0)
    with pytest.raises(ValueError, match="invariance_weight"):
        VIBCriterion(0.1, adversary=disc, invariance_weight=-1.0)
    net = build_model(TINY, seed=0).train()
    x = frames_to_tensor(device_clips(4)[0])
    eps = torch.randn(4, TINY.latent_dim, generator=torch.Generator().manual_seed(0))
    out = net(x, eps)
    y = VIBTarget(labels=torch.tensor([0, 1, 2, 0]))
    plain = VIBCriterion(0.1, reduction="none")(out, y)
    crit = VIBCriterion(0.1, reduction="none", adversary=disc, invariance_weight=2.0)
    per_clip = crit(out, y)
    assert per_clip.shape == (4,)
    inv = invariance_per_sample(disc.module()(out.mu), "logit-spread")  # the default, on the mean
    assert torch.allclose(per_clip, plain + 2.0 * inv)
    crit.reduction = "mean"
    assert torch.allclose(crit(out, y), per_clip.mean())
    assert not any(p.requires_grad for p in crit.parameters())


@pytest.mark.parametrize("loss", ["entropy", "logit-spread", "reversal"])
def test_opacus_per_clip_gradients_with_the_invariance_term_match_autograd(loss):
    """Opacus' per-clip gradients of the whole loss, invariance term included, equal
    autograd on each clip alone; the discriminator gets no gradient (it is no parameter of
    the wrapped model and is frozen)."""
    from opacus.grad_sample import GradSampleModule

    register_grad_samplers()
    x, y, d = device_clips(4)
    z, dz = separable(k=3)
    disc = fit_discriminator(z, dz, seed=0, hidden=6)
    net = build_model(TINY, seed=5).train()
    xt, yt, dt = frames_to_tensor(x), torch.tensor(y), torch.tensor(d)
    eps = torch.randn(4, TINY.latent_dim, generator=torch.Generator().manual_seed(1))
    crit = VIBCriterion(0.1, "supervised", reduction="sum", adversary=disc, invariance_weight=3.0,
                        invariance_loss=loss)
    names = trained_parameter_names(net, "supervised")
    params = [dict(net.named_parameters())[n] for n in names]
    for n, p in net.named_parameters():
        p.requires_grad_(n in names)
    gsm = GradSampleModule(net, loss_reduction="sum")
    crit(gsm(xt, eps), VIBTarget(labels=yt, devices=dt)).backward()
    samples = [p.grad_sample.clone() for p in params]
    gsm.remove_hooks()
    assert float(crit.last_terms["invariance"].sum()) > 0
    assert all(p.grad is None for p in crit.parameters())
    for i in range(4):
        loss_i = crit(net(xt[i:i + 1], eps[i:i + 1]), VIBTarget(labels=yt[i:i + 1], devices=dt[i:i + 1]))
        grads = torch.autograd.grad(loss_i, params)
        scale = max(float(g.abs().max()) for g in grads)  # float32 round-off of the whole clip
        for name, gs, g in zip(names, samples, grads):
            assert torch.allclose(gs[i], g, atol=1e-5 * scale + 1e-6, rtol=1e-3), name
    # and the term matters: without it the per-clip gradients differ
    plain = VIBCriterion(0.1, "supervised", reduction="sum")
    g0 = torch.autograd.grad(plain(net(xt[:1], eps[:1]), VIBTarget(labels=yt[:1])), params)
    assert any(not torch.allclose(a[0], b, atol=1e-6) for a, b in zip(samples, g0))


# ------------------------------------------------------------------ the trainer


def _sgd(params, lr):
    return torch.optim.SGD(params, lr=lr)


@pytest.mark.parametrize("mode", MODES)
def test_dp_round_with_invariance_is_the_clipped_per_clip_sum_plus_noise(mode):
    n = 6
    x, y, d = device_clips(n)
    start = state_to_numpy(build_model(TINY, seed=0))
    disc = fit_discriminator(released_z(TINY, start, x, seed=0), d, seed=0)
    cfg = TrainConfig(epochs=1, batch_size=n, lr=0.5, beta=0.05, dp_sgd=True, noise_multiplier=0.8,
                      clip_norm=0.05, seed=3, invariance_weight=5.0)
    seen = []
    res = run_local_round(TINY, start, x, y, cfg, grad_sample_mode=mode, optimizer_factory=_sgd,
                          discriminator=disc, probe=lambda step, idx, batch: seen.append(batch))
    batch = seen[0]
    model = build_model(TINY)
    load_numpy_state(model, start)
    model.train()
    names = trained_parameter_names(model, "supervised")
    params = dict(model.named_parameters())
    crit = VIBCriterion(cfg.beta, reduction="sum", adversary=disc, invariance_weight=5.0)
    clipped = {k: torch.zeros_like(params[k]) for k in names}
    norms = []
    for i in range(n):
        out = model(batch.view[i:i + 1], batch.eps[i:i + 1])
        grads = torch.autograd.grad(crit(out, VIBTarget(labels=batch.target.labels[i:i + 1])),
                                    [params[k] for k in names])
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads)).item()
        norms.append(norm)
        for k, g in zip(names, grads):
            clipped[k] += min(1.0, cfg.clip_norm / (norm + 1e-6)) * g
    assert max(norms) > 2 * cfg.clip_norm
    noise_gen = torch.Generator().manual_seed(derive_seeds(cfg.seed)["noise"])
    for k in names:
        noise = torch.normal(0.0, 0.8 * 0.05, size=start[k].shape, generator=noise_gen)
        want = start[k] - cfg.lr * (clipped[k].numpy() + noise.numpy()) / n
        assert np.allclose(res.arrays[k], want, atol=2e-6, rtol=1e-4), k
    assert res.metrics["invariance_loss"] > 0


def test_ghost_hooks_and_plain_all_run_with_invariance_and_ghost_equals_hooks():
    x, y, d = device_clips(10, seed=4)
    start = state_to_numpy(build_model(TINY, seed=0))
    disc = fit_discriminator(released_z(TINY, start, x, seed=0), d, seed=0, hidden=4)
    cfg = TrainConfig(epochs=2, batch_size=4, dp_sgd=True, seed=2, clip_norm=0.1, invariance_weight=2.0)
    a = run_local_round(TINY, start, x, y, cfg, grad_sample_mode="ghost", discriminator=disc)
    b = run_local_round(TINY, start, x, y, cfg, grad_sample_mode="hooks", discriminator=disc)
    for k in a.arrays:
        assert np.allclose(a.arrays[k], b.arrays[k], atol=1e-5), k
    plain = train_local(TINY, start, x, y, dataclasses.replace(cfg, dp_sgd=False), disc)
    off = train_local(TINY, start, x, y, dataclasses.replace(cfg, dp_sgd=False, invariance_weight=0.0))
    assert "invariance_loss" in plain.metrics and "invariance_loss" not in off.metrics
    assert any(not np.allclose(plain.arrays[k], off.arrays[k]) for k in plain.arrays)


def test_trainer_rejects_a_missing_or_mismatched_discriminator():
    x, y, d = device_clips(6)
    start = state_to_numpy(build_model(TINY, seed=0))
    cfg = TrainConfig(invariance_weight=1.0)
    with pytest.raises(ValueError, match="needs a fitted device discriminator"):
        train_local(TINY, start, x, y, cfg)
    z, dz = separable()
    wide = fit_discriminator(np.concatenate([z, z], axis=1), dz, seed=0)
    with pytest.raises(ValueError, match="latent_dim is 4"):
        train_local(TINY, start, x, y, cfg, wide)
    disc = fit_discriminator(z, dz, seed=0)
    with pytest.raises(ValueError, match="one integer device index per clip"):
        run_local_round(TINY, start, x, y, cfg, discriminator=disc, invariance_loss="reversal")
    with pytest.raises(ValueError, match="invariance_weight"):
        TrainConfig(invariance_weight=float("nan"))


def test_training_against_a_frozen_discriminator_leaves_it_at_chance():
    """The attack the term is taken against: a discriminator fitted on a warmed-up
    encoder's released z reads the device above chance; a round against it (default loss)
    leaves it at chance on the new encoder's releases, a round without the term does not.
    (A *fresh* discriminator may read the device again: that is why the server refits
    after every collection, and why scripts/invariance_probe.py measures the attacker.)"""
    x, y, d = device_clips(48, seed=1)
    start = state_to_numpy(build_model(TINY, seed=0))
    warm = train_local(TINY, start, x, y, TrainConfig(epochs=4, batch_size=8, lr=5e-3, seed=0)).arrays
    disc = fit_discriminator(released_z(TINY, warm, x, seed=1), d, seed=0)
    accuracy = {}
    for w in (0.0, 1.0):
        cfg = TrainConfig(epochs=4, batch_size=8, lr=5e-3, seed=1, invariance_weight=w)
        arrays = train_local(TINY, warm, x, y, cfg, disc if w else None).arrays
        z = released_z(TINY, arrays, x, seed=99)
        accuracy[w] = float(np.mean(disc.predict_proba(z).argmax(-1) == d))
    assert accuracy[0.0] > 0.4 and accuracy[1.0] < 1 / 3 + 0.02, accuracy


def test_alternating_training_refits_every_two_epochs_by_default():
    x, y, d = device_clips(24, seed=1)
    start = state_to_numpy(build_model(TINY, seed=0))
    res = train_invariant(TINY, start, x, y, d, TrainConfig(epochs=8, batch_size=8, invariance_weight=0.1))
    assert len(res.discriminators) == len(res.device_accuracy) == 3
    assert all(0 <= a <= 1 for a in res.device_accuracy)
    assert set(res.arrays) == set(start)
    base = TrainConfig(epochs=4)
    with pytest.raises(ValueError, match="stages"):
        train_invariant(TINY, start, x, y, d, base, stages=0)
    with pytest.raises(ValueError, match="must be >= stages"):
        train_invariant(TINY, start, x, y, d, base, stages=4)
    with pytest.raises(ValueError, match="one integer index per clip"):
        train_invariant(TINY, start, x, y, d[:-1], base)


def test_logit_spread_is_zero_at_equal_logits_and_a_stack_averages_its_members():
    logits = torch.tensor([[1.5, 1.5, 1.5], [3.0, 0.0, 0.0]])
    spread = invariance_per_sample(logits, "logit-spread")
    assert float(spread[0]) == pytest.approx(0.0, abs=1e-7)
    assert float(spread[1]) == pytest.approx(((2.0 ** 2) + 2 * (1.0 ** 2)) / 3)
    z, d = separable(k=3)
    a, b = fit_discriminator(z, d, seed=0), fit_discriminator(z + 0.5, d, seed=1)
    zt = torch.from_numpy(z[:7])
    each = [invariance_per_sample(x.module()(zt), "logit-spread") for x in (a, b)]
    both = invariance_per_sample(stacked([a, b]).module()(zt), "logit-spread")
    assert torch.allclose(both, (each[0] + each[1]) / 2, atol=1e-5)
    with pytest.raises(ValueError, match="only linear"):
        stacked([fit_discriminator(z, d, seed=0, hidden=3)])
    with pytest.raises(ValueError, match="memory"):
        train_invariant(TINY, {}, z, d, d, TrainConfig(epochs=4), memory=2, invariance_loss="entropy")
