"""The *reported* epsilon: dp-accounting's privacy-loss-distribution (PLD) accountant.

PLD accounting is tight (it computes the hockey-stick divergence of the composed privacy
loss numerically), RDP is not (q=0.01, sigma=1, 1000 steps, delta=1e-5: PLD 1.828, RDP
2.101). So the figure fedmsr reports to an operator or an auditor comes from here, with a
discretisation that can only over-state epsilon:

* every PLD is built with ``pessimistic_estimate=True`` (dp-accounting's default): losses
  are rounded so that the discretised hockey-stick divergence is an *upper* bound of the
  true one, and truncated tail mass is moved to +infinity (counted as delta). Composition
  (FFT convolution) keeps that property. So ``epsilon_at(history, delta, interval)`` is an
  upper bound on the exact epsilon for every ``interval``.
* the interval is chosen *adaptively*, relative to epsilon: start at 1/100 of an RDP bound,
  halve until two consecutive levels (interval and 2 x interval) agree to 0.2% and the
  interval is at most epsilon/20. A fixed interval (say 1e-4) is either far too coarse for
  epsilon ~ 1e-3 or needlessly slow for epsilon ~ 1000.
* the converged value is multiplied by ``1 + REPORT_MARGIN`` (0.1%): a margin for floating
  point error in the FFT composition, so the report is never below a *finer* PLD computation
  of the same history, yet stays within 2% of it.

Composition is exploited where it is exact: events with equal (q, sigma) are merged into
one self-composition; all q = 1 events (plain Gaussians, no amplification) are merged into
one Gaussian with ``sigma_eff = (sum steps_i / sigma_i**2) ** -1/2``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from privacy.accounting.events import (
    Composition,
    DpEvent,
    EventLike,
    History,
    as_history,
    check_delta,
    composition,
    grouped_steps,
)
from privacy.accounting.rdp import epsilon_from_rdp, rdp_vector

# dp_accounting is imported where it is used: its import (scipy.signal) costs about a
# second, paid by every ClientApp process a SuperNode spawns and every `fedmsr` command,
# most of which never compute an epsilon.
if TYPE_CHECKING:
    from dp_accounting.pld import privacy_loss_distribution as pld_lib

#: Two consecutive discretisation levels must agree to this relative tolerance.
CONVERGENCE_RTOL = 2e-3
#: The reported figure is the converged PLD epsilon times (1 + REPORT_MARGIN).
REPORT_MARGIN = 1e-3
#: Never discretise finer than this (the PMF would not fit in memory for wide losses).
MIN_INTERVAL = 1e-7
_MAX_LEVELS = 10
_SCALE_ORDERS = tuple(float(a) for a in [*range(2, 65), 128, 256])


@dataclass(frozen=True)
class PldReport:
    """The reported epsilon and how it was obtained (for the audit trail)."""

    epsilon: float           # reported: converged PLD epsilon x (1 + REPORT_MARGIN)
    pld_epsilon: float       # the PLD epsilon at `interval`, before the margin
    interval: float          # value_discretization_interval used
    converged: bool          # False: MIN_INTERVAL / level limit hit; still an upper bound
    delta: float
    rdp_fallback: bool = False  # not converged and the RDP bound was smaller: reported


def epsilon_at(history: History, delta: float, interval: float) -> float:
    """Pessimistic PLD epsilon of ``history`` at one discretisation interval."""
    from dp_accounting.pld import privacy_loss_distribution as pld_lib

    groups = grouped_steps(history)
    gaussian_precision = 0.0  # sum steps / sigma^2 over the q = 1 events
    parts: list[pld_lib.PrivacyLossDistribution] = []
    for (q, sigma), steps in sorted(groups.items()):
        if q == 1.0:
            gaussian_precision += steps / sigma**2
            continue
        base = pld_lib.from_gaussian_mechanism(
            standard_deviation=sigma, sampling_prob=q, value_discretization_interval=interval,
            pessimistic_estimate=True)
        parts.append(base.self_compose(steps) if steps > 1 else base)
    if gaussian_precision > 0.0:
        parts.append(pld_lib.from_gaussian_mechanism(
            standard_deviation=1.0 / math.sqrt(gaussian_precision),
            value_discretization_interval=interval, pessimistic_estimate=True))
    if not parts:
        return 0.0
    total = parts[0]
    for p in parts[1:]:
        total = total.compose(p)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # inf is handled
        return float(total.get_epsilon_for_delta(delta))


@lru_cache(maxsize=4096)
def _scale_step_rdp(sample_rate: float, noise_multiplier: float) -> np.ndarray:
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    acc = RdpAccountant(orders=list(_SCALE_ORDERS))
    acc.compose(dp_accounting.PoissonSampledDpEvent(
        sample_rate, dp_accounting.GaussianDpEvent(noise_multiplier)))
    return acc.rdp


def _scale(events: History, delta: float) -> float:
    """A quick upper bound of epsilon (integer-order RDP, ~4x cheaper than the full grid
    for a new (q, sigma)) that only sets the first discretisation interval."""
    from dp_accounting.rdp import compute_epsilon

    vec = sum(steps * _scale_step_rdp(q, s)
              for (q, s), steps in sorted(grouped_steps(events).items()))
    return float(compute_epsilon(_SCALE_ORDERS, vec, delta)[0])


def pld_report(history: Iterable[EventLike], delta: float) -> PldReport:
    """The reported epsilon of a history (see the module docstring for the guarantee).

    Deterministic: the same history (in any order) and delta give the same figure, which
    is what lets enforcement (`would_exceed`) and calibration agree with the report exactly.
    """
    delta = check_delta(delta)
    return _report_of(composition(as_history(history)), delta)


@lru_cache(maxsize=1024)
def _report_of(groups: Composition, delta: float) -> PldReport:
    """`pld_report` of one composition, cached: every figure below depends on the history
    only through its grouped (q, sigma) steps, so every history with the same composition
    (a fleet of devices charged alike, or one device asked again with an unchanged ledger)
    gets the figure computed once, identical to the bit."""
    events = tuple(DpEvent(q, sigma, steps) for (q, sigma), steps in groups)
    if not events:
        return PldReport(0.0, 0.0, 0.0, True, delta)
    scale = _scale(events, delta)
    if not scale > 0.0:
        scale = float(epsilon_from_rdp(rdp_vector(events), delta))
        if scale == 0.0:  # exact: RDP is an upper bound
            return PldReport(0.0, 0.0, 0.0, True, delta)
    interval = max(min(scale / 100.0, 1.0), MIN_INTERVAL)
    coarse = epsilon_at(events, delta, 2.0 * interval)
    fine = coarse
    for _ in range(_MAX_LEVELS):
        fine = epsilon_at(events, delta, interval)
        if fine == 0.0:  # a pessimistic upper bound of 0 is exact
            return PldReport(0.0, 0.0, interval, True, delta)
        if not math.isfinite(fine):  # numerical overflow (absurdly little noise)
            break
        agree = abs(coarse - fine) <= CONVERGENCE_RTOL * fine
        if agree and interval <= fine / 20.0:
            return _report(fine, interval, True, delta)
        nxt = max(min(interval / 2.0, fine / 100.0), MIN_INTERVAL)
        if nxt >= interval:  # cannot refine further
            break
        # The next level's "coarse" is this level only when the interval exactly halves.
        coarse = fine if nxt == interval / 2.0 else epsilon_at(events, delta, 2.0 * nxt)
        interval = nxt
    return _unconverged(events, fine, interval, delta)


def _report(eps: float, interval: float, converged: bool, delta: float) -> PldReport:
    return PldReport(eps * (1.0 + REPORT_MARGIN), eps, interval, converged, delta)


def _unconverged(events: History, eps: float, interval: float, delta: float) -> PldReport:
    """Outside the tested ranges (epsilon below ~1e-5, or sigma so small that the PLD
    overflows) the PLD figure is still an upper bound but may be loose or infinite; the full
    RDP bound is an upper bound too, so report the smaller of the two."""
    report = _report(eps, interval, False, delta)
    rdp = float(epsilon_from_rdp(rdp_vector(events), delta))
    if rdp < report.epsilon:
        return PldReport(rdp, eps, interval, False, delta, rdp_fallback=True)
    return report


def pld_epsilon(history: Iterable[EventLike], delta: float) -> float:
    """The reported epsilon of a history (a float; see :func:`pld_report`)."""
    return pld_report(history, delta).epsilon
