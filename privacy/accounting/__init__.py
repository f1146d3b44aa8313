"""Per-device differential-privacy accounting (the science; no server, no database).

``events``  DP events as plain data and histories that compose by concatenation;
``rdp``     the hot path: RDP vectors over a fixed order grid, epsilon for many devices;
``pld``     the reported epsilon (dp-accounting's PLD accountant, pessimistic, adaptive);
``budget``  epsilon / would_exceed / calibrate_noise / plan_cost.

See docs/privacy-accounting.md for which figure is enforced and which is reported.
"""

from privacy.accounting.budget import (
    PlanCost,
    PlannedRelease,
    calibrate_noise,
    epsilon,
    plan_cost,
    would_exceed,
)
from privacy.accounting.events import (
    DpEvent,
    EventKind,
    as_history,
    compose,
    history_from_json,
    history_to_json,
)
from privacy.accounting.pld import PldReport, pld_epsilon, pld_report
from privacy.accounting.rdp import ORDERS, epsilon_from_rdp, rdp_vector, step_rdp

__all__ = [
    "ORDERS", "DpEvent", "EventKind", "PlanCost", "PlannedRelease", "PldReport", "as_history",
    "calibrate_noise", "compose", "epsilon", "epsilon_from_rdp", "history_from_json",
    "history_to_json", "plan_cost", "pld_epsilon", "pld_report", "rdp_vector", "step_rdp",
    "would_exceed",
]
