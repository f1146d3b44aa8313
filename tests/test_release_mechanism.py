"""The randomized release: clipping, noise scale, its ledger event and its calibration,
checked against dp-accounting's own PLD accountant on the plain Gaussian mechanism."""

from __future__ import annotations

import math

import numpy as np
import pytest
from dp_accounting import dp_event as dpa
from dp_accounting.pld import pld_privacy_accountant

from privacy.accounting.events import EventKind
from privacy.release_mechanism import GaussianRelease, calibrate_release


def _dp_accounting_epsilon(noise_multiplier: float, count: int, delta: float) -> float:
    acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
    acc.compose(dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(noise_multiplier), count))
    return acc.get_epsilon(delta)


@pytest.mark.parametrize(("epsilon", "clips"), [(1.0, 1), (4.0, 16), (8.0, 64)])
def test_calibrated_release_composes_to_the_target_by_dp_accountings_pld(epsilon, clips):
    release = calibrate_release(epsilon, 1e-5, clips, clip_norm=2.0)
    reached = _dp_accounting_epsilon(release.noise_multiplier, clips, 1e-5)
    assert reached <= epsilon * 1.001
    assert reached >= epsilon * 0.98  # not wastefully noisy
    # the noise is relative to the replace-one sensitivity 2C
    assert release.std == pytest.approx(2 * 2.0 * release.noise_multiplier)


def test_rows_are_clipped_and_noised_at_the_stated_scale():
    rel = GaussianRelease(clip_norm=1.5, noise_multiplier=0.5)
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(4000, 8)) * np.array([[10.0]] + [[0.01]] * 3999)
    clipped = rel.clip(mu)
    assert np.linalg.norm(clipped, axis=1).max() <= 1.5 + 1e-9
    np.testing.assert_allclose(clipped[1:], mu[1:])  # small rows are unchanged
    noise = rng.standard_normal(mu.shape)
    out = rel.apply(mu, noise)
    residual = out / rel.scale(8) - clipped
    assert residual.std() == pytest.approx(rel.std, rel=0.03)
    with pytest.raises(ValueError, match="same shape"):
        rel.apply(mu, noise[:3])


def test_the_event_and_the_information_bound():
    rel = GaussianRelease(1.0, 2.0)
    event = rel.event(12)
    assert (event.kind, event.sample_rate, event.noise_multiplier, event.steps) == \
        (EventKind.RANDOMIZED_RELEASE, 1.0, 2.0, 12)
    # capacity of 32 parallel Gaussian channels with total input power C^2 = 1, std 4
    assert rel.information_bits(32) == pytest.approx(16 * math.log2(1 + 1 / (32 * 16)))
    # an independent check: a Gaussian input of that power reaches the bound
    assert rel.information_bits(1) > rel.information_bits(32) / 32
    with pytest.raises(ValueError, match="clip_norm"):
        GaussianRelease(0.0, 1.0)
    with pytest.raises(ValueError, match="at least one clip"):
        rel.event(0)
