"""Helpers for tests that drive the real `fedmsr` console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

FEDMSR = [sys.executable, "-m", "fl_server.cli"]
#: A small but real federation: every device trains through Flower's engine.
SMALL = ["--clips-per-day", "4", "--days", "2"]
#: Simulated devices are all live: a test that asserts exactly which devices took part waits
#: for their replies, however slow the machine, never for a production deadline (its own
#: subprocess timeout bounds a device that never answers). Training keeps --round-timeout.
PATIENT_S = 3600.0
PATIENT = ["--fleet-wait", str(PATIENT_S), "--reply-timeout", str(PATIENT_S)]
PATIENT_CONFIG = {"fleet_wait_s": PATIENT_S, "reply_timeout_s": PATIENT_S}
#: How long a test waits for a service it signalled (or scraped) to answer or exit: a bound
#: that catches a hang, never a speed target (the suite runs on loaded machines).
EXIT_WAIT_S = 300.0


def fedmsr(*args: str, timeout: float = 600, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    return subprocess.run([*FEDMSR, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env=env, check=False)


def wait_for(path: Path, proc: subprocess.Popen, timeout_s: float) -> None:
    """Wait for `path` to appear (a condition, not a timing assumption); fail if proc dies."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} before {path} appeared")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout_s} s")
        time.sleep(0.1)


def history(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "history.json").read_text())


def round_outcome(row: dict) -> str:
    """What a history row says happened to each device, for an assertion message: a device
    missing from `devices` was not sampled (no check-in), failed, or was rejected, and why."""
    keys = ("round", "sampled", "responded", "failed", "devices", "rejected_devices",
            "checkin_s", "train_phase_s")
    return ", ".join(f"{key}={row.get(key)!r}" for key in keys)


#: Every key a round record must have, with plausible values (tests override what they test).
RECORD_DEFAULTS = {
    "loss": 1.5, "kl_bits": 2.0, "utility_acc": 0.5, "identity_acc": 0.25,
    "utility_chance": 0.2, "identity_chance": 0.5, "sampled": 0, "responded": 0, "failed": 0,
    "devices": [], "checkin_s": 0.1, "train_phase_s": 0.5, "aggregate_s": 0.1, "eval_s": 0.1,
    "wall_s": 1.0, "client_train_s_sum": 1.0, "client_train_s_max": 0.5,
}


def round_record(round_number: int, **fields: object):
    """A `RoundRecord` as history.json would hold it, with defaults for what is not given."""
    from privacy.wire.round_record import RoundRecord

    return RoundRecord.from_json({**RECORD_DEFAULTS, "round": round_number, **fields})
