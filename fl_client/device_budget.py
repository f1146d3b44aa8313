"""The device's side of the DP modes: its own ledger at check-in and before training, and
user-level clipping for central DP-FedAvg.

A device does not have to trust the server's bookkeeping (issue 4), so in a DP run:

* **check-in** — it reports its own total (`fl_client.device_ledger.LedgerReport`), and
  under central DP-FedAvg it charges itself the round's ``(q, sigma, 1)`` event *now*: the
  accountant charges every device in the Poisson population whether it is drawn or not,
  and a device that checks in offers itself to the draw. If its own ledger says the
  round's planned release (central, plus its local DP-SGD event under ``--dp both``) would
  pass its own cap, it declines (``budget-declined``) and the server leaves it out;
* **train** — before touching its clips it records the local DP-SGD event it is about to
  incur (the same ``(q, sigma, steps)`` the trainer will report) and refuses with an error
  reply if that would pass its cap;
* **central DP** — it clips its model update to the instructed L2 norm before sending
  (`privacy.update_clip`), counts as weight 1 (user-level: every device counts once, and
  its number of clips is not released), and keeps its un-noised training metrics.

Where the ledger lives: the device's state dir (`client_app.device_state_dir`:
``--node-config state-dir=DIR``, else ``state/`` in its enrollment bundle — the device's
own storage, which outlives every run), else, in simulation only,
``<run dir>/device-state/<index>`` (a fleet without a registry has no identity across runs). A simulated device provisions
its ledger on first use with the cap the server's simulation hint gives it (its registry
cap, else the run's default); a real device must be provisioned once
(``python -m fl_client.device_budget provision DIR --epsilon-cap E --delta D``) and is
refused while its ledger is missing, so a deleted ledger never resets a spend.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context, Message

from fl_client.device_ledger import FILE_NAME, DeviceLedger, DeviceLedgerError
from fl_client.messages import CONFIG_KEY, Instructions
from fl_client.trainer import TrainConfig, sample_rate, steps_per_epoch
from privacy.accounting import DpEvent, EventKind
from privacy.update_clip import clipped_arrays

#: Prefix of the budget keys in a message's instructions record (DP runs only).
PREFIX = "budget."
#: A check-in answer's key when the device's own ledger says no to the round.
DECLINED_KEY = "budget-declined"


@dataclass(frozen=True)
class BudgetPlan:
    """What the server tells devices about a DP run's accounting (`budget.*` instructions).

    ``central_sample_rate`` / ``central_noise_multiplier`` are 0 without central DP;
    ``sim_*`` only matter to simulated devices (where their ledgers live, what cap a
    ledger is provisioned with); a real device's configuration always wins.
    """

    run_id: str
    delta: float
    central_sample_rate: float = 0.0
    central_noise_multiplier: float = 0.0
    sim_state_root: str = ""
    sim_bundles_dir: str = ""
    sim_caps: Mapping[int, float] = field(default_factory=dict)
    sim_default_cap: float = 0.0

    def central_event(self) -> DpEvent | None:
        if self.central_sample_rate <= 0:
            return None
        return DpEvent(self.central_sample_rate, self.central_noise_multiplier, 1,
                       EventKind.CENTRAL_DP_FEDAVG)

    def to_flat(self) -> dict[str, Any]:
        """`budget.*` keys, sent inside every message's instructions record."""
        flat = {"run-id": self.run_id, "delta": float(self.delta),
                "central-sample-rate": float(self.central_sample_rate),
                "central-noise-multiplier": float(self.central_noise_multiplier),
                "sim-state-root": self.sim_state_root, "sim-bundles-dir": self.sim_bundles_dir,
                "sim-caps": json.dumps({str(k): float(v) for k, v in self.sim_caps.items()}),
                "sim-default-cap": float(self.sim_default_cap)}
        return {f"{PREFIX}{key}": value for key, value in flat.items()}

    @classmethod
    def from_flat(cls, record: Mapping[str, Any]) -> BudgetPlan | None:
        """The plan in an instructions record; None when it has none (a run without DP)."""
        if f"{PREFIX}run-id" not in record:
            return None
        r = {k[len(PREFIX):]: v for k, v in record.items() if k.startswith(PREFIX)}
        try:
            return cls(run_id=str(r["run-id"]), delta=float(r["delta"]),
                       central_sample_rate=float(r["central-sample-rate"]),
                       central_noise_multiplier=float(r["central-noise-multiplier"]),
                       sim_state_root=str(r["sim-state-root"]),
                       sim_bundles_dir=str(r["sim-bundles-dir"]),
                       sim_caps={int(k): float(v) for k, v in json.loads(str(r["sim-caps"])).items()},
                       sim_default_cap=float(r["sim-default-cap"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed budget instructions from the server: {exc}") from exc


def plan_of(msg: Message) -> BudgetPlan | None:
    """The run's budget plan from a message's instructions, None in a run without DP."""
    return BudgetPlan.from_flat(dict(msg.content[CONFIG_KEY]))


def planned_local_event(train: TrainConfig, num_examples: int) -> DpEvent | None:
    """The DP-SGD event `fl_client.trainer.train_local` will report for `num_examples`
    clips (None without DP-SGD): every epoch's ceil(N / B) Poisson steps, empty ones too."""
    if not train.dp_sgd:
        return None
    steps = train.epochs * steps_per_epoch(num_examples, train.batch_size)
    return DpEvent(sample_rate(num_examples, train.batch_size), float(train.noise_multiplier),
                   steps, EventKind.LOCAL_DP_SGD)


def _events(*events: DpEvent | None) -> tuple[DpEvent, ...]:
    return tuple(e for e in events if e is not None)


# -- where the ledger lives ----------------------------------------------------------------

def ledger_dir(context: Context, plan: BudgetPlan, device: int, own_dir: Path | None) -> Path:
    """The device's own state dir (`client_app.device_state_dir`: node config `state-dir`,
    else its enrollment bundle), else in simulation a directory under the run's."""
    if own_dir is not None:
        return own_dir
    if "partition-id" in context.node_config and plan.sim_state_root:
        return Path(plan.sim_state_root) / str(device)
    raise DeviceLedgerError("this device has no state directory for its privacy ledger: "
                            "start the SuperNode with --node-config 'state-dir=DIR'")


def device_ledger(context: Context, plan: BudgetPlan, device: int,
                  own_dir: Path | None) -> DeviceLedger:
    """Open the device's ledger; a simulated device provisions it on first use."""
    directory = ledger_dir(context, plan, device, own_dir)
    simulated = "partition-id" in context.node_config and "state-dir" not in context.node_config
    if simulated and not (directory / FILE_NAME).exists():
        cap = plan.sim_caps.get(device, plan.sim_default_cap)
        return DeviceLedger.create(directory, cap if cap > 0 else None,
                                   float(context.node_config.get("delta", plan.delta)))
    return DeviceLedger.open(directory)


#: The device's DP training secret (32 bytes, 0600), next to its ledger; never sent anywhere.
SECRET_NAME = "dp-training.secret"


def training_secret(directory: Path) -> bytes:
    """The device's training secret, created once; concurrent first uses agree on one (the
    file appears complete or not at all: written aside, then hard-linked into place).

    `client_app.training_seed` derives each DP round's seed from it, so that a round redone
    after a server crash reproduces the same release (see there).
    """
    path = directory / SECRET_NAME
    directory.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".secret-")  # 0600
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(secrets.token_bytes(32))
                handle.flush()
                os.fsync(handle.fileno())
            os.link(tmp, path)  # fails if another process got there first: theirs wins
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    secret = path.read_bytes()
    if len(secret) != 32:
        raise DeviceLedgerError(f"{path} is corrupt ({len(secret)} bytes, expected 32): "
                                "refusing to train with DP")
    return secret


# -- the two moments a device consults it --------------------------------------------------

def checkin_answer(plan: BudgetPlan, context: Context, device: int, own_dir: Path | None,
                   instructions: Instructions, num_examples: int) -> dict[str, Any]:
    """What the device adds to its check-in answer: its total so far (before this round),
    and why it declines if it does.

    Under central DP the device charges itself the round's central event here (it is in
    the Poisson population from now on, drawn or not); it declines when that event plus
    the local one it would incur if drawn does not fit its own cap, or when its ledger
    cannot be read (missing, corrupt): never take part without one.
    """
    central = plan.central_event()
    local = planned_local_event(instructions.train, num_examples)
    report: dict[str, Any] = {}
    try:
        ledger = device_ledger(context, plan, device, own_dir)
        # The total before this round: what the server's ledger holds so far.
        report = dict(ledger.report().to_config())
        # Only what this round would add: a round redone after a server crash was
        # recorded before the crash and is not charged twice.
        ledger.check(ledger.unrecorded(plan.run_id, instructions.server_round,
                                       _events(central, local)))
        if central is not None:
            ledger.reserve(plan.run_id, instructions.server_round, [central])
    except DeviceLedgerError as exc:
        return {**report, DECLINED_KEY: str(exc)}
    return report


def reserve_for_training(plan: BudgetPlan, context: Context, device: int,
                         own_dir: Path | None, instructions: Instructions,
                         num_examples: int) -> None:
    """Record the round's releases before training; DeviceLedgerError (an error reply to the
    server, nothing trained) when the device's own ledger says no or cannot be read.

    The central event was recorded at check-in; recording it again is a no-op, and a
    device never trains in a central round its ledger lacks.
    """
    events = _events(plan.central_event(), planned_local_event(instructions.train,
                                                               num_examples))
    if events:
        ledger = device_ledger(context, plan, device, own_dir)
        ledger.reserve(plan.run_id, instructions.server_round, events)


# -- central DP-FedAvg: what leaves the device ---------------------------------------------

def released_arrays(instructions: Instructions, global_arrays: dict[str, np.ndarray],
                    trained: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The trained arrays, with the update clipped to ``update_clip`` under central DP."""
    if instructions.update_clip <= 0:
        return trained
    return clipped_arrays(global_arrays, trained, instructions.update_clip)


def releases_private_metrics(instructions: Instructions) -> bool:
    """Whether training metrics on the clips must stay on the device (any DP mode)."""
    return bool(instructions.train.dp_sgd or instructions.update_clip > 0)


# -- provisioning a real device ------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """`python -m fl_client.device_budget provision DIR --epsilon-cap E --delta D`."""
    parser = argparse.ArgumentParser(prog="python -m fl_client.device_budget")
    sub = parser.add_subparsers(dest="command", required=True)
    provision = sub.add_parser("provision", help="create this device's privacy ledger (once)")
    provision.add_argument("state_dir", type=Path)
    provision.add_argument("--epsilon-cap", type=float, default=None)
    provision.add_argument("--delta", type=float, default=1e-5)
    args = parser.parse_args(argv)
    try:
        ledger = DeviceLedger.create(args.state_dir, args.epsilon_cap, args.delta)
    except (DeviceLedgerError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"provisioned {ledger.path} (cap {ledger.cap_epsilon}, delta {ledger.delta})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
