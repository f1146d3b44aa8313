"""Budget questions, answered with the right accountant for each.

* :func:`epsilon` — the *reported* epsilon of a history (PLD, never below the exact value,
  within 2% of it); from a stored RDP vector alone only the RDP bound is available.
* :func:`would_exceed` — enforcement. It must never let a device past its cap, and must be
  cheap because selection asks it for every eligible device every round. Stage 1 is RDP
  (an upper bound, a multiply-add on the stored vector): RDP within the cap means the
  exact epsilon is too. Only when RDP says "over" and the history is known does stage 2
  ask the reported (PLD) figure, so a device is refused exactly when its *reported*
  epsilon would pass the cap — what the operator sees and what is enforced agree.
* :func:`calibrate_noise` — the noise multiplier that makes a planned schedule reach a
  target epsilon: dp-accounting's calibration, run on the reported accountant by default
  (or on RDP, to match a vector-only enforcement), so the plan's epsilon is <= the target.
* :func:`plan_cost` — what R rounds at (q, sigma, steps per round) cost.

Opacus' GDP accountant is never used: it reports *below* the tight bound.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeGuard

import numpy as np

from privacy.accounting.events import (
    DpEvent,
    EventKind,
    EventLike,
    History,
    as_history,
    check_delta,
)
from privacy.accounting.pld import pld_epsilon
from privacy.accounting.rdp import ORDERS, epsilon_from_rdp, rdp_vector
from privacy.checks import is_finite, is_int

HistoryOrVector = np.ndarray | Iterable[EventLike]

if TYPE_CHECKING:  # the module itself is imported where it is used (it imports dp-accounting)
    from privacy.accounting.calibration import Figure


def _is_vector(x: object) -> TypeGuard[np.ndarray]:
    return isinstance(x, np.ndarray) and x.dtype.kind == "f"


def _check_vector(v: np.ndarray) -> np.ndarray:
    if v.shape != ORDERS.shape:
        raise ValueError(f"RDP vector must have shape {ORDERS.shape} "
                         f"(privacy.accounting.rdp.ORDERS), got {v.shape}")
    return v


def epsilon(history_or_vector: HistoryOrVector, delta: float) -> float:
    """Reported epsilon of an event history (PLD); RDP epsilon of a stored RDP vector."""
    delta = check_delta(delta)
    if _is_vector(history_or_vector):
        return float(epsilon_from_rdp(_check_vector(history_or_vector), delta))
    return pld_epsilon(as_history(history_or_vector), delta)


def _check_positive(name: str, value: float) -> float:
    if not is_finite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def would_exceed(current: HistoryOrVector, planned_events: Iterable[EventLike],
                 cap_epsilon: float, delta: float) -> bool:
    """True when ``current`` composed with ``planned_events`` would pass ``cap_epsilon``.

    ``current`` is the device's history (exact decision against the reported figure) or
    its stored RDP vector (RDP decision: conservative, may refuse a device whose reported
    epsilon would still fit).
    """
    cap = _check_positive("cap_epsilon", cap_epsilon)
    delta = check_delta(delta)
    planned = as_history(planned_events)
    if _is_vector(current):
        vec = _check_vector(current) + rdp_vector(planned)
        return bool(epsilon_from_rdp(vec, delta) > cap)
    history = as_history(current) + planned
    if epsilon_from_rdp(rdp_vector(history), delta) <= cap:
        return False  # RDP is an upper bound of the exact epsilon and of the report's base
    return pld_epsilon(history, delta) > cap


@dataclass(frozen=True)
class PlannedRelease:
    """The shape of a planned release: everything but the noise multiplier."""

    sample_rate: float
    steps: int
    kind: EventKind = EventKind.LOCAL_DP_SGD

    def with_noise(self, sigma: float) -> DpEvent:
        return DpEvent(self.sample_rate, sigma, self.steps, self.kind)


def _as_shape(planned: Sequence[PlannedRelease | tuple[float, int]]) -> list[PlannedRelease]:
    if isinstance(planned, (PlannedRelease, str, bytes)) or not planned:
        raise ValueError("planned_events_shape must be a non-empty list of "
                         "PlannedRelease or (sample_rate, steps) pairs")
    shape = [p if isinstance(p, PlannedRelease) else PlannedRelease(*p) for p in planned]
    for p in shape:  # validate sample_rate / steps now, with the event's own messages
        p.with_noise(1.0)
    return shape


def schedule_epsilon(shape: Sequence[PlannedRelease], sigma: float, delta: float,
                     accountant: Figure = "pld") -> float:
    """Epsilon of the planned shape at noise multiplier ``sigma``."""
    events = [p.with_noise(sigma) for p in shape]
    if accountant == "rdp":
        return float(epsilon_from_rdp(rdp_vector(events), delta))
    return pld_epsilon(events, delta)


def calibrate_noise(planned_events_shape: Sequence[PlannedRelease | tuple[float, int]],
                    target_epsilon: float, delta: float, *, accountant: Figure = "pld",
                    rtol: float = 1e-3) -> float:
    """Smallest noise multiplier (to ``rtol``) whose schedule epsilon is <= the target.

    dp-accounting's ``mechanism_calibration`` does the search (see ``calibration.py``), on
    the reported figure itself: the returned sigma's *reported* epsilon is <= the target
    (with ``accountant="rdp"``: its RDP epsilon, what vector-only enforcement checks).
    """
    target = _check_positive("target_epsilon", target_epsilon)
    delta = check_delta(delta)
    if accountant not in ("pld", "rdp"):
        raise ValueError(f"accountant must be 'pld' or 'rdp', got {accountant!r}")
    shape = _as_shape(planned_events_shape)
    # Here, not at the top: dp-accounting's import costs a second to every process.
    from privacy.accounting.calibration import smallest_noise

    return smallest_noise(lambda sigma: [p.with_noise(sigma) for p in shape], target, delta,
                          accountant, rtol)


@dataclass(frozen=True)
class PlanCost:
    """What a plan costs: the reported epsilon, the RDP (enforcement) bound, the events."""

    epsilon: float
    epsilon_rdp: float
    delta: float
    events: History


def plan_events(rounds: int, sample_rate: float, noise_multiplier: float,
                steps_per_round: int, kind: EventKind = EventKind.LOCAL_DP_SGD) -> History:
    """The history a plan of ``rounds`` identical releases would add."""
    if not is_int(rounds) or rounds < 1:
        raise ValueError(f"rounds must be an int >= 1, got {rounds!r}")
    event = DpEvent(sample_rate, noise_multiplier, steps_per_round, kind)
    return (event,) * int(rounds)


def plan_cost(rounds: int, sample_rate: float, noise_multiplier: float,
              steps_per_round: int, delta: float,
              kind: EventKind = EventKind.LOCAL_DP_SGD) -> PlanCost:
    """Epsilon of ``rounds`` rounds of ``steps_per_round`` steps at (q, sigma)."""
    delta = check_delta(delta)
    events = plan_events(rounds, sample_rate, noise_multiplier, steps_per_round, kind)
    return PlanCost(epsilon=pld_epsilon(events, delta),
                    epsilon_rdp=float(epsilon_from_rdp(rdp_vector(events), delta)),
                    delta=delta, events=events)
