"""The launcher under signals, and the recorded engine group on resume.

SIGTERM to `fedmsr run` must stop every process of the engine's group, mark the run failed
with the reason and leave no engine.json; `--resume` must signal a recorded group only when
it is still the run's engine, never a process that got the reused id.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fl_server.launcher import (
    ENGINE_FILE,
    ENGINE_TOKEN_ENV,
    EngineRecord,
    _boot_id,
    _start_ticks,
    group_members,
    stop_stale_engine,
)
from tests.helpers import FEDMSR, SMALL, fedmsr, history, wait_for


def _own_group(*argv: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A process leading a process group of its own (as the engine does)."""
    return subprocess.Popen(list(argv), start_new_session=True, env=env)


def _cleanup(proc: subprocess.Popen) -> None:
    if group_members(proc.pid):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@pytest.mark.parametrize("record", ["legacy", "other-start", "no-start-time"])
def test_resume_leaves_a_reused_group_alone(tmp_path: Path, record: str) -> None:
    """engine.json names a group id that now belongs to an unrelated `sleep`."""
    sleeper = _own_group("sleep", "300")
    try:
        ticks = _start_ticks(sleeper.pid)
        assert ticks is not None
        payload = {"legacy": {"pid": sleeper.pid, "pgid": sleeper.pid},
                   "other-start": EngineRecord(sleeper.pid, sleeper.pid, ticks - 1, _boot_id(),
                                               "feed").__dict__,
                   "no-start-time": EngineRecord(sleeper.pid, sleeper.pid, None, _boot_id(),
                                               "feed").__dict__}[record]
        (tmp_path / ENGINE_FILE).write_text(json.dumps(payload))
        assert stop_stale_engine(tmp_path) is False
        assert sleeper.poll() is None and group_members(sleeper.pid) == [sleeper.pid]
        assert not (tmp_path / ENGINE_FILE).exists()
    finally:
        _cleanup(sleeper)


def test_resume_stops_the_runs_own_group_by_its_leader(tmp_path: Path) -> None:
    leader = _own_group("sleep", "300")
    try:
        ticks = _start_ticks(leader.pid)
        (tmp_path / ENGINE_FILE).write_text(EngineRecord(
            leader.pid, leader.pid, ticks, _boot_id(), "t0k3n").to_json())
        assert stop_stale_engine(tmp_path) is True
        assert group_members(leader.pid) == []
    finally:
        _cleanup(leader)


def test_resume_stops_an_orphaned_group_that_carries_the_token(tmp_path: Path) -> None:
    """The leader (the engine) is gone; what is left (Ray's agents) carries the token."""
    env = {**os.environ, ENGINE_TOKEN_ENV: "t0k3n"}
    # The leader starts a grandchild in its group and exits: an orphaned group.
    leader = _own_group(sys.executable, "-c",
                        "import subprocess; subprocess.Popen(['sleep', '300'])", env=env)
    pgid = leader.pid
    try:
        ticks = _start_ticks(pgid)
        leader.wait(timeout=30)
        assert group_members(pgid), "the grandchild should still be in the group"
        (tmp_path / ENGINE_FILE).write_text(EngineRecord(
            pgid, pgid, ticks or 0, _boot_id(), "t0k3n").to_json())
        assert stop_stale_engine(tmp_path) is True
        assert group_members(pgid) == []
    finally:
        if group_members(pgid):
            os.killpg(pgid, signal.SIGKILL)


def _orphaned_group(grandchild_env: str) -> int:
    """A group whose leader started `sleep` with environment `grandchild_env` (Python
    literal) and exited; returns the group id."""
    leader = _own_group(sys.executable, "-c", "import subprocess; subprocess.Popen("
                        f"['sleep', '300'], env={grandchild_env})")
    leader.wait(timeout=30)
    assert group_members(leader.pid), "the grandchild should still be in the group"
    return leader.pid


@pytest.mark.parametrize(("grandchild_env", "ours"), [
    # Ray's agents rename themselves (setproctitle), overwriting what /proc shows as their
    # environment: no token to read; they started after the recorded leader: the engine's
    ("{}", True),
    # no token either, but the survivor is older than the recorded leader: not its child
    ("{'PATH': '/usr/bin', 'HOME': '/tmp'}", False),
])
def test_an_orphaned_group_without_a_readable_token(tmp_path: Path, grandchild_env: str,
                                                   ours: bool) -> None:
    pgid = _orphaned_group(grandchild_env)
    try:
        (member,) = group_members(pgid)
        started = _start_ticks(member)
        assert started is not None
        leader_start = started - 1 if ours else started + 1
        (tmp_path / ENGINE_FILE).write_text(EngineRecord(
            pgid, pgid, leader_start, _boot_id(), "t0k3n").to_json())
        assert stop_stale_engine(tmp_path) is ours
        assert (group_members(pgid) == []) is ours
    finally:
        if group_members(pgid):
            os.killpg(pgid, signal.SIGKILL)


@pytest.mark.slow
def test_sigterm_mid_run_is_a_clean_failure_and_resume_completes(tmp_path: Path) -> None:
    args = ["--devices", "2", "--rounds", "2", "--seed", "4", *SMALL, "--runs-dir", str(tmp_path)]
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    proc = subprocess.Popen([*FEDMSR, "run", *args, "--run-id", "term"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run_dir = tmp_path / "term"
    try:
        wait_for(run_dir / "checkpoints" / "round-0001.json", proc, timeout_s=300)
        engine = json.loads((run_dir / ENGINE_FILE).read_text())
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert group_members(engine["pgid"]) == []  # no process of the engine's group survives
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "failed" and status["reason"] == "interrupted by SIGTERM"
    assert not (run_dir / ENGINE_FILE).exists()
    assert "interrupted by SIGTERM" in stderr and "--resume term" in stderr

    # A stale engine.json whose group id now belongs to an unrelated process.
    sleeper = _own_group("sleep", "300")
    try:
        (run_dir / ENGINE_FILE).write_text(json.dumps({"pid": sleeper.pid,
                                                       "pgid": sleeper.pid}))
        resumed = fedmsr("run", "--resume", "term", "--runs-dir", str(tmp_path))
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        assert sleeper.poll() is None  # not killed by the resume
    finally:
        _cleanup(sleeper)
    assert [r["round"] for r in history(run_dir)] == [1, 2]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
