"""The encoder, its KL rate and its criterion (privacy/encoder.py, privacy/vib.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from opacus.validators import ModuleValidator
from torch import nn

from privacy.encoder import (
    EncoderConfig,
    FrameConv2d,
    FrameGroupNorm,
    build_model,
    encode,
    frames_to_tensor,
    load_numpy_state,
    register_grad_samplers,
    state_to_numpy,
)
from privacy.vib import (
    UTILITIES,
    VIBCriterion,
    VIBTarget,
    augment_clips,
    kl_bits,
    kl_per_sample,
)

TINY = EncoderConfig(image_size=32, frames=3, latent_dim=5, width=8, num_activities=4, proj_dim=6)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def clips(n: int, cfg: EncoderConfig = TINY, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, cfg.frames, cfg.image_size, cfg.image_size, 3), dtype=np.uint8)


@pytest.mark.parametrize("size", [32, 64])
def test_shapes(size):
    cfg = EncoderConfig(image_size=size, frames=2, latent_dim=7, width=8, num_activities=3, proj_dim=5)
    model = build_model(cfg)
    x = frames_to_tensor(clips(4, cfg))
    eps = torch.randn(4, 7)
    out = model(x, eps, logits=True, online=True)
    assert out.mu.shape == out.logvar.shape == out.z.shape == (4, 7)
    assert out.logits.shape == (4, 3)
    assert out.online.shape == (4, 5)
    assert model.target_projection(x).shape == (4, 5)
    assert torch.allclose(out.z, out.mu + torch.exp(0.5 * out.logvar) * eps)
    assert model(x, None).z.equal(model(x, None).mu)
    mu, lv = encode(model, clips(4, cfg))
    assert mu.shape == lv.shape == (4, 7) and mu.dtype == lv.dtype == np.float32


def test_groupnorm_only_and_dp_compatible():
    model = build_model(EncoderConfig())
    kinds = [type(m) for m in model.modules()]
    assert not any(issubclass(k, nn.modules.batchnorm._NormBase) for k in kinds)  # no BN/IN
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 3 and all(type(m) is FrameGroupNorm for m in norms)
    assert list(model.buffers()) == []  # no running statistics of any kind
    assert list(model.parameters(recurse=False)) == []  # no bare nn.Parameter on top
    assert ModuleValidator.validate(model.train(), strict=False) == []


def test_each_clip_is_processed_alone():
    """No quantity mixes clips of a batch (what per-example DP clipping relies on)."""
    model = build_model(TINY).train()
    x = frames_to_tensor(clips(5))
    eps = torch.randn(5, TINY.latent_dim)
    batched = model(x, eps, logits=True, online=True)
    for i in range(5):
        alone = model(x[i:i + 1], eps[i:i + 1], logits=True, online=True)
        for name in ("mu", "logvar", "z", "logits", "online"):
            assert torch.allclose(getattr(alone, name)[0], getattr(batched, name)[i], atol=1e-5), name


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_frame_layers_per_clip_gradients_match_autograd():
    """The per-clip grad samplers registered with Opacus equal autograd on each clip alone."""
    from opacus.grad_sample import GradSampleModule

    register_grad_samplers()  # ours, not Opacus' functorch fallback, compute them below
    for layer in (FrameConv2d, FrameGroupNorm):
        assert GradSampleModule.GRAD_SAMPLERS[layer].__module__ == "privacy.encoder"
    torch.manual_seed(0)
    net = nn.Sequential(FrameConv2d(3, 8, 3, stride=2, padding=1), FrameGroupNorm(4, 8),
                        FrameConv2d(8, 4, 3, stride=1, padding=1))
    x = torch.rand(5, 3, 3, 12, 12)
    w = torch.randn(3, 4, 6, 6)  # a fixed weighting of [T, C, H, W] outputs -> per-clip losses

    def per_clip_loss(out):
        return (out * w).flatten(1).sum(1) ** 2

    gsm = GradSampleModule(net, loss_reduction="sum")
    per_clip_loss(gsm(x)).sum().backward()
    samples = [p.grad_sample.clone() for p in net.parameters()]
    gsm.remove_hooks()
    for i in range(5):
        grads = torch.autograd.grad(per_clip_loss(net(x[i:i + 1])).sum(), list(net.parameters()))
        for gs, g in zip(samples, grads):
            assert gs[i].shape == g.shape
            assert torch.allclose(gs[i], g, atol=1e-4 * float(g.abs().max()), rtol=1e-4)


def test_whole_model_per_clip_gradients_match_autograd():
    """Through every layer of the model (frame convs, temporal conv over the cells, heads),
    the per-clip gradients Opacus computes equal autograd on each clip alone: the temporal
    convolution mixes frames and cells of one clip, never clips."""
    from opacus.grad_sample import GradSampleModule

    from privacy.vib import VIBCriterion, VIBTarget

    register_grad_samplers()
    net = build_model(TINY, seed=5).train()
    x = frames_to_tensor(clips(4, seed=9))
    y = torch.tensor([0, 1, 1, 0])
    eps = torch.randn(4, TINY.latent_dim, generator=torch.Generator().manual_seed(1))
    crit = VIBCriterion(0.1, "supervised", reduction="sum")
    names = [n for n, p in net.named_parameters() if not n.startswith(("projector", "predictor"))]
    params = [dict(net.named_parameters())[n] for n in names]
    for n, p in net.named_parameters():
        p.requires_grad_(n in names)
    gsm = GradSampleModule(net, loss_reduction="sum")
    crit(gsm(x, eps), VIBTarget(labels=y)).backward()
    samples = [p.grad_sample.clone() for p in params]
    gsm.remove_hooks()
    assert any(n.startswith("encoder.temporal") for n in names)
    for i in range(4):
        loss = crit(net(x[i:i + 1], eps[i:i + 1]), VIBTarget(labels=y[i:i + 1]))
        grads = torch.autograd.grad(loss, params)
        for name, gs, g in zip(names, samples, grads):
            assert torch.allclose(gs[i], g, atol=1e-4 * float(g.abs().max()) + 1e-7, rtol=1e-3), name


def test_build_model_deterministic():
    a = state_to_numpy(build_model(TINY, seed=3))
    b = state_to_numpy(build_model(TINY, seed=3))
    c = state_to_numpy(build_model(TINY, seed=4))
    assert a.keys() == b.keys() == c.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a[k], c[k]) for k in a)


def test_state_round_trip_and_mismatch():
    src = build_model(TINY, seed=1)
    dst = build_model(TINY, seed=2)
    load_numpy_state(dst, state_to_numpy(src))
    x = clips(3)
    assert np.array_equal(encode(src, x)[0], encode(dst, x)[0])
    arrays = state_to_numpy(src)
    arrays.pop("activity_head.bias")
    with pytest.raises(ValueError, match="missing"):
        load_numpy_state(dst, arrays)
    arrays = state_to_numpy(src)
    arrays["activity_head.bias"] = np.zeros(99, np.float32)
    with pytest.raises(ValueError, match="activity_head.bias"):
        load_numpy_state(dst, arrays)
    other = state_to_numpy(build_model(EncoderConfig(width=16)))
    with pytest.raises(ValueError):
        load_numpy_state(dst, other)


def test_frames_to_tensor_layout_and_range():
    x = clips(2)
    t = frames_to_tensor(x)
    assert t.dtype == torch.float32 and t.shape == (2, TINY.frames, 3, 32, 32)
    assert float(t[1, 2, 0, 5, 7]) == pytest.approx(x[1, 2, 5, 7, 0] / 255.0)
    assert 0.0 <= float(t.min()) and float(t.max()) <= 1.0
    with pytest.raises(ValueError, match="uint8"):
        frames_to_tensor(x.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        frames_to_tensor(x[..., :2])


def test_encode_deterministic_eval_mode():
    model = build_model(TINY).train()
    x = clips(7)
    mu1, lv1 = encode(model, x, batch_size=3)
    mu2, lv2 = encode(model, x, batch_size=64)
    assert np.allclose(mu1, mu2, atol=1e-6) and np.allclose(lv1, lv2, atol=1e-6)
    assert np.array_equal(encode(model, x)[0], encode(model, x)[0])
    assert model.training  # restored
    with pytest.raises(ValueError, match="shape"):
        encode(model, clips(2, EncoderConfig(frames=4, width=8)))


def test_kl_closed_form_matches_torch_distributions():
    torch.manual_seed(0)
    mu = torch.randn(6, 4) * 2
    logvar = torch.randn(6, 4)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros(6, 4), torch.ones(6, 4))
    ref = torch.distributions.kl_divergence(q, p).sum(1)
    assert torch.allclose(kl_per_sample(mu, logvar), ref, atol=1e-5)
    assert torch.all(kl_per_sample(torch.zeros(3, 4), torch.zeros(3, 4)) == 0)


def test_kl_monte_carlo():
    g = torch.Generator().manual_seed(1)
    mu = torch.tensor([[0.5, -1.0, 0.0]], dtype=torch.float64)
    logvar = torch.tensor([[0.3, -0.7, 1.2]], dtype=torch.float64)
    std = torch.exp(0.5 * logvar)
    z = mu + std * torch.randn(200_000, 3, generator=g, dtype=torch.float64)
    log_q = (-0.5 * ((z - mu) / std) ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)).sum(1)
    log_p = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(1)
    mc = (log_q - log_p).mean().item()
    assert mc == pytest.approx(kl_per_sample(mu, logvar).item(), abs=0.02)


def test_kl_bits_is_nats_over_ln2():
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(5, 8)).astype(np.float32)
    lv = rng.normal(size=(5, 8)).astype(np.float32)
    nats = kl_per_sample(torch.from_numpy(mu).double(), torch.from_numpy(lv).double()).numpy()
    assert np.allclose(kl_bits(mu, lv), nats / math.log(2), rtol=1e-6)
    assert np.all(kl_bits(np.zeros((2, 3)), np.zeros((2, 3))) == 0)
    with pytest.raises(ValueError):
        kl_bits(mu, lv[:, :3])


def _out_target(n=6, seed=0):
    model = build_model(TINY, seed=seed)
    x = frames_to_tensor(clips(n, seed=seed))
    out = model(x, torch.randn(n, TINY.latent_dim), logits=True, online=True)
    target = VIBTarget(labels=torch.arange(n) % TINY.num_activities,
                       target_proj=torch.randn(n, TINY.proj_dim))
    return out, target


@pytest.mark.parametrize("utility", UTILITIES)
def test_criterion_honours_reduction(utility):
    """Opacus' ghost clipping sets .reduction='none' to get per-clip losses: it must work."""
    out, target = _out_target()
    crit = VIBCriterion(beta=0.1, utility=utility, reduction="none")
    per = crit(out, target)
    assert per.shape == (6,)
    crit.reduction = "sum"
    assert torch.allclose(crit(out, target), per.sum())
    crit.reduction = "mean"
    assert torch.allclose(crit(out, target), per.mean())
    # per-clip loss of clip i is the loss of clip i alone
    single = VIBTarget(labels=target.labels[2:3], target_proj=target.target_proj[2:3])
    from privacy.vib import VIBOutput

    out2 = VIBOutput(mu=out.mu[2:3], logvar=out.logvar[2:3], z=out.z[2:3],
                     logits=out.logits[2:3], online=out.online[2:3])
    crit.reduction = "none"
    assert torch.allclose(crit(out2, single), per[2:3])
    terms = crit.per_sample(out, target)
    assert torch.allclose(terms["loss"], terms["utility"] + 0.1 * terms["kl"])
    crit.reduction = "bogus"
    with pytest.raises(ValueError, match="reduction"):
        crit(out, target)


def test_criterion_validation():
    with pytest.raises(ValueError, match="utility"):
        VIBCriterion(0.1, utility="contrastive")
    with pytest.raises(ValueError, match="beta"):
        VIBCriterion(-1.0)


def test_augment_clips_per_clip_and_seeded():
    x = frames_to_tensor(clips(4))
    a = augment_clips(x, torch.Generator().manual_seed(5))
    b = augment_clips(x, torch.Generator().manual_seed(5))
    c = augment_clips(x, torch.Generator().manual_seed(6))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    # clip i's view depends on clip i only: change clip 3, views 0..2 stay the same
    y = x.clone()
    y[3] = 1.0 - y[3]
    d = augment_clips(y, torch.Generator().manual_seed(5))
    assert torch.equal(d[:3], a[:3]) and not torch.equal(d[3], a[3])


def test_encoder_config_validation():
    with pytest.raises(ValueError, match="image_size"):
        EncoderConfig(image_size=48)
    with pytest.raises(ValueError, match="latent_dim"):
        EncoderConfig(latent_dim=0)
    with pytest.raises(ValueError, match="width"):
        EncoderConfig(width=6)
