"""Budget-aware selection: sample only devices whose planned release keeps them within
their privacy cap, and charge them before anything is sent.

It composes with any sampler (`SeededFedAvg.sample`, `CentralDpFedAvg.sample`, ...): the
strategy samples as it always does, from the eligible devices only. One round:

1. the caller says who checked in and what each would be charged (:class:`RoundPlan`):
   ``if_sent`` — events charged to a device that is *sent* a train message (local DP-SGD:
   the device's own q, sigma, steps); ``every_eligible`` — events charged to *every*
   eligible device whether it is drawn or not (central DP-FedAvg under Poisson sampling);
2. a read-only pre-check against the ledger keeps the devices for which
   ``every_eligible + if_sent`` fits their cap; with fewer than ``min_train_nodes`` left the
   round does not happen: :class:`BudgetExhausted` (the run then stops with status
   ``budget-exhausted`` and this message), never a round with nobody in it;
3. the strategy samples among them;
4. the ledger **reserves** the releases (one transaction that re-checks the caps) and only
   the devices it reserved for get their message: reservation happens before the caller
   pushes a single message, so a reserved release counts as spent even if the server dies
   right after sending. A device the reservation refuses (another server spent its budget
   in between) gets nothing.
5. after the round is aggregated and checkpointed, :meth:`commit` marks the releases done.

The ledger is behind the small :class:`BudgetLedger` protocol (device ids are whatever the
ledger keys on; fedmsr's is the registry's `devices.id`), so this module needs no database.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from privacy.accounting import DpEvent

log = logging.getLogger("fedmsr.budget")
#: How many refused devices a BudgetExhausted message names before "and N more".
NAMED_IN_MESSAGE = 10


class RefusalLike(Protocol):
    """A device whose planned release would pass its cap (`fl_server.privacy_ledger.Refusal`)."""

    @property
    def device_id(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def epsilon_spent(self) -> float: ...
    @property
    def epsilon_cap(self) -> float: ...
    @property
    def delta(self) -> float: ...


class BudgetLedger(Protocol):
    """The three questions selection asks a per-device budget ledger."""

    def eligible(self, server_round: int, planned: Mapping[int, Sequence[DpEvent]]
                 ) -> tuple[list[int], list[RefusalLike]]:
        """Read-only: the devices whose planned events fit, and the refusals of the rest.
        Events already reserved for this round (a resumed round) must not count twice."""
        ...

    def reserve(self, server_round: int, releases: Mapping[int, Sequence[DpEvent]]
                ) -> tuple[list[int], list[RefusalLike]]:
        """Charge the releases (idempotent per device, round and kind); refused: nothing."""
        ...

    def commit(self, server_round: int, device_ids: Sequence[int]) -> None:
        """The round is aggregated and checkpointed: reserved -> committed."""
        ...


class BudgetExhausted(RuntimeError):
    """Too few devices have budget left for a round: the run stops cleanly."""

    def __init__(self, server_round: int, eligible: int, needed: int,
                 refusals: Sequence[RefusalLike],
                 declined: Mapping[str, str] | None = None) -> None:
        self.server_round, self.eligible, self.needed = server_round, eligible, needed
        self.refusals, self.declined = tuple(refusals), dict(declined or {})
        super().__init__(exhausted_message(server_round, eligible, needed, self.refusals,
                                           self.declined))

    @property
    def summary(self) -> str:
        """The message without the device list: one short line for a terminal (the full
        message, every device and its cap, is the run's recorded reason)."""
        out = len(self.refusals) + len(self.declined)
        return (f"privacy budget exhausted before round {self.server_round}: {out} device(s) "
                f"out of budget, {self.eligible} can afford the round, {self.needed} needed")


def exhausted_message(server_round: int, eligible: int, needed: int,
                      refusals: Sequence[RefusalLike],
                      declined: Mapping[str, str] | None = None) -> str:
    """One line: how many are left, how many are needed, which devices are out and at what
    cap (the server ledger's refusals, then the devices whose own ledger declined)."""
    named = [f"{r.name} (id {r.device_id}: epsilon {r.epsilon_spent:.3g} of cap "
             f"{r.epsilon_cap:g} at delta {r.delta:g})" for r in refusals]
    named += [f"{who} declined: {why}" for who, why in sorted((declined or {}).items())]
    more = f" and {len(named) - NAMED_IN_MESSAGE} more" if len(named) > NAMED_IN_MESSAGE else ""
    out = "; ".join(named[:NAMED_IN_MESSAGE]) + more if named else "none"
    return (f"privacy budget exhausted before round {server_round}: {eligible} device(s) can "
            f"afford the round's release, {needed} needed; over their cap: {out}")


@dataclass(frozen=True)
class RoundPlan:
    """The checked-in nodes of a round: who they are in the ledger, what each would cost."""

    ledger_ids: Mapping[int, int]                          # node id -> ledger device id
    if_sent: Mapping[int, tuple[DpEvent, ...]] = field(default_factory=dict)
    every_eligible: tuple[DpEvent, ...] = ()
    #: Devices left out because their *own* ledger said no (label -> the device's reason).
    declined: Mapping[str, str] = field(default_factory=dict)

    def planned(self, node: int) -> tuple[DpEvent, ...]:
        """Everything the node could be charged this round (if it is sampled)."""
        return self.every_eligible + self.if_sent.get(node, ())

    def charged(self, node: int, sent: bool) -> tuple[DpEvent, ...]:
        return self.every_eligible + (self.if_sent.get(node, ()) if sent else ())


class BudgetSelection:
    """Sampling restricted to devices with budget left; releases reserved before sending.

    Not a strategy: it is handed the round's sampler (the strategy's `sample`) and decides
    around it (pre-check, sample among the eligible, reserve), so any strategy composes
    with it and none needs to know budgets exist.
    """

    def __init__(self, ledger: BudgetLedger, min_train_nodes: int) -> None:
        self.ledger = ledger
        self.min_train_nodes = int(min_train_nodes)
        self.reserved: dict[int, list[int]] = {}
        self.refused: dict[int, list[RefusalLike]] = {}
        #: Devices whose refusal was logged already (once per run, not every round).
        self._announced: set[int] = set()

    def select(self, server_round: int, plan: RoundPlan, candidates: Sequence[int],
               sample: Callable[[list[int]], Sequence[int]]) -> list[int]:
        """The nodes to send this round's train message to, with their releases reserved.

        `candidates` are the admitted nodes; those without a ledger id are left out.
        Raises :class:`BudgetExhausted` (nothing sent) when too few can afford the round.
        """
        nodes = [n for n in sorted(candidates) if n in plan.ledger_ids]
        eligible = self._eligible(server_round, plan, nodes)
        sampled = sorted(sample(eligible))
        return self._reserve(server_round, plan, eligible, sampled)

    def _eligible(self, server_round: int, plan: RoundPlan, nodes: list[int]) -> list[int]:
        planned = {plan.ledger_ids[n]: plan.planned(n) for n in nodes if plan.planned(n)}
        ok, refusals = self.ledger.eligible(server_round, planned) if planned else ([], [])
        fits = set(ok)
        eligible = [n for n in nodes if not plan.planned(n) or plan.ledger_ids[n] in fits]
        self.refused[server_round] = list(refusals)
        if len(eligible) < self.min_train_nodes:  # the run stops; its one message says why
            raise BudgetExhausted(server_round, len(eligible), self.min_train_nodes, refusals,
                                  plan.declined)
        fresh = [r for r in refusals if r.device_id not in self._announced]
        if fresh:  # a device over its cap stays over it: said once, when it first is
            self._announced.update(r.device_id for r in fresh)
            log.warning("round %d: %d device(s) over their privacy cap, left out from now "
                        "on: %s", server_round, len(fresh),
                        ", ".join(f"{r.name} ({r.epsilon_spent:.3g}/{r.epsilon_cap:g})"
                                  for r in fresh[:NAMED_IN_MESSAGE]))
        return eligible

    def _reserve(self, server_round: int, plan: RoundPlan, eligible: list[int],
                 sampled: list[int]) -> list[int]:
        sent = set(sampled)
        releases = {plan.ledger_ids[n]: plan.charged(n, n in sent) for n in eligible}
        releases = {device: events for device, events in releases.items() if events}
        if not releases:
            self.reserved[server_round] = []
            return sampled
        reserved, refusals = self.ledger.reserve(server_round, releases)
        self.reserved[server_round] = sorted(reserved)
        self.refused.setdefault(server_round, []).extend(refusals)
        keep = set(reserved)
        out = [n for n in sampled if not plan.charged(n, True) or plan.ledger_ids[n] in keep]
        population = len([n for n in eligible
                          if not plan.every_eligible or plan.ledger_ids[n] in keep])
        taking_part = population if plan.every_eligible else len(out)
        if taking_part < self.min_train_nodes:
            # Only when another process spent the budget between pre-check and reservation;
            # what was reserved stays spent (conservative), nothing is sent.
            raise BudgetExhausted(server_round, taking_part, self.min_train_nodes,
                                  self.refused[server_round], plan.declined)
        return out

    def commit(self, server_round: int) -> None:
        """Mark the round's reservations committed (after aggregation and checkpoint)."""
        reserved = self.reserved.get(server_round, [])
        if reserved:
            self.ledger.commit(server_round, reserved)
