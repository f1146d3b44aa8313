"""Provisioning a real device's privacy budget, once, before it takes part in DP runs.

    python -m fl_client.device_budget provision DIR --epsilon-cap E --delta D

creates the device's own privacy ledger (`fl_client.device_ledger`) in its state dir
(the directory it is started with as ``--node-config state-dir=DIR``). A real device
refuses DP rounds while its ledger is missing (`fl_client.ledger_location`), so a deleted
ledger never resets a spend; this command never re-creates an existing one. Simulated
devices provision theirs on first use and never need it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fl_client.device_ledger import DeviceLedger, DeviceLedgerError


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
