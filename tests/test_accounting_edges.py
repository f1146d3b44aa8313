"""Edges of the DP accounting library (privacy/accounting), each against an independent figure.

Pinned here:

* the reported (PLD) figure meets the postconditions its module documents: the pessimistic
  PLD epsilon at the report's interval and at twice it (both recomputed here with
  dp-accounting's ``privacy_loss_distribution``) agree to ``CONVERGENCE_RTOL``, the interval
  is at most epsilon / 20, the report is that epsilon times ``1 + REPORT_MARGIN``; and the
  unconverged (MIN_INTERVAL) and RDP-fallback reports carry the figures they were made of;
* the RDP order grid is exactly the documented one, and RDP -> epsilon agrees with
  dp-accounting's ``compute_epsilon`` around the KL shortcut and with unknown orders;
* budget enforcement at the cap itself (a figure equal to the cap is within it), and the
  whole error messages of every validated input;
* the fleet summary's counts at the near-cap and cap boundaries, which devices it asks
  for a reported figure, and the float figures it hands on.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence

import dp_accounting as dpa
import numpy as np
import pytest
from dp_accounting.pld import privacy_loss_distribution as pld_lib

from privacy.accounting import (
    ORDERS,
    DpEvent,
    EventKind,
    PlannedRelease,
    as_history,
    calibrate_noise,
    epsilon,
    epsilon_from_rdp,
    history_from_json,
    plan_cost,
    pld_epsilon,
    pld_report,
    rdp_vector,
    step_rdp,
    would_exceed,
)
from privacy.accounting import budget, events, fleet, pld, rdp
from privacy.accounting.fleet import NEAR_CAP_FRACTION, FleetBudgets, summarise
from privacy.dp_event import PoissonGaussianEvent
from tests.reference_memo import reference

DELTA = 1e-5
Raw = tuple[float, float, int]

# -- independent references ------------------------------------------------------------------


@reference
def ref_pld_at(raw: Sequence[Raw], delta: float, interval: float) -> float:
    """Pessimistic PLD epsilon at one interval, built here from raw (q, sigma, steps) with
    one group per (q, sigma) and a single plain Gaussian for q = 1 (one q = 1 event only)."""
    parts = []
    for q, sigma, steps in raw:
        if q == 1.0:
            base = pld_lib.from_gaussian_mechanism(
                standard_deviation=sigma / math.sqrt(steps),
                value_discretization_interval=interval, pessimistic_estimate=True)
            parts.append(base)
            continue
        base = pld_lib.from_gaussian_mechanism(
            standard_deviation=sigma, sampling_prob=q, value_discretization_interval=interval,
            pessimistic_estimate=True)
        parts.append(base.self_compose(steps) if steps > 1 else base)
    total = parts[0]
    for p in parts[1:]:
        total = total.compose(p)
    return float(total.get_epsilon_for_delta(delta))


def ref_rdp(raw: Sequence[Raw]) -> dpa.rdp.RdpAccountant:
    acc = dpa.rdp.RdpAccountant(orders=list(ORDERS))
    for q, sigma, steps in raw:
        acc.compose(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(sigma)), steps)
    return acc


def history(raw: Sequence[Raw]) -> tuple[DpEvent, ...]:
    return tuple(DpEvent(q, s, n) for q, s, n in raw)


# -- the reported figure: documented postconditions ------------------------------------------


@pytest.mark.parametrize("raw,delta", [
    ([(0.05, 1.0, 20)], 1e-5),
    ([(0.2, 2.0, 7), (1.0, 3.0, 5)], 1e-5),
    ([(1.0, 4.0, 1)], 1e-3),
    ([(0.01, 0.8, 50), (0.1, 1.5, 3)], 1e-6),
])
def test_converged_report_meets_its_documented_postconditions(raw: list[Raw],
                                                              delta: float) -> None:
    report = pld_report(history(raw), delta)
    at = ref_pld_at(raw, delta, report.interval)
    at_twice = ref_pld_at(raw, delta, 2.0 * report.interval)
    assert report.converged is True and report.rdp_fallback is False
    assert report.delta == delta
    assert report.pld_epsilon == pytest.approx(at, rel=1e-12)
    assert abs(at_twice - at) <= pld.CONVERGENCE_RTOL * at
    assert 0.0 < report.interval <= report.pld_epsilon / 20.0
    assert report.epsilon == report.pld_epsilon * (1.0 + pld.REPORT_MARGIN)
    assert pld_epsilon(history(raw), delta) == report.epsilon
    # Never above the RDP bound of the same history (dp-accounting's own RDP accountant).
    assert report.epsilon <= ref_rdp(raw).get_epsilon(delta)


def test_first_interval_is_a_hundredth_of_the_rdp_scale_halved() -> None:
    """The search starts at 1/100 of an integer-order RDP bound (recomputed here) and only
    halves it: the converged interval is that start over a power of two."""
    raw = [(0.05, 1.0, 20)]
    orders = [float(a) for a in [*range(2, 65), 128, 256]]
    acc = dpa.rdp.RdpAccountant(orders=orders)
    acc.compose(dpa.PoissonSampledDpEvent(0.05, dpa.GaussianDpEvent(1.0)), 20)
    start = min(acc.get_epsilon(DELTA) / 100.0, 1.0)
    report = pld_report(history(raw), DELTA)
    halvings = math.log2(start / report.interval)
    assert halvings == pytest.approx(round(halvings), abs=1e-9) and round(halvings) >= 0
    # the previous level (if there was one) did not yet meet both conditions
    if round(halvings) >= 1:
        coarse = ref_pld_at(raw, DELTA, 2.0 * report.interval)
        coarser = ref_pld_at(raw, DELTA, 4.0 * report.interval)
        met = (abs(coarser - coarse) <= pld.CONVERGENCE_RTOL * coarse
               and 2.0 * report.interval <= coarse / 20.0)
        assert not met


def test_one_interval_is_dp_accountings_pld_bit_for_bit() -> None:
    """At one interval, a single release is the library's one-mechanism PLD itself (not a
    composition of it with nothing, which moves the figure in its last digits), and n steps
    are its n-fold self-composition."""
    for q, sigma, steps, interval in [(0.05, 1.0, 1, 1e-3), (0.3, 0.5, 1, 1e-2),
                                      (0.05, 1.0, 3, 1e-3)]:
        base = pld_lib.from_gaussian_mechanism(
            standard_deviation=sigma, sampling_prob=q, value_discretization_interval=interval,
            pessimistic_estimate=True)
        want = (base.self_compose(steps) if steps > 1 else base).get_epsilon_for_delta(DELTA)
        assert pld.epsilon_at([DpEvent(q, sigma, steps)], DELTA, interval) == want
    assert pld.epsilon_at([], DELTA, 1e-3) == 0.0  # nothing released, nothing spent


def test_q_one_events_merge_into_one_gaussian() -> None:
    """q = 1 events compose exactly into one Gaussian of sigma_eff = (sum n/s^2)^-1/2."""
    parts = [DpEvent(1.0, 2.0, 3), DpEvent(1.0, 3.0, 4)]
    sigma_eff = (3 / 2.0**2 + 4 / 3.0**2) ** -0.5
    merged = pld_report(parts, DELTA)
    one = pld_report([DpEvent(1.0, sigma_eff, 1)], DELTA)
    assert merged.epsilon == pytest.approx(one.epsilon, rel=1e-9)
    assert merged.pld_epsilon == pytest.approx(
        ref_pld_at([(1.0, sigma_eff, 1)], DELTA, merged.interval), rel=1e-9)


def test_tiny_epsilon_stops_at_min_interval_and_reports_the_pld_figure() -> None:
    """epsilon ~ 1.6e-6: MIN_INTERVAL cannot be <= epsilon / 20, so the search stops there
    unconverged; the PLD figure is still below the RDP bound, so it is the one reported."""
    raw = [(1e-3, 37.0, 1)]
    report = pld_report(history(raw), DELTA)
    at = ref_pld_at(raw, DELTA, pld.MIN_INTERVAL)
    rdp_bound = ref_rdp(raw).get_epsilon(DELTA)
    assert report.converged is False and report.rdp_fallback is False
    assert report.interval == pld.MIN_INTERVAL
    assert report.delta == DELTA
    assert report.pld_epsilon == pytest.approx(at, rel=1e-12)
    assert report.pld_epsilon > 0.0 and pld.MIN_INTERVAL > report.pld_epsilon / 20.0
    assert report.epsilon == report.pld_epsilon * (1.0 + pld.REPORT_MARGIN)
    assert report.epsilon < rdp_bound


def test_rdp_fallback_report_keeps_the_pld_figure_it_replaced() -> None:
    """sigma = 0.05 overflows the PLD at the first interval: the report is the RDP bound,
    and the audit fields still say which PLD figure (inf) at which interval was replaced."""
    raw = [(0.3, 0.05, 3)]
    report = pld_report(history(raw), DELTA)
    orders = [float(a) for a in [*range(2, 65), 128, 256]]
    acc = dpa.rdp.RdpAccountant(orders=orders)
    acc.compose(dpa.PoissonSampledDpEvent(0.3, dpa.GaussianDpEvent(0.05)), 3)
    first_interval = max(min(acc.get_epsilon(DELTA) / 100.0, 1.0), pld.MIN_INTERVAL)
    assert report.rdp_fallback is True and report.converged is False
    assert report.delta == DELTA
    assert report.interval == first_interval
    assert report.pld_epsilon == math.inf
    assert report.epsilon == pytest.approx(ref_rdp(raw).get_epsilon(DELTA), rel=1e-9)


def test_zero_epsilon_reports() -> None:
    """An empty history, an RDP bound of 0, and a pessimistic PLD of 0 all report exactly 0
    (each an upper bound, so exact), converged."""
    assert pld_report([], DELTA) == pld.PldReport(0.0, 0.0, 0.0, True, DELTA)
    raw = [(1e-3, 50.0, 1)]
    assert ref_rdp(raw).get_epsilon(1e-3) == 0.0
    assert pld_report(history(raw), 1e-3) == pld.PldReport(0.0, 0.0, 0.0, True, 1e-3)
    raw = [(1e-3, 40.0, 1)]
    report = pld_report(history(raw), DELTA)
    assert ref_rdp(raw).get_epsilon(DELTA) > 0.0
    assert (report.epsilon, report.pld_epsilon, report.converged) == (0.0, 0.0, True)
    assert report.interval > 0.0 and ref_pld_at(raw, DELTA, report.interval) == 0.0
    assert report.delta == DELTA and report.rdp_fallback is False


# -- RDP: the order grid and the conversion ---------------------------------------------------


def documented_grid() -> np.ndarray:
    return np.concatenate([
        np.linspace(1.05, 1.95, 19), np.linspace(2.0, 9.9, 80), np.arange(10.0, 64.0),
        np.array([64, 80, 96, 128, 160, 192, 256, 384, 512, 768, 1024, 2048, 4096.0])])


def test_order_grid_is_exactly_the_documented_one() -> None:
    built = rdp._order_grid()
    expected = documented_grid()
    assert built.shape == (166,) and built.dtype == np.float64
    np.testing.assert_allclose(built, expected, rtol=1e-12, atol=0)
    assert not built.flags.writeable
    assert np.array_equal(ORDERS, built)


@pytest.mark.parametrize("q,sigma", [(0.05, 1.0), (1.0, 2.5), (0.3, 0.7)])
def test_step_rdp_is_dp_accountings_at_every_order(q: float, sigma: float) -> None:
    ours = step_rdp(q, sigma)
    ref = np.asarray(ref_rdp([(q, sigma, 1)]).rdp)
    assert ours.shape == ORDERS.shape and not ours.flags.writeable
    assert np.array_equal(np.isfinite(ours), np.isfinite(ref))
    np.testing.assert_allclose(ours[np.isfinite(ref)], ref[np.isfinite(ref)], rtol=1e-12)


def test_rdp_vector_of_nothing_is_zero_and_adds_steps() -> None:
    assert np.array_equal(rdp_vector([]), np.zeros_like(ORDERS))
    vec = rdp_vector([DpEvent(0.05, 1.0, 3), DpEvent(0.05, 1.0, 4), DpEvent(1.0, 2.0, 2)])
    ref = np.asarray(ref_rdp([(0.05, 1.0, 7), (1.0, 2.0, 2)]).rdp)
    np.testing.assert_allclose(vec, ref, rtol=1e-12)


def ref_compute_epsilon(vec: np.ndarray, delta: float) -> float:
    return float(dpa.rdp.compute_epsilon(list(ORDERS), list(vec), delta)[0])


@pytest.mark.parametrize("delta", [1e-5, 0.3])
def test_kl_shortcut_threshold_agrees_with_dp_accounting(delta: float) -> None:
    """delta**2 + expm1(-r) > 0 means epsilon 0; just above the threshold it does not."""
    threshold = -math.log1p(-delta * delta)
    # ... and at the threshold itself (the float the module compares with) it does not
    # either: there dp-accounting's test is false, and at delta = 1e-5 epsilon is positive.
    exact = float(-np.log1p(-delta * delta))
    for r in (threshold * (1 - 1e-9), threshold * (1 + 1e-6), exact, 0.0, -1.0, 1e-3, 5.0):
        vec = np.full(ORDERS.shape, r)
        got = epsilon_from_rdp(vec, delta)
        assert isinstance(got, float)
        assert got == pytest.approx(ref_compute_epsilon(vec, delta), rel=1e-12, abs=1e-300)


def test_an_event_holds_plain_python_numbers() -> None:
    """NumPy scalars and ints come in (a trainer's figures); plain floats and ints are kept,
    so the event serialises to JSON and compares and hashes by value."""
    e = DpEvent(np.float32(0.25), np.int64(2), np.int64(3))
    assert [type(v) for v in (e.sample_rate, e.noise_multiplier, e.steps)] == [float, float, int]
    assert json.loads(json.dumps(e.to_dict())) == {
        "kind": "local-dp-sgd", "sample_rate": 0.25, "noise_multiplier": 2.0, "steps": 3}
    assert type(DpEvent(1, 1.0, 1).sample_rate) is float


def test_unknown_or_infinite_orders_are_excluded() -> None:
    base = rdp_vector([DpEvent(0.05, 1.0, 100)])
    holes = base.copy()
    holes[::3] = np.nan
    as_inf = np.where(np.isnan(holes), np.inf, holes)
    assert epsilon_from_rdp(holes, DELTA) == pytest.approx(
        ref_compute_epsilon(as_inf, DELTA), rel=1e-12)
    assert epsilon_from_rdp(np.full(ORDERS.shape, np.nan), DELTA) == math.inf
    assert epsilon_from_rdp(np.full(ORDERS.shape, np.inf), DELTA) == math.inf
    many = epsilon_from_rdp(np.stack([base, holes, np.full(ORDERS.shape, np.nan)]), DELTA)
    assert isinstance(many, np.ndarray) and many.shape == (3,)
    assert many[0] == pytest.approx(ref_compute_epsilon(base, DELTA), rel=1e-12)
    assert many[2] == math.inf


def test_epsilon_from_rdp_shape_message() -> None:
    with pytest.raises(ValueError, match=r"^vectors must have 166 orders in the last axis "
                       r"\(privacy\.accounting\.rdp\.ORDERS\), got shape \(2, 3\)$"):
        epsilon_from_rdp(np.zeros((2, 3)), DELTA)


# -- events: whole messages, conversions ------------------------------------------------------


def test_from_dict_messages() -> None:
    with pytest.raises(ValueError, match=r"^DpEvent\.from_dict needs a mapping, got list$"):
        DpEvent.from_dict([1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError,
                       match=r"^DpEvent is missing field\(s\): noise_multiplier, steps$"):
        DpEvent.from_dict({"sample_rate": 0.1})
    with pytest.raises(ValueError, match=r"^DpEvent is missing field\(s\): sample_rate$"):
        DpEvent.from_dict({"noise_multiplier": 1.0, "steps": 2})
    with pytest.raises(ValueError, match=r"^DpEvent got unknown field\(s\): a, zz$"):
        DpEvent.from_dict({"sample_rate": 0.1, "noise_multiplier": 1.0, "steps": 2,
                           "zz": 1, "a": 2})
    event = DpEvent.from_dict({"sample_rate": 0.1, "noise_multiplier": 1.0, "steps": 2})
    assert event == DpEvent(0.1, 1.0, 2, EventKind.LOCAL_DP_SGD)


def test_event_messages_and_normalisation() -> None:
    with pytest.raises(ValueError, match=r"^steps must be an int >= 1, got 0$"):
        DpEvent(0.1, 1.0, 0)
    with pytest.raises(ValueError, match=r"^steps must be an int >= 1, got 2\.5$"):
        DpEvent(0.1, 1.0, 2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^steps must be an int >= 1, got True$"):
        DpEvent(0.1, 1.0, True)
    with pytest.raises(ValueError, match=r"^kind must be one of local-dp-sgd, "
                       r"central-dp-fedavg, randomized-release, got 'secret'$"):
        DpEvent(0.1, 1.0, 1, "secret")  # type: ignore[arg-type]
    event = DpEvent(0.1, 1, 3.0, "randomized-release")  # type: ignore[arg-type]
    assert type(event.steps) is int and event.steps == 3
    assert type(event.noise_multiplier) is float
    assert event.kind is EventKind.RANDOMIZED_RELEASE
    assert DpEvent(0.1, 1.0, 1).steps == 1
    assert event.to_dict() == {"kind": "randomized-release", "sample_rate": 0.1,
                               "noise_multiplier": 1.0, "steps": 3}
    assert event.mechanism == PoissonGaussianEvent(0.1, 1.0, 3)


def test_history_conversions_and_messages() -> None:
    with pytest.raises(ValueError, match=r"^event must be a DpEvent, PoissonGaussianEvent "
                       r"or dict, got int$"):
        as_history([1])  # type: ignore[list-item]
    single = "^events must be a sequence of events, not a single one$"
    for one in (DpEvent(0.1, 1.0, 1), PoissonGaussianEvent(0.1, 1.0, 1),
                {"sample_rate": 0.1}, "abc", b"abc"):
        with pytest.raises(ValueError, match=single):
            as_history(one)  # type: ignore[arg-type]
    assert events.as_event(PoissonGaussianEvent(0.1, 1.0, 0)) is None
    assert events.as_event(PoissonGaussianEvent(0.1, 1.0, 1)) == DpEvent(0.1, 1.0, 1)
    with pytest.raises(ValueError, match="^event history JSON must be a list of events$"):
        history_from_json('{"sample_rate": 0.1}')
    assert history_from_json("[]") == ()


def test_grouped_steps_and_composition() -> None:
    h = history([(0.2, 1.0, 2), (0.1, 3.0, 1), (0.2, 1.0, 5), (0.1, 1.0, 4)])
    assert events.grouped_steps(h) == {(0.2, 1.0): 7, (0.1, 3.0): 1, (0.1, 1.0): 4}
    assert events.composition(h) == (((0.1, 1.0), 4), ((0.1, 3.0), 1), ((0.2, 1.0), 7))
    assert events.composition(h[::-1]) == events.composition(h)


@pytest.mark.parametrize("delta", [0.0, 1.0, -0.5, math.inf, math.nan, True, "0.1"])
def test_check_delta_message(delta: object) -> None:
    with pytest.raises(ValueError, match=r"^delta must be in \(0, 1\), got "
                       + re.escape(repr(delta)) + "$"):
        events.check_delta(delta)  # type: ignore[arg-type]


def test_check_delta_accepts_the_open_interval_as_float() -> None:
    for delta in (5e-324, 0.5, 1.0 - 2**-53, np.float32(0.25)):
        got = events.check_delta(delta)  # type: ignore[arg-type]
        assert type(got) is float and got == float(delta)


# -- budget: the cap itself, messages ---------------------------------------------------------


def test_would_exceed_at_the_cap_itself() -> None:
    """A figure equal to the cap is within it, by history (reported figure) and by vector
    (RDP bound); a hair below the figure is over."""
    planned = [DpEvent(0.05, 1.0, 20)]
    reported = pld_epsilon(planned, DELTA)
    bound = ref_rdp([(0.05, 1.0, 20)]).get_epsilon(DELTA)
    assert reported < bound
    assert not would_exceed([], planned, reported, DELTA)
    assert would_exceed([], planned, reported * (1 - 1e-12), DELTA)
    zero = np.zeros_like(ORDERS)
    vec_bound = float(epsilon_from_rdp(rdp_vector(planned), DELTA))
    assert vec_bound == pytest.approx(bound, rel=1e-9)
    assert not would_exceed(zero, planned, vec_bound, DELTA)
    assert would_exceed(zero, planned, vec_bound * (1 - 1e-12), DELTA)
    # by history, between the two figures: the reported one decides (within)
    assert not would_exceed(planned[:0], planned, (reported + bound) / 2, DELTA)
    assert would_exceed(zero, planned, (reported + bound) / 2, DELTA)


def test_a_planned_release_keeps_its_kind_when_given_noise() -> None:
    central = PlannedRelease(0.2, 1, EventKind.CENTRAL_DP_FEDAVG)
    assert central.with_noise(1.5) == DpEvent(0.2, 1.5, 1, EventKind.CENTRAL_DP_FEDAVG)
    assert PlannedRelease(0.05, 20).with_noise(1.0) == DpEvent(0.05, 1.0, 20,
                                                               EventKind.LOCAL_DP_SGD)


def test_calibrate_noise_searches_to_the_rtol_it_is_given() -> None:
    """On the RDP figure (smooth, so a tiny step in sigma moves it): at rtol 1e-6 a sigma
    3e-6 lower is over the target; the default 1e-3 stops up to 0.1% above the smallest."""
    shape = [PlannedRelease(0.05, 10)] * 3

    def rdp_figure(sigma: float) -> float:
        return ref_rdp([(0.05, sigma, 10)] * 3).get_epsilon(DELTA)

    fine = calibrate_noise(shape, 1.0, DELTA, accountant="rdp", rtol=1e-6)
    assert rdp_figure(fine) <= 1.0 < rdp_figure(fine * (1 - 3e-6))
    coarse = calibrate_noise(shape, 1.0, DELTA, accountant="rdp")
    assert fine <= coarse <= fine * (1 + 1e-3)


def test_budget_messages() -> None:
    with pytest.raises(ValueError, match=r"^RDP vector must have shape \(166,\) "
                       r"\(privacy\.accounting\.rdp\.ORDERS\), got \(3,\)$"):
        epsilon(np.zeros(3), DELTA)
    with pytest.raises(ValueError, match=r"^RDP vector must have shape \(166,\) "
                       r"\(privacy\.accounting\.rdp\.ORDERS\), got \(3,\)$"):
        would_exceed(np.zeros(3), [], 1.0, DELTA)
    for bad in (0, -1.0, math.inf, math.nan, True):
        with pytest.raises(ValueError, match=r"^cap_epsilon must be a finite number > 0, got "
                           + re.escape(repr(bad)) + "$"):
            would_exceed([], [], bad, DELTA)
        with pytest.raises(ValueError, match=r"^target_epsilon must be a finite number > 0, "
                           + "got " + re.escape(repr(bad)) + "$"):
            calibrate_noise([(0.1, 1)], bad, DELTA)
    assert budget._check_positive("x", 5e-324) == 5e-324
    assert type(budget._check_positive("x", 2)) is float
    with pytest.raises(ValueError, match=r"^accountant must be 'pld' or 'rdp', got 'gdp'$"):
        calibrate_noise([(0.1, 1)], 1.0, DELTA, accountant="gdp")  # type: ignore[arg-type]
    shape_msg = (r"^planned_events_shape must be a non-empty list of PlannedRelease or "
                 r"\(sample_rate, steps\) pairs$")
    bad_shapes: list[object] = [[], PlannedRelease(0.1, 1), "ab", b"ab"]
    for bad_shape in bad_shapes:
        with pytest.raises(ValueError, match=shape_msg):
            calibrate_noise(bad_shape, 1.0, DELTA)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^rounds must be an int >= 1, got 0$"):
        budget.plan_events(0, 0.1, 1.0, 1)
    with pytest.raises(ValueError, match=r"^rounds must be an int >= 1, got 2\.0$"):
        budget.plan_events(2.0, 0.1, 1.0, 1)  # type: ignore[arg-type]


def test_epsilon_of_a_vector_and_of_a_history() -> None:
    h = [DpEvent(0.05, 1.0, 20)]
    assert epsilon(rdp_vector(h), DELTA) == pytest.approx(
        ref_rdp([(0.05, 1.0, 20)]).get_epsilon(DELTA), rel=1e-9)
    assert epsilon(h, DELTA) == pld_report(h, DELTA).epsilon
    # an integer array is not a stored vector: it is read as a (bad) history
    with pytest.raises(ValueError, match="^event must be a DpEvent"):
        epsilon(np.zeros(ORDERS.shape, dtype=np.int64), DELTA)


def test_shape_and_plan_helpers() -> None:
    shape = budget._as_shape([(0.1, 3), PlannedRelease(0.2, 1, EventKind.RANDOMIZED_RELEASE)])
    assert shape == [PlannedRelease(0.1, 3), PlannedRelease(0.2, 1,
                                                           EventKind.RANDOMIZED_RELEASE)]
    assert PlannedRelease(0.1, 3).with_noise(2.0) == DpEvent(0.1, 2.0, 3,
                                                             EventKind.LOCAL_DP_SGD)
    with pytest.raises(ValueError, match="steps"):
        budget._as_shape([(0.1, 0)])
    plan = budget.plan_events(3, 0.1, 1.5, 2, EventKind.CENTRAL_DP_FEDAVG)
    assert plan == (DpEvent(0.1, 1.5, 2, EventKind.CENTRAL_DP_FEDAVG),) * 3
    cost = plan_cost(2, 0.05, 1.0, 10, DELTA)
    assert cost.delta == DELTA
    assert cost.events == (DpEvent(0.05, 1.0, 10),) * 2
    assert cost.epsilon == pld_report([DpEvent(0.05, 1.0, 20)], DELTA).epsilon
    assert cost.epsilon_rdp == pytest.approx(
        ref_rdp([(0.05, 1.0, 20)]).get_epsilon(DELTA), rel=1e-9)


def test_schedule_epsilon_by_figure() -> None:
    shape = [PlannedRelease(0.05, 10), PlannedRelease(1.0, 2)]
    sigma = 1.3
    by_rdp = budget.schedule_epsilon(shape, sigma, DELTA, "rdp")
    assert type(by_rdp) is float
    assert by_rdp == pytest.approx(
        ref_rdp([(0.05, sigma, 10), (1.0, sigma, 2)]).get_epsilon(DELTA), rel=1e-9)
    reported = pld_report([DpEvent(0.05, sigma, 10), DpEvent(1.0, sigma, 2)], DELTA).epsilon
    assert budget.schedule_epsilon(shape, sigma, DELTA) == reported
    assert budget.schedule_epsilon(shape, sigma, DELTA, "pld") == reported
    assert reported < by_rdp


# -- fleet summary ----------------------------------------------------------------------------


def asking(values: Sequence[float]) -> tuple[list[int], Callable[[int], float]]:
    asked: list[int] = []

    def reported(i: int) -> float:
        asked.append(i)
        return values[i]
    return asked, reported


def test_fleet_messages() -> None:
    msg = r"^2 RDP bounds but 1 caps: one of each per device$"
    with pytest.raises(ValueError, match=msg):
        FleetBudgets(epsilon_rdp_bound=(1.0, 2.0), caps=(1.0,))
    with pytest.raises(ValueError, match=msg):
        summarise([1.0, 2.0], [1.0], lambda i: 0.0)
    assert FleetBudgets() == FleetBudgets((), (), 0.0, 0, 0, 0)


def test_fleet_boundaries_near_and_at_the_cap() -> None:
    """Reported == cap is exhausted; reported == 0.9 x cap is near; each device counted."""
    cap = [1.0, 1.0, 2.0, 2.0, 4.0, 10.0]
    near_at = NEAR_CAP_FRACTION * 2.0
    values = [1.0, 1.0, near_at, near_at, 1.0, 3.0]
    bounds = [1.5, 1.2, 2.5, 1.8, 4.0, 3.0]
    asked, reported = asking(values)
    got = summarise(bounds, cap, reported)
    assert got.exhausted == 2 and got.near_cap == 2
    assert got.epsilon_spent_max == 3.0
    assert sorted(set(asked)) == sorted(asked)  # each at most once
    # devices 4 and 5 decide the maximum (device 4: 1.0 of 4.0 spent, neither near nor at
    # its cap); devices 0 - 3 have bounds >= 0.9 x cap, so their reported figures count.
    assert asked[:2] == [4, 5] and set(asked) == {0, 1, 2, 3, 4, 5}
    assert got.reported_devices == len(asked) == 6


def test_fleet_bound_exactly_at_the_near_fraction_is_asked() -> None:
    asked, reported = asking([0.9, 0.1])
    got = summarise([0.9, 0.2], [1.0, 1.0], reported)
    assert NEAR_CAP_FRACTION * 1.0 == 0.9
    assert got.near_cap == 1 and got.exhausted == 0
    assert got.epsilon_spent_max == 0.9
    assert asked == [0] and got.reported_devices == 1


def test_fleet_only_devices_that_can_decide_are_asked() -> None:
    """Device 1 (bound 1.0, cap 2.0) can neither beat the max nor be near its cap."""
    asked, reported = asking([3.0, 1.0, 0.6])
    got = summarise([3.0, 1.0, 1.0], [10.0, 2.0, 0.5], reported)
    # device 2 (cap 0.5): reported 0.6 >= cap, so exhausted; device 1 never asked
    assert got == FleetBudgets(epsilon_rdp_bound=[3.0, 1.0, 1.0], caps=[10.0, 2.0, 0.5],
                               epsilon_spent_max=3.0, near_cap=0, exhausted=1,
                               reported_devices=2)
    assert asked == [0, 2]


def test_fleet_near_uses_the_reported_figure_not_the_bound() -> None:
    """Bound 2.0 >= 0.9 x 2.0, but the reported 1.0 is not near 2.0."""
    asked, reported = asking([1.0])
    got = summarise([2.0], [2.0], reported)
    assert (got.near_cap, got.exhausted, got.epsilon_spent_max) == (0, 0, 1.0)


def test_fleet_max_below_one_and_stops_at_a_tied_bound() -> None:
    asked, reported = asking([0.4])
    got = summarise([0.5], [math.inf], reported)
    assert got.epsilon_spent_max == 0.4 and asked == [0]
    # bound equal to the max found so far: no device left can have spent more
    asked, reported = asking([1.0, 0.5])
    got = summarise([1.0, 1.0], [math.inf, math.inf], reported)
    assert got.epsilon_spent_max == 1.0 and asked == [0] and got.reported_devices == 1


def test_fleet_ties_visit_devices_in_input_order() -> None:
    """Among equal bounds the first device (input order) is asked first, deterministically."""
    bounds = [1.0, 1.0, 2.0, 2.0, 2.0, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 1.0, 2.0, 1.0,
              2.0, 2.0]
    asked, reported = asking(bounds)  # every device has spent its whole bound
    got = summarise(bounds, [math.inf] * len(bounds), reported)
    assert asked == [bounds.index(max(bounds))]
    assert got.epsilon_spent_max == 2.0 and got.reported_devices == 1


def test_fleet_figures_are_floats() -> None:
    asked, reported = asking([1.0, 2.0])
    got = summarise([1, 2], [3, 4], reported)
    assert got.epsilon_rdp_bound == [1.0, 2.0] and got.caps == [3.0, 4.0]
    assert all(type(x) is float for x in [*got.epsilon_rdp_bound, *got.caps])
    assert fleet.NEAR_CAP_FRACTION == NEAR_CAP_FRACTION


# -- calibration: the accountant interface and the search -------------------------------------


def test_figure_accountant_composes_what_fedmsr_releases() -> None:
    from dp_accounting.privacy_accountant import NeighboringRelation

    from privacy.accounting.calibration import FigureAccountant

    acc = FigureAccountant("rdp")
    assert acc.neighboring_relation is NeighboringRelation.ADD_OR_REMOVE_ONE
    assert acc.figure == "rdp" and acc.events == []
    sampled = dpa.PoissonSampledDpEvent(0.05, dpa.GaussianDpEvent(1.2))
    tree = dpa.ComposedDpEvent([
        dpa.NoOpDpEvent(),
        dpa.SelfComposedDpEvent(dpa.SelfComposedDpEvent(sampled, 3), 2),
        dpa.ComposedDpEvent([dpa.GaussianDpEvent(2.0), dpa.NoOpDpEvent()]),
    ])
    assert acc.supports(tree) and acc.events == []  # asking does not compose
    acc.compose(tree, 2)
    assert acc.events == [DpEvent(0.05, 1.2, 12), DpEvent(1.0, 2.0, 2)]
    expected = ref_rdp([(0.05, 1.2, 12), (1.0, 2.0, 2)]).get_epsilon(DELTA)
    assert acc.get_epsilon(DELTA) == pytest.approx(expected, rel=1e-9)
    assert FigureAccountant("pld").get_epsilon(DELTA) == 0.0
    pld_acc = FigureAccountant("pld").compose(tree)
    assert pld_acc.get_epsilon(DELTA) == pld_epsilon(
        [DpEvent(0.05, 1.2, 6), DpEvent(1.0, 2.0, 1)], DELTA)


LAPLACE = dpa.LaplaceDpEvent(1.0)
SAMPLED_LAPLACE = dpa.PoissonSampledDpEvent(0.1, LAPLACE)


@pytest.mark.parametrize("event,invalid", [
    (LAPLACE, LAPLACE),
    (SAMPLED_LAPLACE, SAMPLED_LAPLACE),
    (dpa.ComposedDpEvent([dpa.GaussianDpEvent(1.0), LAPLACE, dpa.GaussianDpEvent(3.0)]),
     LAPLACE),
    (dpa.SelfComposedDpEvent(SAMPLED_LAPLACE, 2), SAMPLED_LAPLACE),
])
def test_figure_accountant_names_what_it_refuses(event: dpa.DpEvent,
                                                 invalid: dpa.DpEvent) -> None:
    from privacy.accounting.calibration import FigureAccountant

    acc = FigureAccountant("pld")
    error = acc._maybe_compose(event, 1, True)
    assert error is not None
    assert error.error_message == ("fedmsr accounts only for Poisson-subsampled Gaussian "
                                   "mechanisms")
    assert error.invalid_event == invalid
    assert not acc.supports(event)


def test_history_as_dp_accounting_event() -> None:
    from privacy.accounting.calibration import as_dp_accounting_event

    got = as_dp_accounting_event([DpEvent(0.1, 1.5, 3), DpEvent(1.0, 2.0, 1)])
    assert got == dpa.ComposedDpEvent([
        dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(0.1, dpa.GaussianDpEvent(1.5)), 3),
        dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(1.0, dpa.GaussianDpEvent(2.0)), 1)])


def rdp_eps(q: float, sigma: float, steps: int) -> float:
    return ref_rdp([(q, sigma, steps)]).get_epsilon(DELTA)


def test_smallest_noise_on_the_rdp_figure_is_minimal_to_rtol() -> None:
    from privacy.accounting.calibration import smallest_noise

    def at(sigma: float) -> list[DpEvent]:
        return [DpEvent(1.0, sigma, 50)]

    sigma = smallest_noise(at, 1.0, DELTA, "rdp")  # default rtol 1e-3
    assert rdp_eps(1.0, sigma, 50) <= 1.0
    assert rdp_eps(1.0, sigma * (1 - 3e-3), 50) > 1.0
    asked: dict[float, list[float]] = {0.2: [], 1e-9: []}
    for rtol, seen in asked.items():
        def counted(sigma: float, seen: list[float] = seen) -> list[DpEvent]:
            seen.append(sigma)
            return at(sigma)
        found = smallest_noise(counted, 1.0, DELTA, "rdp", rtol=rtol)
        assert rdp_eps(1.0, found, 50) <= 1.0
        assert rdp_eps(1.0, found / (1 + max(rtol, 1e-3)) ** 2, 50) > 1.0
    # the tolerance is what the search stops at: a coarse one asks for fewer sigmas
    assert len(set(asked[0.2])) < len(set(asked[1e-9]))


@pytest.mark.parametrize("target", [1.0, 8.0])  # sigma above 1, and below 1
def test_smallest_noise_on_the_reported_figure_matches_the_exact_gaussian(target: float
                                                                          ) -> None:
    """One plain Gaussian: the reported figure is within 2% above the exact one, so the
    calibrated sigma is within 2% above the exact sigma for the target (closed form)."""
    from scipy import optimize, stats

    from privacy.accounting.calibration import smallest_noise

    def exact_eps(sigma: float) -> float:
        mu = 1.0 / sigma

        def gap(eps: float) -> float:
            return (stats.norm.cdf(-eps / mu + mu / 2)
                    - math.exp(eps + stats.norm.logcdf(-eps / mu - mu / 2)) - DELTA)
        return optimize.brentq(gap, 0.0, mu * mu + 20 * mu, xtol=1e-12)

    exact_sigma = optimize.brentq(lambda s: exact_eps(s) - target, 0.1, 10.0, xtol=1e-10)
    sigma = smallest_noise(lambda s: [DpEvent(1.0, s, 1)], target, DELTA)  # figure "pld"
    assert exact_sigma <= sigma <= 1.02 * exact_sigma
    assert pld_epsilon([DpEvent(1.0, sigma, 1)], DELTA) <= target
    assert pld_epsilon([DpEvent(1.0, sigma * (1 - 3e-3), 1)], DELTA) > target
    rdp_sigma = smallest_noise(lambda s: [DpEvent(1.0, s, 1)], target, DELTA, "rdp")
    assert sigma < rdp_sigma
    assert (rdp_sigma < 1.0) == (target > 1.0)  # the PLD search starts below 1 for 8.0


def test_smallest_noise_range_ends() -> None:
    from privacy.accounting.calibration import SIGMA_MAX, SIGMA_MIN, smallest_noise

    def at(sigma: float) -> list[DpEvent]:
        return [DpEvent(1.0, sigma, 10_000)]

    with pytest.raises(ValueError, match=r"^target_epsilon 0\.0001 needs a noise multiplier "
                       r"above 10000; raise the target or lower the sample rate/steps$"):
        smallest_noise(at, 1e-4, DELTA, "rdp")
    assert rdp_eps(1.0, SIGMA_MAX, 10_000) > 1e-4
    # a target between SIGMA_MAX's reported figure and its RDP bound: an RDP calibration
    # judges the range end by its own (RDP) figure, so it is out of range
    at_max = [DpEvent(1.0, SIGMA_MAX, 10_000)]
    between = (pld_epsilon(at_max, DELTA) + rdp_eps(1.0, SIGMA_MAX, 10_000)) / 2
    with pytest.raises(ValueError, match="^" + re.escape(
            f"target_epsilon {between} needs a noise multiplier above 10000; raise the "
            "target or lower the sample rate/steps") + "$"):
        smallest_noise(at, between, DELTA, "rdp")
    for figure in ("rdp", "pld"):
        assert smallest_noise(lambda s: [DpEvent(1e-3, s, 1)], 1e4, DELTA,
                              figure) == SIGMA_MIN
    # exactly SIGMA_MIN's figure as the target: SIGMA_MIN reaches it
    reached = rdp_eps(1e-3, SIGMA_MIN, 1)
    assert smallest_noise(lambda s: [DpEvent(1e-3, s, 1)], reached, DELTA,
                          "rdp") == SIGMA_MIN


def test_smallest_noise_refuses_a_sigma_over_the_target(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """The library's contract is checked: a sigma whose figure is above the target is an
    error, not a report."""
    from privacy.accounting import calibration

    monkeypatch.setattr(calibration, "_calibrate", lambda *args: 0.5)
    with pytest.raises(RuntimeError) as raised:
        calibration.smallest_noise(lambda s: [DpEvent(0.1, s, 10)], 1.0, DELTA, "rdp")
    found = re.fullmatch(r"noise calibration returned sigma 0\.5 whose rdp epsilon (\S+) is "
                         r"above the target 1\.0", str(raised.value))
    assert found is not None
    assert float(found.group(1)) == pytest.approx(rdp_eps(0.1, 0.5, 10), rel=1e-9)


def test_calibrate_with_an_open_bracket_reraises_the_library_error() -> None:
    """Only an explicit bracket falls back to the range ends; the library's ValueError for
    any other bracket goes through unchanged."""
    from dp_accounting import mechanism_calibration as dpa_cal

    from privacy.accounting import calibration

    bracket = dpa_cal.LowerEndpointAndGuess(1.0, 0.5)  # a guess below the lower end
    with pytest.raises(ValueError, match=r"^bracket_interval\.lower_endpoint \(1\.0\) must be "
                       r"less than bracket_interval\.initial_guess \(0\.5\)\.$"):
        calibration._calibrate(lambda s: [DpEvent(0.1, s, 10)], 1.0, DELTA, "rdp", 1e-3,
                               bracket)
