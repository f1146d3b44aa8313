"""Fault injection (issue 8): the server SIGKILLed at chosen steps of a round, and devices
that crash or hang past the round timeout, through Flower's simulation engine.

* `fedmsr run` with ``FEDMSR_FAULT_POINT`` (fl_server/fault_points.py) kills the engine's
  whole process group at a step; `fedmsr run --resume` then finishes the run. Without DP
  the final model must be exactly the one the devices' updates define, recomputed here
  without Flower (tests/test_faults.py's reference); with `--dp local` and a registry the
  ledger must hold one row per (device, round) sent a train message -- none lost, none
  doubled -- and `fedmsr budget show` must agree with dp_accounting's own recount.
* Devices that crash in `train` or hang past the round timeout (tests/faulty_devices.py),
  in a run also killed mid-round: the round goes on with the rest, the model is the
  weighted mean of exactly the updates the survivors sent, and the failed devices are
  still charged for the message they got.

Kills in CI: `checkpoint` (here), `mid-round` (with the flaky devices), `aggregate` then
`commit` (a redone round near the devices' caps), `reserved` (tests/test_budget_run.py),
a database restart mid-round (tests/test_db_outage.py). Every step at random, 20 times:
scripts/fault_campaign.py (docs/fault-injection.md).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO

import numpy as np
import pytest

from fl_client.device_ledger import DeviceLedger
from fl_server.checkpoint import load_checkpoint
from fl_server.config import RunConfig
from fl_server.fault_points import ENV, POINTS, armed
from fl_server.federation import Plan
from fl_server.launcher import group_members, prepare_new_run
from privacy.accounting import DpEvent
from privacy.wire.budget import planned_local_event
from tests import faulty_devices
from tests.helpers import FEDMSR, PATIENT, PATIENT_CONFIG, SMALL, fedmsr, history, round_outcome
from tests.ledger_recount import (
    epsilon_mismatches,
    independent_epsilon,
    ledger_rows,
    mismatches,
)
from tests.test_faults import assert_same_model, fedavg, honest_rounds

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
DELTA = 1e-5


def launch(args: list[str], cwd: Path, fault: str | None = None,
           timeout: float = 600) -> subprocess.CompletedProcess:
    """`fedmsr ARGS`, with the engine set to kill itself at `fault` (NAME:ROUND)."""
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop(ENV, None)
    if fault:
        env[ENV] = fault
    return subprocess.run([*FEDMSR, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def assert_killed(result: subprocess.CompletedProcess, run_dir: Path) -> None:
    """The engine died by SIGKILL (not a clean failure) and the launcher said so."""
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "failed" and "code -9" in status["reason"], status


def final_model(run_dir: Path) -> dict[str, np.ndarray]:
    with np.load(run_dir / "final_model.npz") as npz:
        return {k: npz[k] for k in npz.files}


def local_event(cfg: RunConfig) -> DpEvent:
    """The release each device is charged per round under `--dp local`."""
    plan = Plan.from_config(dataclasses.replace(cfg, device_indices=None))
    event = planned_local_event(plan.train, cfg.clips_per_day * cfg.days)
    assert event is not None
    return event


def test_fault_point_spec() -> None:
    os.environ.pop(ENV, None)
    assert not armed("checkin", 1)
    os.environ[ENV] = "aggregate:2"
    try:
        assert armed("aggregate", 2) and not armed("aggregate", 1) and not armed("checkin", 2)
        os.environ[ENV] = "commit"
        assert armed("commit", 1) and armed("commit", 7)
        os.environ[ENV] = "aggregation:1"  # a typo must not make a crash test pass quietly
        with pytest.raises(ValueError, match="FEDMSR_FAULT_POINT='aggregation:1'"):
            armed("aggregate", 1)
    finally:
        os.environ.pop(ENV, None)
    assert POINTS == ("checkin", "reserved", "mid-round", "aggregate", "checkpoint", "commit")


@pytest.mark.extended  # the aggregate/commit kills below resume in the default run
def test_killed_between_the_two_files_of_a_checkpoint_resumes_to_the_same_model(
        tmp_path, one_torch_thread) -> None:
    """Killed after round 2's .npz, before its .json: the resume names no checkpoint 2,
    redoes round 2 and ends with the model an uninterrupted run makes (recomputed)."""
    args = ["run", "--devices", "3", "--rounds", "2", "--seed", "7", *SMALL, *PATIENT,
            "--runs-dir", str(tmp_path)]
    run_dir = tmp_path / "k"
    ckpts = run_dir / "checkpoints"

    assert_killed(launch([*args, "--run-id", "k"], tmp_path, "checkpoint:2"), run_dir)
    assert (ckpts / "round-0002.npz").exists() and not (ckpts / "round-0002.json").exists()
    assert [r["round"] for r in history(run_dir)] == [1]

    done = launch(["run", "--resume", "k", "--runs-dir", str(tmp_path)], tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "resuming k after round 1 of 2" in done.stdout  # an .npz alone is no checkpoint
    rows = history(run_dir)
    assert [r["round"] for r in rows] == [1, 2]
    assert all(r["devices"] == [0, 1, 2] and r["sampled"] == 3 for r in rows), [
        round_outcome(r) for r in rows]
    cfg = RunConfig.load(run_dir / "run.json")
    round1, round2 = honest_rounds(cfg, [[0, 1, 2], [0, 1, 2]])
    assert_same_model(load_checkpoint(ckpts / "round-0001.json").arrays, round1)
    assert_same_model(final_model(run_dir), round2)


def _enroll(tmp_path: Path, url: str, count: int, *extra: str) -> None:
    for args in (["db", "upgrade"], ["fleet", "enroll", "--count", str(count),
                                     "--prefix", "cam-", *extra]):
        result = fedmsr("--db", url, *args, cwd=tmp_path, timeout=120)
        assert result.returncode == 0, result.stderr


def start_faulty_engine(run_dir: Path, faults: str, fault: str | None = None,
                        log: IO[str] | None = None, cwd: Path | None = None) -> subprocess.Popen:
    """`python -m tests.faulty_devices RUN_DIR` in a session of its own (so a fault point
    takes its whole process group, Ray included, as in `fedmsr run`); its output into
    `log`, else into pipes."""
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONPATH": str(REPO),
           faulty_devices.FAULTS_ENV: faults}
    env.pop(ENV, None)
    if fault:
        env[ENV] = fault
    return subprocess.Popen([sys.executable, "-m", "tests.faulty_devices", str(run_dir)],
                            env=env, cwd=cwd or run_dir.parent,
                            stdout=log or subprocess.PIPE,
                            stderr=subprocess.STDOUT if log else subprocess.PIPE, text=True,
                            start_new_session=True)


def faulty_engine(run_dir: Path, faults: str, fault: str | None = None
                  ) -> subprocess.CompletedProcess:
    """The faulty engine run to its end (see :func:`start_faulty_engine`)."""
    proc = start_faulty_engine(run_dir, faults, fault)
    try:
        out, err = proc.communicate(timeout=600)
    finally:
        stop_group(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGKILL whatever is left of `proc`'s process group (Ray's helpers), by group id."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    if group_members(proc.pid):
        os.killpg(proc.pid, signal.SIGKILL)


def test_devices_that_crash_or_hang_in_a_run_killed_mid_round(tmp_path, monkeypatch,
                                                               one_torch_thread) -> None:
    """Round 1: cam-1 raises in `train`, cam-2 answers only after the server finished the
    round without it (its late reply lands in round 2's time). The first attempt at round
    1 is killed with the train messages out; the redo meets the same faults. The round goes
    on with the two others; the model is the weighted mean of what those two sent; cam-1
    and cam-2 are charged for round 1 all the same, once. Round 2: everybody is back."""
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    _enroll(tmp_path, url, 4)
    monkeypatch.setenv("FEDMSR_DB", url)
    monkeypatch.chdir(tmp_path)
    cfg = prepare_new_run(RunConfig(
        devices=4, rounds=2, seed=9, clips_per_day=4, days=2, dp_sgd=True, delta=DELTA,
        min_train_devices=2, round_timeout_s=30.0, runs_dir=str(tmp_path / "runs"),
        run_id="flaky", **PATIENT_CONFIG).validate())
    run_dir = cfg.run_dir()
    faults = "1:crash@1,2:hang@1"
    killed = faulty_engine(run_dir, faults, "mid-round:1")
    assert killed.returncode == -9, killed.stdout[-3000:] + killed.stderr[-3000:]
    devices = [f"cam-{d}" for d in range(4)]
    event = local_event(cfg)
    rows = ledger_rows(url, "flaky")
    assert mismatches(rows, [(d, 1) for d in devices], event) == []
    assert {r.status for r in rows} == {"reserved"}

    done = faulty_engine(run_dir, faults)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    first, second = history(run_dir)
    assert (first["devices"], first["sampled"], first["failed"]) == ([0, 3], 4, 2)
    assert (second["devices"], second["sampled"], second["failed"]) == ([0, 1, 2, 3], 4, 0)

    monkeypatch.setenv(faulty_devices.RUN_DIR_ENV, str(run_dir))
    sent = {n: {d: faulty_devices.recorded_update(n, d) for d in row["devices"]}
            for n, row in ((1, first), (2, second))}
    assert faulty_devices.update_file(1, 2).exists()  # the late reply was sent, and ignored
    assert_same_model(load_checkpoint(run_dir / "checkpoints" / "round-0001.json").arrays,
                      fedavg([sent[1][0], sent[1][3]]))
    assert_same_model(final_model(run_dir), fedavg([sent[2][d] for d in range(4)]))

    rows = ledger_rows(url, "flaky")
    assert mismatches(rows, [(d, n) for d in devices for n in (1, 2)], event) == []
    assert {r.status for r in rows} == {"committed"}
    assert epsilon_mismatches(url, DELTA, dict.fromkeys(devices, 2), event) == []
    # cam-1 crashed before its own ledger saw round 1: the server charged it regardless
    # (conservative); cam-2 trained, late, and recorded it.
    own = {d: sorted(r.round_number for r in DeviceLedger.open(
        tmp_path / "devices" / d / "state").releases) for d in devices}
    assert own == {"cam-0": [1, 2], "cam-1": [2], "cam-2": [1, 2], "cam-3": [1, 2]}


def test_a_round_killed_in_aggregation_is_redone_without_a_second_charge(tmp_path) -> None:
    """`--dp local`, 1 round, device caps between the cost of one release and of two. First
    the server is killed right after the check-in: nothing is reserved or charged anywhere.
    The resume gets further: the
    devices trained and recorded round 1, the server was killed before aggregating. The
    redo must cost nothing new -- on the server's ledger and on the devices' own. The redo
    is killed in turn between its checkpoint and its ledger commit: the next resume redoes
    nothing and commits exactly the round's reserved rows."""
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    probe = RunConfig(clips_per_day=4, days=2, dp_sgd=True, runs_dir=str(tmp_path),
                      run_id="probe")
    event = local_event(probe)
    one, two = (independent_epsilon([event] * n, DELTA) for n in (1, 2))
    _enroll(tmp_path, url, 2, "--epsilon-cap", repr((one + two) / 2))
    args = ["--db", url, "run", "--devices", "2", "--rounds", "1", "--seed", "5", *SMALL,
            "--dp", "local", "--delta", str(DELTA), "--runs-dir", str(tmp_path / "runs")]
    run_dir = tmp_path / "runs" / "agg"
    devices = ["cam-0", "cam-1"]

    assert_killed(launch([*args, "--run-id", "agg"], tmp_path, "checkin:1"), run_dir)
    assert ledger_rows(url, "agg") == []  # checked in, nothing reserved
    for name in devices:  # a check-in answer costs a device nothing
        assert len(DeviceLedger.open(tmp_path / "devices" / name / "state").releases) == 0
    resume = ["--db", url, "run", "--resume", "agg", "--runs-dir", str(tmp_path / "runs")]

    assert_killed(launch(resume, tmp_path, "aggregate:1"), run_dir)
    assert mismatches(ledger_rows(url, "agg"), [(d, 1) for d in devices], event) == []
    for name in devices:  # they trained: their own ledgers hold round 1
        own = DeviceLedger.open(tmp_path / "devices" / name / "state").releases
        assert [(r.run_id, r.round_number) for r in own] == [("agg", 1)]

    # The redo is killed again, after its checkpoint and before its ledger commit.
    assert_killed(launch(resume, tmp_path, "commit:1"), run_dir)
    rows = ledger_rows(url, "agg")
    assert mismatches(rows, [(d, 1) for d in devices], event) == []  # no second charge
    assert {r.status for r in rows} == {"reserved"}
    for name in devices:  # the redo cost the devices nothing new either
        own = DeviceLedger.open(tmp_path / "devices" / name / "state").releases
        assert [(r.run_id, r.round_number) for r in own] == [("agg", 1)]

    # The checkpoint holds round 1: nothing is redone, its reserved rows are committed.
    done = launch(resume, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "resuming agg after round 1 of 1" in done.stdout
    rows = ledger_rows(url, "agg")
    assert mismatches(rows, [(d, 1) for d in devices], event) == []
    assert {r.status for r in rows} == {"committed"}
    assert [r["devices"] for r in history(run_dir)] == [[0, 1]]
    assert epsilon_mismatches(url, DELTA, dict.fromkeys(devices, 1), event) == []

