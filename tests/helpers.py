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
