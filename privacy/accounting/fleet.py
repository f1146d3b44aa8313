"""A fleet's budget figures as plain numbers: what the ledger hands to the metrics.

The ledger keeps two epsilons per device: the **reported** one (PLD, what `fedmsr budget
show` prints and the dashboards call "ε spent") and the RDP **bound** of the cached vector
(>= the reported one; what enforcement compares to a cap first, before the reported figure
decides). The bound is one NumPy pass for a whole fleet; a reported figure is a PLD
computation of 0.2 - 2 s per distinct history, far too slow for every device of a fleet
whose devices' histories differ (different clip counts mean different sampling rates), on
every scrape. So the fleet figures of the reported epsilon are computed only from the
devices that can decide them (:func:`summarise`): since no device's reported figure is
above its bound, the largest one is found by visiting devices in decreasing bound order
until the next bound cannot beat it, and a device whose bound is under 90% of its cap can
be neither near its cap nor at it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

#: Fraction of its cap at which a device counts as "near exhaustion".
NEAR_CAP_FRACTION = 0.9


@dataclass(frozen=True)
class FleetBudgets:
    """Per tracked device its RDP bound and cap; the reported (PLD) figures of the fleet."""

    epsilon_rdp_bound: Sequence[float] = field(default_factory=tuple)
    #: +inf for a device without a cap.
    caps: Sequence[float] = field(default_factory=tuple)
    #: The largest reported epsilon spent (PLD) of any tracked device (0: none).
    epsilon_spent_max: float = 0.0
    #: Devices whose reported epsilon is >= NEAR_CAP_FRACTION of their cap, not at it.
    near_cap: int = 0
    #: Devices whose reported epsilon reached their cap.
    exhausted: int = 0
    #: How many reported figures deciding these took (the rest could not change them).
    reported_devices: int = 0

    def __post_init__(self) -> None:
        if len(self.epsilon_rdp_bound) != len(self.caps):
            raise ValueError(f"{len(self.epsilon_rdp_bound)} RDP bounds but {len(self.caps)} "
                             "caps: one of each per device")


def summarise(bounds: Sequence[float], caps: Sequence[float],
              reported: Callable[[int], float]) -> FleetBudgets:
    """The fleet figures, asking `reported(i)` (device i's PLD epsilon, <= bounds[i]) only
    for the devices that can decide them; each at most once."""
    bound = np.asarray(bounds, dtype=float)
    cap = np.asarray(caps, dtype=float)
    if bound.shape != cap.shape:
        raise ValueError(f"{bound.size} RDP bounds but {cap.size} caps: one of each per device")
    known: dict[int, float] = {}

    def spent(i: int) -> float:
        if i not in known:
            known[i] = float(reported(i))
        return known[i]

    top = 0.0
    for i in np.argsort(-bound, kind="stable").tolist():
        if bound[i] <= top:
            break  # no device left can have spent more than `top`
        top = max(top, spent(i))
    near = exhausted = 0
    for i in np.flatnonzero(bound >= NEAR_CAP_FRACTION * cap).tolist():
        eps = spent(i)
        if eps >= cap[i]:
            exhausted += 1
        elif eps >= NEAR_CAP_FRACTION * cap[i]:
            near += 1
    return FleetBudgets(epsilon_rdp_bound=bound.tolist(), caps=cap.tolist(),
                        epsilon_spent_max=top, near_cap=near, exhausted=exhausted,
                        reported_devices=len(known))
