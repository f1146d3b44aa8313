"""privacy/evaluation: each metric against an independent computation or a known case."""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest
import torch

from privacy.encoder import EncoderConfig, build_model, frames_to_tensor, num_parameters
from privacy.evaluation import baselines, dtp, efficiency, leakage, reconstruction
from privacy.evaluation.harness import EvalData, Split, references
from privacy.payload import INT8_STEP, Z_CLIP
from privacy.synthetic import FleetSpec, fleet_batch

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def fleet():
    """6 devices x 4 days x 8 clips: days 0-1 attacker fit, days 2-3 targets; + 3 pop devices."""
    spec = FleetSpec(seed=1, num_devices=9, days=4, clips_per_day=8)
    fit = fleet_batch(spec, range(6), range(2))
    test = fleet_batch(spec, range(6), range(2, 4))
    pop = fleet_batch(spec, range(6, 9), range(4))
    return fit, test, pop


# ------------------------------------------------------------------ image quality


def test_psnr_known_cases():
    a = np.zeros((2, 16, 16, 3))
    assert reconstruction.psnr(a, a) == np.inf
    assert reconstruction.psnr(a, a + 0.1) == pytest.approx(20.0)  # MSE 0.01 -> 20 dB
    # per-image PSNR, then the mean: image 0 off by 0.1 (20 dB), image 1 by 0.01 (40 dB)
    off = a + np.array([0.1, 0.01])[:, None, None, None]
    assert reconstruction.psnr(a, off) == pytest.approx(30.0)


def _ssim_bruteforce(x: np.ndarray, y: np.ndarray) -> float:
    """Direct 2-D windowed SSIM (Wang et al. 2004), no separable filtering."""
    g = np.exp(-0.5 * ((np.arange(11) - 5) / 1.5) ** 2)
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for ch in range(x.shape[2]):
        for i in range(x.shape[0] - 10):
            for j in range(x.shape[1] - 10):
                px, py = x[i:i + 11, j:j + 11, ch], y[i:i + 11, j:j + 11, ch]
                mx, my = (w * px).sum(), (w * py).sum()
                vx = (w * (px - mx) ** 2).sum()
                vy = (w * (py - my) ** 2).sum()
                cxy = (w * (px - mx) * (py - my)).sum()
                vals.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_ssim_matches_bruteforce_and_known_cases():
    rng = np.random.default_rng(0)
    x = rng.random((16, 14, 3))
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1)
    assert reconstruction.ssim(x, y) == pytest.approx(_ssim_bruteforce(x, y), abs=1e-9)
    assert reconstruction.ssim(x, x) == pytest.approx(1.0)
    # constant images: SSIM reduces to the luminance term
    c1 = 0.01**2
    const = reconstruction.ssim(np.full((12, 12, 3), 0.2), np.full((12, 12, 3), 0.6))
    assert const == pytest.approx((2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1))
    with pytest.raises(ValueError, match="H, W >= 11"):
        reconstruction.ssim(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)))


# ------------------------------------------------------------------ baselines


def test_pixel_baselines_known_cases():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (2, 8, 32, 32, 3), dtype=np.uint8)
    const = np.full((1, 8, 32, 32, 3), 77, np.uint8)
    assert np.array_equal(baselines.blur(const, 2.0), const)
    assert baselines.blur(x, 2.0).std() < x.std() / 2
    pix = baselines.pixelate(x, 4)
    cells = pix.reshape(2, 8, 8, 4, 8, 4, 3)
    assert np.all(cells == cells[:, :, :, :1, :, :1])  # constant inside every 4x4 cell
    assert np.abs(pix.astype(float).mean() - x.astype(float).mean()) < 1.0
    noisy = baselines.pixel_noise(np.full((4, 8, 32, 32, 3), 128, np.uint8), 0.1, seed=3)
    assert noisy.astype(float).std() == pytest.approx(25.5, rel=0.05)
    assert np.array_equal(noisy, baselines.pixel_noise(np.full((4, 8, 32, 32, 3), 128, np.uint8), 0.1, seed=3))
    f = baselines.pixel_features(x)
    assert f.shape == (2, 32 * 32 * 3 + 16 * 16 * 3)
    assert np.allclose(f[:, :3072].reshape(2, 32, 32, 3), baselines.mean_frames(x))


