"""Noise calibration through dp-accounting's ``mechanism_calibration``, on fedmsr's figures.

``dp_accounting.mechanism_calibration.calibrate_dp_mechanism`` finds the parameter at
which a mechanism reaches a target epsilon (Brent's method, then a check that the value it
returns is *within* the target, with a bisection fallback). It asks a fresh
``PrivacyAccountant`` for each epsilon, so which figure it keeps below the target is the
accountant's. dp-accounting's own PLD accountant discretises at one fixed interval: its
figure is not the one fedmsr reports (adaptive interval plus a margin, ``pld.py``), and a
sigma calibrated on it could report an epsilon a hair over the target. So
:class:`FigureAccountant` puts fedmsr's own figures behind that interface — the reported
(PLD) epsilon, or the RDP bound of the stored vectors — and the library's guarantee becomes
the one fedmsr needs: the returned sigma's *reported* epsilon is <= the target.

The search runs on ``x = -log(sigma)``: epsilon grows with x (the library widens a
bracket upwards only), and a relative tolerance on sigma is an absolute one on x (what the
library takes). Two stages keep it cheap: the RDP bound (one RDP curve per sigma, no PLD)
brackets the answer over [SIGMA_MIN, SIGMA_MAX]; RDP is an upper bound, so its sigma is
enough for the reported figure too, and the reported figure is searched only below it.

Imported lazily by ``budget.calibrate_noise``: dp-accounting's import (scipy) costs about
a second, which most processes never need.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Literal

from dp_accounting import dp_event as dpa_event
from dp_accounting import mechanism_calibration as dpa_calibration
from dp_accounting.privacy_accountant import NeighboringRelation, PrivacyAccountant

from privacy.accounting.events import Composition, DpEvent, composition
from privacy.accounting.pld import pld_epsilon
from privacy.accounting.rdp import epsilon_from_rdp, rdp_vector

#: Which figure a calibration keeps within the target: the reported one, or the RDP bound.
Figure = Literal["pld", "rdp"]
#: The noise multipliers a calibration may return.
SIGMA_MIN = 1e-2
SIGMA_MAX = 1e4


@lru_cache(maxsize=1024)
def _figure(figure: Figure, groups: Composition, delta: float) -> float:
    """The figure of a composition, cached: Brent's method and the library's final check
    ask for the same sigma more than once."""
    events = [DpEvent(q, sigma, steps) for (q, sigma), steps in groups]
    if figure == "rdp":
        return float(epsilon_from_rdp(rdp_vector(events), delta))
    return pld_epsilon(events, delta)


class FigureAccountant(PrivacyAccountant):
    """dp-accounting's accountant interface over fedmsr's reported (or RDP) epsilon.

    Composes what fedmsr releases: Poisson-subsampled Gaussians (a plain Gaussian is q = 1),
    self-composed and composed; anything else is unsupported.
    """

    def __init__(self, figure: Figure) -> None:
        super().__init__(NeighboringRelation.ADD_OR_REMOVE_ONE)
        self.figure = figure
        self.events: list[DpEvent] = []

    def _maybe_compose(self, event: dpa_event.DpEvent, count: int, do_compose: bool
                       ) -> PrivacyAccountant.CompositionErrorDetails | None:
        if isinstance(event, dpa_event.NoOpDpEvent):
            return None
        if isinstance(event, dpa_event.ComposedDpEvent):
            for inner in event.events:
                error = self._maybe_compose(inner, count, do_compose)
                if error is not None:
                    return error
            return None
        if isinstance(event, dpa_event.SelfComposedDpEvent):
            return self._maybe_compose(event.event, count * event.count, do_compose)
        if isinstance(event, dpa_event.GaussianDpEvent):
            q, sigma = 1.0, event.noise_multiplier
        elif isinstance(event, dpa_event.PoissonSampledDpEvent) \
                and isinstance(event.event, dpa_event.GaussianDpEvent):
            q, sigma = event.sampling_probability, event.event.noise_multiplier
        else:
            return PrivacyAccountant.CompositionErrorDetails(
                invalid_event=event, error_message="fedmsr accounts only for "
                "Poisson-subsampled Gaussian mechanisms")
        if do_compose and count > 0:  # `supports` asks with count 0
            self.events.append(DpEvent(q, sigma, count))
        return None

    def get_epsilon(self, target_delta: float) -> float:
        return _figure(self.figure, composition(self.events), target_delta)


def as_dp_accounting_event(events: Sequence[DpEvent]) -> dpa_event.DpEvent:
    """A history as dp-accounting's event tree (what the calibration library composes)."""
    return dpa_event.ComposedDpEvent([dpa_event.SelfComposedDpEvent(
        dpa_event.PoissonSampledDpEvent(e.sample_rate, dpa_event.GaussianDpEvent(
            e.noise_multiplier)), e.steps) for e in events])


def smallest_noise(events_at: Callable[[float], Sequence[DpEvent]], target: float,
                   delta: float, figure: Figure = "pld", rtol: float = 1e-3) -> float:
    """The smallest sigma (to ``rtol``) at which ``events_at(sigma)``'s figure is <= target.

    Raises ValueError when even SIGMA_MAX is not enough; returns SIGMA_MIN when it already is.
    """
    sigma = _calibrate(events_at, target, delta, "rdp", rtol,
                       dpa_calibration.ExplicitBracketInterval(-math.log(SIGMA_MAX),
                                                               -math.log(SIGMA_MIN)))
    if figure == "pld" and sigma > SIGMA_MIN:
        # The reported figure is below the RDP bound: search downwards from the RDP sigma
        # (twice it, a margin the report never needs, as the lower end; half of it as the
        # first guess; the library widens the bracket if that is not enough).
        sigma = _calibrate(events_at, target, delta, "pld", rtol,
                           dpa_calibration.LowerEndpointAndGuess(-math.log(2.0 * sigma),
                                                                 -math.log(sigma / 2.0)))
    reached = _at(events_at, sigma, delta, figure)
    if reached > target:  # the library's contract; checked because the report depends on it
        raise RuntimeError(f"noise calibration returned sigma {sigma} whose {figure} epsilon "
                           f"{reached} is above the target {target}")
    return sigma


def _calibrate(events_at: Callable[[float], Sequence[DpEvent]], target: float, delta: float,
               figure: Figure, rtol: float, bracket: dpa_calibration.BracketInterval) -> float:
    def event_at(x: float) -> dpa_event.DpEvent:
        return as_dp_accounting_event(events_at(math.exp(-x)))

    try:
        x = dpa_calibration.calibrate_dp_mechanism(
            lambda: FigureAccountant(figure), event_at, target, delta,
            bracket_interval=bracket, tol=math.log1p(rtol))
    except ValueError:  # brentq: the bracket's ends are on one side of the target
        if not isinstance(bracket, dpa_calibration.ExplicitBracketInterval):
            raise
        if _at(events_at, SIGMA_MIN, delta, figure) <= target:
            return SIGMA_MIN
        if _at(events_at, SIGMA_MAX, delta, figure) > target:
            raise ValueError(f"target_epsilon {target} needs a noise multiplier above "
                             f"{SIGMA_MAX:g}; raise the target or lower the sample "
                             "rate/steps") from None
        raise
    return math.exp(-x)


def _at(events_at: Callable[[float], Sequence[DpEvent]], sigma: float, delta: float,
        figure: Figure) -> float:
    return _figure(figure, composition(events_at(sigma)), delta)

