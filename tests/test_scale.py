"""Small versions of scripts/scale_fleet.py's scenarios (the full sizes are minutes each and
live in the script; docs/deployment.md and docs/running.md give their figures). Each runs
the script itself, whose own checks (a revoked device never trains after its revocation,
a second sync has nothing to do, the ledger holds every row) fail it with a non-zero exit."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "scale_fleet.py"


def scale(*args: str, timeout: float = 900) -> str:
    done = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_ledger_under_load_keeps_every_row_and_answers_every_device(backend) -> None:
    out = scale("ledger", "--devices", "30", "--rounds", "4", "--db", backend)
    assert "120 ledger rows written" in out
    assert "budget show lists 30 devices (30 lines); eligible 30, refused 0" in out


@pytest.mark.slow
def test_a_registry_fleet_loses_its_revoked_devices_mid_run() -> None:
    out = scale("registry", "--devices", "40", "--revoke", "4", "--rate", "0.25",
                "--rounds", "5")
    assert "revoke 4 (registry + SuperLink)" in out
    assert re.search(r"revoked devices that trained in the [1-9]\d* round\(s\) begun after "
                     r"the revocations: \[\]", out), out
    assert "registered 0 key(s), unregistered 0" in out


@pytest.mark.slow
def test_a_larger_simulated_fleet_with_poisson_sampling_completes() -> None:
    out = scale("simulated", "--devices", "100", "--rate", "0.05", "--baseline", "5",
                "--rounds", "2")
    lines = {line.split(":")[0]: line for line in out.splitlines() if line.startswith("n")}
    trained = re.search(r"trained per round \[(\d+), (\d+)\]", lines["n100"])
    assert trained, out
    assert all(int(n) <= 100 for n in trained.groups())
    assert "trained per round [5, 5]" in lines["n5"]  # q = 1: every device, every round
    peak = float(re.search(r"peak memory ([\d.]+) GiB", lines["n100"]).group(1))
    assert 0 < peak < 24