def test_encoder_representation_releases_payload_quantised_samples(fleet):
    fit, _, _ = fleet
    rep = baselines.EncoderRepresentation("e", build_model(EncoderConfig(), seed=0), beta=0.01)
    z = rep.features(fit.x[:16], seed=5)
    steps = z / INT8_STEP
    assert np.allclose(steps, np.rint(steps), atol=1e-4)  # on the int8 grid of the payload
    assert np.all(np.abs(z) <= Z_CLIP + 1e-6)
    assert np.array_equal(z, rep.features(fit.x[:16], seed=5))
    assert not np.array_equal(z, rep.features(fit.x[:16], seed=6))  # a fresh sample of q(z|x)


# ------------------------------------------------------------------ DTP


def test_probes_on_known_cases():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 50)
    z = np.eye(4)[y] * 5 + rng.normal(0, 0.3, (200, 4))
    for kind in dtp.PROBES:
        assert dtp.probe_accuracy(kind, z[::2], y[::2], z[1::2], y[1::2]) == 1.0
    noise = rng.normal(size=(200, 4))
    assert dtp.probe_accuracy("linear", noise[::2], y[::2], noise[1::2], y[1::2]) < 0.45
    assert dtp.chance(np.array([0, 0, 1]), np.array([0, 1, 1, 1])) == 0.25
    labels = (rng.random((300, 3)) < 0.4).astype(int)
    informative = labels * 3 + rng.normal(0, 0.3, labels.shape)
    for kind in dtp.PROBES:
        assert dtp.multilabel_auc(kind, informative[:150], labels[:150], informative[150:], labels[150:]) > 0.99
    auc = dtp.multilabel_auc("linear", noise[:150], labels[:150], rng.normal(size=(150, 4)), labels[150:])
    assert abs(auc - 0.5) < 0.1


# ------------------------------------------------------------------ PL


def _obs(batch, z) -> leakage.Observed:
    return leakage.Observed(z, batch.labels)


def test_profile_loglik_matches_bayes_rule_by_hand():
    rng = np.random.default_rng(0)
    post = rng.dirichlet(np.ones(3), size=5)
    prior = np.array([0.5, 0.3, 0.2])
    prof = rng.dirichlet(np.ones(3), size=4)
    got = leakage.profile_loglik(post, prior, prof)
    for i in range(5):
        for d in range(4):
            assert got[i, d] == pytest.approx(np.log(sum(post[i, v] / prior[v] * prof[d, v] for v in range(3))))


def test_fused_accuracy_grows_with_k_on_weak_evidence():
    rng = np.random.default_rng(0)
    devices = np.arange(5)
    dev = np.repeat(devices, 40)
    loglik = rng.normal(0, 1, (200, 5))
    loglik[np.arange(200), dev] += 0.6  # weak per-clip evidence for the true device
    accs = [leakage.fused_accuracy(loglik, dev, devices, k, 50, np.random.default_rng(1)) for k in (1, 4, 16, 32)]
    assert accs[0] < 0.6 and accs[-1] > 0.95
    assert all(b >= a - 0.02 for a, b in itertools.pairwise(accs))
    assert leakage.fused_accuracy(loglik, dev, devices, 41, 5, rng) is None  # not enough clips
    assert leakage.accumulation_gain({1: 0.3, 4: 0.7}) == {1: 0.0, 4: pytest.approx(0.4)}


@pytest.mark.parametrize("noise", [0.0, 1.0])
def test_pl_k_increases_with_k_on_pixels(fleet, noise):
    """Raw pixels (and raw pixels under heavy noise, where one clip is not enough)."""
    fit, test, _ = fleet
    rep = baselines.PixelRepresentation("p", "noise", noise) if noise else baselines.PixelRepresentation("raw", "raw")
    f_fit, f_test = rep.features(fit.x, 0), rep.features(test.x, 1)
    curve = leakage.fusion_curve(_obs(fit, f_fit), _obs(test, f_test), "identity", (1, 2, 4, 8, 16), 20, 0)
    ks = sorted(curve)
    assert ks == [1, 2, 4, 8, 16]
    assert curve[16] == 1.0 and curve[16] > curve[1]
    assert all(curve[b] >= curve[a] - 0.02 for a, b in itertools.pairwise(ks))
    if noise:
        assert curve[16] - curve[1] > 0.15  # the accumulation gain
    single = leakage.single_clip(_obs(fit, f_fit), _obs(test, f_test), "identity", 0)
    assert single["best"] > single["chance"] + 0.3


