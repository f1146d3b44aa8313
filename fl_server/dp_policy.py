"""A run's DP mode as one object, with one entry point per stage of a round.

`fedmsr run --dp none|local|central|both` (docs/privacy-accounting.md) decides what each
round charges whom. The federation loop asks this policy, built once at run start, at
each stage, and never inspects strategies or modes itself:

1. **admit** (after check-in): devices whose *own* ledger declined the round are left out,
   the totals devices report are audited against the server's ledger, and the round's
   planned charges are worked out (`strategies.budget_selection.RoundPlan`): under
   ``local`` a device *sent* a train message is charged its own ``(q = batch / its
   clips, sigma, steps)`` DP-SGD event (client sampling does not amplify it: the server
   knows who took part); under ``central`` every eligible device is charged
   ``(q_client, sigma_central, 1 step)``, drawn or not; ``both`` charges both;
2. **select**: the strategy samples among the devices that can afford the round, and
   the ledger reserves their releases in one transaction before a single message leaves
   (`strategies.budget_selection.BudgetSelection`);
3. (the release itself is the strategy's: central DP-FedAvg noises the sum,
   `strategies.central_dp`);
4. **commit** (after the round's checkpoint): reserved -> committed; on resume, every
   checkpointed round's reservations are committed;
5. **record**: the round's budget figures for its history record.

Only a registry-backed run has a ledger (device identities across runs); without one,
`--epsilon-cap` is refused and devices still keep their own ledgers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from fl_server import privacy_ledger
from fl_server.checkin import Roster
from fl_server.config import RunConfig
from fl_server.dp_modes import central_params, require_ledger_for_caps
from fl_server.registry.db import resolve_url
from fl_server.registry_ledger import RegistryLedger
from privacy.accounting import DpEvent
from privacy.wire.budget import planned_local_event
from privacy.wire.checkin import CheckinAnswer
from privacy.wire.round_record import BudgetRecord, CentralDpRecord
from privacy.wire.train import TrainConfig
from strategies.budget_selection import BudgetExhausted, BudgetSelection, RoundPlan
from strategies.central_dp import CentralDpParams

log = logging.getLogger("fedmsr.budget")


@dataclass(frozen=True)
class Admission:
    """Who takes part in a round once check-in's budget answers are in."""

    #: Node ids that may be sampled (own-ledger refusals left out).
    candidates: tuple[int, ...]
    #: Device index -> the reason its own ledger gave for declining.
    declined: Mapping[int, str] = field(default_factory=dict)
    #: Devices reporting more spend than the server recorded / less (expected).
    disagreements: int = 0
    device_reported_less: int = 0
    #: The ledger's view of the round (registry-backed DP runs only).
    plan: RoundPlan | None = None


