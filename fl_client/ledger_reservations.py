"""The two moments a device consults its own privacy ledger in a DP run.

A device does not have to trust the server's bookkeeping, so:

* **check-in** — it reports its own total (`privacy.wire.budget.LedgerReport`), and under
  central DP-FedAvg it charges itself the round's ``(q, sigma, 1)`` event *now*: the
  accountant charges every device in the Poisson population whether it is drawn or not,
  and a device that checks in offers itself to the draw. If its own ledger says the
  round's planned release (central, plus its local DP-SGD event under ``--dp both``) would
  pass its own cap, it declines and the server leaves it out;
* **train** — before touching its clips it records the local DP-SGD event it is about to
  incur (the same ``(q, sigma, steps)`` the trainer will report), on the digest of the
  round's inputs, and refuses with an error reply if that would pass its cap. A round
  trained again on other inputs is a second release and is charged again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flwr.app import Context

from fl_client.device_ledger import DeviceLedgerError
from fl_client.ledger_location import device_ledger
from privacy.accounting import DpEvent
from privacy.wire.budget import BudgetPlan, LedgerReport, planned_local_event
from privacy.wire.instructions import Instructions


@dataclass(frozen=True)
class CheckinVerdict:
    """What the device's ledger adds to its check-in answer: its total before this round
    (None when the ledger could not be read), and why it declines, if it does."""

    report: LedgerReport | None
    declined: str | None = None


def _events(*events: DpEvent | None) -> tuple[DpEvent, ...]:
    return tuple(e for e in events if e is not None)


def checkin_verdict(plan: BudgetPlan, context: Context, device: int, own_dir: Path | None,
                    instructions: Instructions, num_examples: int) -> CheckinVerdict:
    """The device's own ledger at check-in (see the module docstring).

    Under central DP the device charges itself the round's central event here (it is in
    the Poisson population from now on, drawn or not); it declines when that event plus
    the local one it would incur if drawn does not fit its own cap, or when its ledger
    cannot be read (missing, corrupt): never take part without one.
    """
    central = plan.central_event()
    local = planned_local_event(instructions.train, num_examples)
    report: LedgerReport | None = None
    try:
        ledger = device_ledger(context, plan, device, own_dir)
        # The total before this round: what the server's ledger holds so far.
        report = ledger.report()
        # Only what this round would add: a round redone after a server crash was
        # recorded before the crash and is not charged twice.
        ledger.check(ledger.unrecorded(plan.run_id, instructions.server_round,
                                       _events(central, local)))
        if central is not None:
            ledger.reserve(plan.run_id, instructions.server_round, [central])
    except DeviceLedgerError as exc:
        return CheckinVerdict(report, str(exc))
    return CheckinVerdict(report)


def reserve_for_training(plan: BudgetPlan, context: Context, device: int,
                         own_dir: Path | None, instructions: Instructions,
                         num_examples: int, inputs: bytes) -> None:
    """Record the round's releases before training; DeviceLedgerError (an error reply to the
    server, nothing trained) when the device's own ledger says no or cannot be read.

    `inputs` is the digest the training's noise seed comes from
    (`fl_client.training_seed.inputs_digest`): the round's releases are recorded on it. The
    central event recorded at check-in is bound to the first training's digest (free); the
    same digest again (a crash redo) is free; another digest for the same round (a server
    re-sending changed inputs) trains with independent noise and is charged again.
    """
    events = _events(plan.central_event(), planned_local_event(instructions.train,
                                                               num_examples))
    if events:
        ledger = device_ledger(context, plan, device, own_dir)
        ledger.reserve(plan.run_id, instructions.server_round, events, inputs)