def test_linkage_auc_raw_pixels_high_and_shuffled_half(fleet):
    _fit, test, pop = fleet
    raw = baselines.PixelRepresentation("raw", "raw")
    obs_pop, obs_test = _obs(pop, raw.features(pop.x, 0)), _obs(test, raw.features(test.x, 0))
    auc = leakage.linkage_auc(obs_pop, obs_test, 8, 20, 0)
    assert auc is not None and auc > 0.9
    # labels shuffled within each day (every device keeps its counts): no signal left, so
    # the AUC averaged over shuffles is 0.5 (one shuffle of 6 devices is a noisy estimate)
    rng = np.random.default_rng(0)
    aucs = []
    for _ in range(12):
        labels = dict(test.labels)
        shuffled = labels["device"].copy()
        for day in np.unique(labels["day"]):
            rows = np.flatnonzero(labels["day"] == day)
            shuffled[rows] = rng.permutation(shuffled[rows])
        labels["device"] = shuffled
        aucs.append(leakage.linkage_auc(obs_pop, leakage.Observed(obs_test.z, labels), 4, 10, 0))
    assert abs(np.mean(aucs) - 0.5) < 0.06


# ------------------------------------------------------------------ RR


def test_ridge_decoder_inverts_a_linear_release_and_decoder_attack_picks_best():
    rng = np.random.default_rng(0)
    latent = rng.normal(size=(120, 10))
    frames = (0.5 + 0.03 * latent @ rng.normal(size=(10, 768))).reshape(120, 16, 16, 3)
    feats = latent @ rng.normal(size=(10, 10))  # an invertible linear release of the latent
    recon = reconstruction.ridge_decoder(feats[:100], frames[:100], feats[100:], alpha=1e-6)
    assert reconstruction.psnr(recon, frames[100:]) > 50
    frames = rng.random((120, 16, 16, 3)).astype(np.float32)
    useless = rng.normal(size=(120, 8)).astype(np.float32)
    res = reconstruction.decoder_attack(useless[:100], frames[:100], useless[100:], frames[100:], seed=0, epochs=2)
    assert res["psnr"] < 15  # uniform noise frames cannot be guessed from noise


def test_optimisation_inversion_moves_towards_the_clip(fleet):
    fit, test, _ = fleet
    model = build_model(EncoderConfig(), seed=0)
    rep = baselines.EncoderRepresentation("e", model, 0.0)
    mu, _ = rep.posterior(test.x[:4])
    truth = baselines.mean_frames(test.x[:4])
    init = baselines.mean_frames(fit.x).mean(axis=0)
    inv = reconstruction.invert_encoder(model, mu, init, steps=60)
    mu_inv, _ = rep.posterior(np.clip(np.rint(inv[:, None].repeat(8, 1) * 255), 0, 255).astype(np.uint8))
    mu_init, _ = rep.posterior(np.rint(np.repeat(init[None, None], 4, 0).repeat(8, 1) * 255).astype(np.uint8))
    assert np.linalg.norm(mu_inv - mu) < 0.5 * np.linalg.norm(mu_init - mu)
    assert inv.shape == truth.shape


def test_gradient_inversion_plain_beats_dp_sgd(fleet):
    from fl_server.eval_pipeline import dp_sgd_update

    _, test, _ = fleet
    model = build_model(EncoderConfig(), seed=0)
    x, y = test.x[3:4], test.labels["activity"][3:4]
    truth = baselines.mean_frames(x)
    plain = reconstruction.vib_gradient(model, frames_to_tensor(x), torch.as_tensor(y), 0.01)
    # the Opacus DP-SGD helper without noise and a loose clip is exactly the plain gradient
    noiseless = dp_sgd_update(model, x, y, beta=0.01, noise_multiplier=1e-12, clip_norm=1e3, seed=0)
    assert set(noiseless) == set(plain)
    for k in plain:
        assert torch.allclose(noiseless[k], plain[k], atol=1e-6, rtol=1e-4)
    # noiseless with a binding clip: the plain gradient scaled to norm C
    clipped = dp_sgd_update(model, x, y, beta=0.01, noise_multiplier=1e-12, clip_norm=1e-3, seed=0)
    norm = torch.sqrt(sum((v**2).sum() for v in plain.values()))
    assert norm > 1e-3
    flat_plain = torch.cat([plain[k].ravel() for k in plain])
    flat_clipped = torch.cat([clipped[k].ravel() for k in plain])  # read back in float32 weights
    assert torch.linalg.norm(flat_clipped) == pytest.approx(1e-3, rel=2e-2)
    assert torch.nn.functional.cosine_similarity(flat_clipped, flat_plain, dim=0) > 0.999
    dp = dp_sgd_update(model, x, y, beta=0.01, noise_multiplier=1.0, clip_norm=1.0, seed=0)
    kw = {"beta": 0.01, "image_size": 32, "steps": 150, "seed": 0}
    rec_plain = reconstruction.gradient_inversion(model, plain, [int(y[0])], **kw)
    rec_dp = reconstruction.gradient_inversion(model, dp, [int(y[0])], **kw)
    p_plain, p_dp = reconstruction.psnr(rec_plain, truth), reconstruction.psnr(rec_dp, truth)
    assert p_plain > p_dp + 2.0

    # The attack recovers the clip's picture from the plain update, up to brightness and
    # contrast (which the sign-gradient attack does not pin down, so PSNR understates it):
    # the reconstruction correlates with this clip's frame, far more than with any other
    # clip of the target days; from the DP-SGD update it correlates with nothing.
    def corr(a, b):
        return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])

    others = [baselines.mean_frames(test.x[i:i + 1]) for i in range(len(test.x)) if i != 3]
    assert corr(rec_plain, truth) > 0.6
    assert corr(rec_plain, truth) > max(corr(rec_plain, o) for o in others) + 0.1
    assert abs(corr(rec_dp, truth)) < 0.3


