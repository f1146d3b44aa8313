"""Operating points and the link-then-accumulate attack on unlinkable releases."""

from __future__ import annotations

import numpy as np
import pytest

from privacy.evaluation.leakage import Observed, fusion_curve, linkage_curve
from privacy.evaluation.linking import linked_curves, linked_sets
from privacy.evaluation.operating_points import (
    OperatingPoint,
    Targets,
    check_targets,
    identity_via_utility,
    pareto,
)


def _fleet(signal: float, seed: int, devices: int = 6, days: int = 4, per_day: int = 8,
           dims: int = 8) -> tuple[Observed, Observed, Observed]:
    """Clips whose vectors are a device's own direction times ``signal`` plus unit noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(devices + 3, dims))

    def obs(devs: list[int], day0: int) -> Observed:
        dev = np.repeat(devs, days * per_day)
        day = np.tile(np.repeat(np.arange(day0, day0 + days), per_day), len(devs))
        z = signal * centres[dev] + rng.normal(size=(len(dev), dims))
        return Observed(z.astype(np.float32), {"device": dev, "day": day, "wearer": dev})

    targets = list(range(devices))
    return obs(targets, 0), obs(targets, days), obs([devices, devices + 1, devices + 2], 0)


def test_linked_sets_are_the_seed_and_its_nearest_neighbours():
    h = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [0.95, 0.05]], float)
    h /= np.linalg.norm(h, axis=1, keepdims=True)
    sets = linked_sets(h, np.array([0, 2]), np.arange(5), 3)
    assert sets[0].tolist() == [0, 4, 1]
    assert sets[1].tolist() == [2, 3, 1]
    with pytest.raises(ValueError, match="pool of 5"):
        linked_sets(h, np.array([0]), np.arange(5), 7)


def test_unlinkability_stops_accumulation_of_a_weak_per_clip_signal():
    """Averaging 16 true clips of a device names it (oracle); the attacker who must first
    link 16 shuffled clips from a weak per-clip signal cannot; with a strong per-clip
    signal linking works (the control: the attack is not blind)."""
    ks = (1, 16)
    fit, test, pop = _fleet(0.5, seed=0)
    oracle = fusion_curve(fit, test, "wearer", ks, repeats=10, seed=0)
    linked = linked_curves(fit, test, pop, ks, repeats=10, seed=0)
    oracle_link = linkage_curve(pop, test, ks, repeats=10, seed=0)
    assert oracle[16] >= 0.85 and oracle_link[16] >= 0.95
    assert linked["identity"][16] < oracle[16] - 0.3
    assert linked["identity"][16] <= linked["identity"][1] + 0.15  # no accumulation
    assert linked["linkage_auc"][16] <= linked["linkage_auc"][1] + 0.05
    fit, test, pop = _fleet(3.0, seed=1)
    strong = linked_curves(fit, test, pop, ks, repeats=10, seed=0)
    assert strong["identity"][16] >= 0.95
    assert strong["linkage_auc"][16] >= 0.95
    assert set(strong["by_linker"]) == {"profile", "whitened"}


def test_identity_via_the_predicted_utility_label():
    """Each device does one activity: predicting the activity names the device."""
    rng = np.random.default_rng(0)
    dev = np.repeat(np.arange(4), 30)
    z = np.eye(4)[dev] * 3 + rng.normal(scale=0.3, size=(120, 4))
    labels = {"device": dev, "day": np.zeros(120, int), "wearer": dev, "activity": dev}
    from privacy.evaluation.tasks import SYNTHETIC

    assert identity_via_utility(z, z, labels, labels, SYNTHETIC, 0) == 1.0
    mixed = {**labels, "activity": np.zeros(120, int)}  # the same activity everywhere: no signal
    assert identity_via_utility(z, z, mixed, mixed, SYNTHETIC, 0) == pytest.approx(0.25)


def _point(name: str, act: float, k1: float, kmax: float, link: float, psnr: float) -> OperatingPoint:
    return OperatingPoint(name=name, encoder=name, unlinkable=False, randomized=False,
                          activity_acc=act, activity_ref=0.8, identity_k1=k1, identity_kmax=kmax,
                          kmax=64, identity_chance=0.125, linkage_auc_kmax=link, psnr=psnr,
                          psnr_blur=20.0, epsilon_per_device=None, identity_via_activity=0.2)


def test_targets_and_the_pareto_frontier():
    good = _point("good", 0.73, 0.17, 0.22, 0.58, 15.0)
    leaky = _point("leaky", 0.79, 0.30, 1.0, 0.96, 21.0)
    dull = _point("dull", 0.50, 0.20, 0.30, 0.60, 12.0)
    out = check_targets([good, leaky, dull])
    assert out["met_by"] == ["good"]
    miss = out["misses"]["leaky"]
    assert miss["identity_k1"] == pytest.approx(0.30 - 0.175)
    assert miss["identity_kmax"] == pytest.approx(1.0 - 0.225)
    assert miss["linkage_auc"] == pytest.approx(0.36)
    assert miss["psnr"] == pytest.approx(1.0)
    assert miss["activity"] == 0.0
    assert out["misses"]["dull"]["activity"] == pytest.approx(0.72 - 0.50)
    assert pareto([good, leaky, dull]) == ["leaky", "good"]  # dull is beaten by good on both
    strict = check_targets([good], Targets(linkage_auc=0.55))
    assert strict["met_by"] == [] and strict["nearest"]["name"] == "good"


def test_fano_bound_known_cases():
    from privacy.evaluation.operating_points import fano_accuracy_bound, label_entropy

    assert label_entropy(np.array([0, 1, 2, 3] * 5)) == (pytest.approx(2.0), 4)
    # no information: chance; all of it: 1
    assert fano_accuracy_bound(0.0, 2.0, 4) == pytest.approx(0.25, abs=1e-6)
    assert fano_accuracy_bound(2.0, 2.0, 4) == 1.0
    # binary label, I bits: h(1 - a) >= 1 - I; at I = 1 - h(0.1), a = 0.9 exactly
    h = -(0.1 * np.log2(0.1) + 0.9 * np.log2(0.9))
    assert fano_accuracy_bound(1.0 - h, 1.0, 2) == pytest.approx(0.9, abs=1e-6)
    # more information, higher ceiling
    assert fano_accuracy_bound(0.5, 2.0, 4) < fano_accuracy_bound(1.0, 2.0, 4) < 1.0


def test_identity_from_a_noisy_utility_label():
    """Device d always does activity d: a correct label names the device; a label wrong
    with probability 1 - a names another device (never this one)."""
    from privacy.evaluation.operating_points import identity_from_noisy_utility
    from privacy.evaluation.tasks import SYNTHETIC

    dev = np.repeat(np.arange(4), 10)
    labels = {"device": dev, "day": np.zeros(40, int), "wearer": dev, "activity": dev}
    assert identity_from_noisy_utility(labels, labels, SYNTHETIC, 1.0) == 1.0
    assert identity_from_noisy_utility(labels, labels, SYNTHETIC, 0.8) == pytest.approx(0.8)
    # two devices share every activity: the label says nothing beyond the majority guess
    shared = {**labels, "activity": dev % 2, "wearer": dev}
    assert identity_from_noisy_utility(shared, shared, SYNTHETIC, 1.0) == pytest.approx(0.5)
