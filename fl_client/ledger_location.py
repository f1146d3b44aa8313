"""Where a device's privacy ledger lives, and opening it (a simulated device provisions its
own on first use).

A real device keeps it in its own state dir (`fl_client.node.device_state_dir`:
``--node-config state-dir=DIR``, else ``state/`` in its enrollment bundle — the device's
own storage, which outlives every run). In simulation without a registry bundle it lives
under ``<run dir>/device-state/<index>`` (a fleet without a registry has no identity
across runs). A simulated device provisions its ledger on first use with the cap the
server's simulation hint gives it (its registry cap, else the run's default); a real
device must be provisioned once (``python -m fl_client.device_budget provision``) and is
refused while its ledger is missing, so a deleted ledger never resets a spend.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context

from fl_client.device_ledger import FILE_NAME, DeviceLedger, DeviceLedgerError
from privacy.wire.budget import BudgetPlan


def ledger_dir(context: Context, plan: BudgetPlan, device: int, own_dir: Path | None) -> Path:
    """The device's own state dir if it has one, else in simulation a directory under the
    run's; DeviceLedgerError on a real device without one."""
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