class DpPolicy:
    """See the module docstring. Build with :meth:`for_config`."""

    def __init__(self, mode: str, train: TrainConfig, min_devices: int, run_id: str,
                 central: CentralDpParams | None = None,
                 ledger: RegistryLedger | None = None) -> None:
        self.mode, self.train, self.run_id = mode, train, run_id
        self.min_devices = int(min_devices)
        self.central = central
        self.ledger = ledger
        self.selection = None if ledger is None else BudgetSelection(ledger, min_devices)
        #: Devices whose own ledger's refusal was logged already (once per run, not per round).
        self._announced: set[int] = set()

    @classmethod
    def for_config(cls, cfg: RunConfig, train: TrainConfig) -> DpPolicy:
        require_ledger_for_caps(cfg)
        ledger = None
        if cfg.device_indices is not None and cfg.dp_mode != "none":
            ledger = RegistryLedger(resolve_url(), cfg.run_id, cfg.delta, cfg.epsilon_cap)
        return cls(cfg.dp_mode, train, cfg.min_train_devices, cfg.run_id,
                   central_params(cfg), ledger)

    @property
    def private(self) -> bool:
        """Any DP mode: devices keep un-noised metrics of their clips to themselves."""
        return self.mode != "none"

    # -- 1. admit --------------------------------------------------------------------------

    def admit(self, server_round: int, roster: Roster) -> Admission:
        """Leave out own-ledger refusals, audit reported totals, plan the round's charges.

        Raises BudgetExhausted (nothing sent) when too few devices are left.
        """
        if not self.private:
            return Admission(tuple(sorted(roster.devices)))
        taking_part: dict[int, int] = {}
        declined: dict[int, str] = {}
        for node, index in roster.devices.items():
            answer = roster.answers.get(node)
            if answer is not None and answer.declined is not None:
                declined[index] = answer.declined
            else:
                taking_part[node] = index
        labelled = {f"device {index}": why for index, why in declined.items()}
        if len(taking_part) < self.min_devices:  # the run stops; its one message says why
            raise BudgetExhausted(server_round, len(taking_part), self.min_devices, [],
                                  labelled)
        fresh = sorted(set(declined) - self._announced)
        if fresh:  # a device out of budget stays out: said once, when it first declines
            self._announced.update(fresh)
            log.warning("round %d: %d device(s) out of their own budget from now on "
                        "(device %s); `fedmsr budget show` lists the spend", server_round,
                        len(fresh), ", ".join(map(str, fresh)))
        admission = Admission(tuple(sorted(taking_part)), declined)
        if self.ledger is None:
            return admission
        ids = self.ledger.device_ids(sorted(roster.devices.values()))
        more, less = self._audit(roster, ids)
        plan = RoundPlan(
            ledger_ids={node: ids[index] for node, index in taking_part.items()},
            if_sent={node: self._local(roster.answers.get(node)) for node in taking_part},
            every_eligible=(self.central.event(),) if self.central else (),
            declined=labelled)
        return Admission(admission.candidates, declined, more, less, plan)

    def _local(self, answer: CheckinAnswer | None) -> tuple[DpEvent, ...]:
        """The local DP-SGD event a device will report for the clips it said it holds."""
        clips = answer.num_clips if answer is not None else 0
        event = planned_local_event(self.train, clips or 1)
        return () if event is None else (event,)

    def _audit(self, roster: Roster, ids: Mapping[int, int]) -> tuple[int, int]:
        """(devices reporting more spend than the server recorded, devices reporting less)."""
        assert self.ledger is not None
        more = less = 0
        for node, index in sorted(roster.devices.items()):
            answer = roster.answers.get(node)
            if answer is None or answer.ledger is None:
                continue
            found = privacy_ledger.audit_device_report(self.ledger.url, ids[index],
                                                       answer.ledger, run_id=self.run_id)
            if found is not None and found.direction == "server-under-counted":
                more += 1
                log.warning("device %d reports epsilon %.4g over %d releases, the server "
                            "recorded %.4g over %d", index, found.device_epsilon,
                            found.device_events, found.server_epsilon, found.server_events)
            elif found is not None:
                less += 1
        return more, less

    # -- 2. select ---------------------------------------------------------------------------

    def select(self, server_round: int, admission: Admission,
               sample: Callable[[list[int]], Sequence[int]]) -> list[int]:
        """The nodes to send the round's train message to (releases reserved first)."""
        if self.selection is None or admission.plan is None:
            return sorted(sample(list(admission.candidates)))
        return self.selection.select(server_round, admission.plan, admission.candidates,
                                     sample)

    # -- 4. commit ---------------------------------------------------------------------------

    def commit(self, server_round: int) -> None:
        """After the round's checkpoint: its reservations become committed."""
        if self.selection is not None:
            self.selection.commit(server_round)

    def commit_checkpointed(self, checkpoint_round: int) -> int:
        """On resume: commit the reservations of every round the checkpoint already holds (a
        kill between checkpoint and commit left them reserved); the number of rows."""
        if self.ledger is None or checkpoint_round < 1:
            return 0
        return privacy_ledger.commit_through(self.ledger.url, self.ledger.run_id,
                                             checkpoint_round)

    # -- 5. record ---------------------------------------------------------------------------

    def record(self, server_round: int, admission: Admission,
               central: CentralDpRecord | None) -> BudgetRecord:
        """The round's budget figures for its history record."""
        reserved = refused = None
        if self.selection is not None:
            reserved = len(self.selection.reserved.get(server_round, []))
            refused = tuple(sorted(r.name for r in self.selection.refused.get(server_round, [])))
        return BudgetRecord(
            ledger_disagreements=admission.disagreements,
            ledger_device_reported_less=admission.device_reported_less,
            budget_declined=tuple(sorted(admission.declined)),
            budget_reserved=reserved, budget_refused=refused, central_dp=central)