# ------------------------------------------------------------------ SE


def test_efficiency_figures_against_independent_counts(fleet):
    _, test, _ = fleet
    model = build_model(EncoderConfig(), seed=0)
    size = efficiency.encoder_size(model)
    assert size["model_params"] == num_parameters(model) == 217960
    assert size["device_params"] == sum(p.numel() for n, p in model.named_parameters()
                                        if n.startswith(("encoder.", "posterior_head.")))
    assert size["device_bytes"] == 4 * size["device_params"]
    b = efficiency.bytes_per_clip(test.x[:4], 32)
    assert b["payload_bytes"] == 12 + 32 and b["raw_bytes"] == 8 * 32 * 32 * 3
    import cv2

    one = cv2.imencode(".jpg", np.ascontiguousarray(test.x[0, 0, :, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 90])[1]
    assert efficiency.jpeg_bytes(test.x[0, :1]) == len(one)
    threads = torch.get_num_threads()
    lat = efficiency.latency_per_clip(model, test.x[:5])
    assert lat["latency_s_median"] > 0 and lat["latency_clips"] == 5
    assert torch.get_num_threads() == threads


# ------------------------------------------------------------------ operating point, layering


def test_privacy_evaluation_imports_no_platform_package():
    code = ("import sys, privacy.evaluation.harness, privacy.evaluation.report, privacy.evaluation.efficiency, privacy.evaluation.linking, privacy.evaluation.operating_points; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('fl_client', 'fl_server', 'strategies', 'monitoring')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_references_known_cases():
    """Activity that names the wearer gives an identity floor of 1; a constant clip set
    gives the prior frame exactly."""
    x = np.full((12, 8, 16, 16, 3), 90, np.uint8)
    wearer = np.arange(12) % 3
    labels = {"activity": wearer.copy(), "wearer": wearer}
    ref = references(EvalData(Split(x, labels), Split(x, labels)))
    assert ref["identity_from_activity"] == 1.0
    assert ref["identity_chance"] == pytest.approx(1 / 3)
    assert ref["prior_psnr"] > 100  # exact up to float32 rounding
    labels_b = {"activity": np.zeros(12, int), "wearer": wearer}
    assert references(EvalData(Split(x, labels_b), Split(x, labels_b)))["identity_from_activity"] == pytest.approx(1 / 3)


def test_the_server_probes_on_an_even_spread_of_the_fleet_when_asked() -> None:
    from fl_server.evaluation import HeldOut, probe_device_indices
    from privacy.synthetic import FleetSpec

    assert probe_device_indices(1000, 20)[:3] == [0, 53, 105]
    assert len(set(probe_device_indices(1000, 20))) == 20
    assert probe_device_indices(1000, 20)[-1] == 999
    assert probe_device_indices(6, 0) == probe_device_indices(6, 9) == list(range(6))
    assert probe_device_indices(6, 1) == [0]
    spec = FleetSpec(seed=1, num_devices=9, days=4, clips_per_day=2)
    some, every = HeldOut.for_fleet(spec, 2, 3), HeldOut.for_fleet(spec, 2)
    assert sorted(set(some.fit.labels["device"])) == [0, 4, 8]
    assert sorted(set(every.test.labels["device"])) == list(range(9))
    assert some.fit.x.shape[0] == 3 * 2  # 3 devices x 1 fit day x 2 clips
