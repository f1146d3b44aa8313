"""A fleet's budget figures as plain numbers: what the ledger hands to the metrics.

Two epsilons per device, because the ledger keeps two: the **reported** one (PLD, what
`fedmsr budget show` prints and the dashboards call "ε spent") and the RDP **bound** of
the cached vector (>= the reported one; what enforcement compares to a cap first, before
the reported figure decides). Keeping both in one value means a dashboard can never show
the bound under the name of the spend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FleetBudgets:
    """Per tracked device, in the same order: reported epsilon, RDP bound and cap."""

    epsilon_spent: Sequence[float] = field(default_factory=tuple)
    epsilon_rdp_bound: Sequence[float] = field(default_factory=tuple)
    #: +inf for a device without a cap.
    caps: Sequence[float] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        sizes = {len(self.epsilon_spent), len(self.epsilon_rdp_bound), len(self.caps)}
        if len(sizes) != 1:
            raise ValueError(f"{len(self.epsilon_spent)} spent epsilons, "
                             f"{len(self.epsilon_rdp_bound)} RDP bounds and {len(self.caps)} "
                             "caps: one of each per device")
