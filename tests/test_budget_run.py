"""Budgets through whole runs: the federation loop with the real ClientApp, the registry and
the privacy ledger (in-process grid), and `fedmsr run` through Flower's engine with a server
SIGKILLed between reservation and aggregation."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess

import numpy as np
import pytest
from flwr.app import Message, RecordDict
from sqlalchemy import text

from fl_client.device_ledger import DeviceBudgetExceeded, DeviceLedger
from fl_client.handlers import train as train_handler
from fl_server import privacy_ledger
from fl_server.config import RunConfig
from fl_server.dp_modes import budget_plan
from fl_server.enrollment import BundleOptions, DeviceSpec, enroll
from fl_server.fault_points import ENV as FAULT_POINT_ENV
from fl_server.federation import Plan, run_federation
from fl_server.registry import db
from fl_server.registry.fleet import fleet_for_new_run
from fl_server.registry.models import Device
from fl_server.run_status import read_status
from fl_server.sinks import observers_for
from privacy.accounting import DpEvent
from privacy.encoder import build_model, state_to_numpy
from privacy.wire.arrays import record_of
from privacy.wire.budget import planned_local_event
from privacy.wire.keys import ARRAYS_KEY, CONFIG_KEY
from tests.helpers import FEDMSR, PATIENT, SMALL, fedmsr, history, round_outcome
from tests.test_budget_selection import cap_for as selection_cap_for
from tests.test_secagg_workflow import FlakyFleetGrid, LoopbackGrid

DELTA = 1e-5
#: SMALL fleet (4 clips x 2 days = 8 clips), batch 4: q = 0.5, 2 steps per round.
LOCAL = DpEvent(0.5, 1.0, 2)
#: `fedmsr run` with SMALL and its default batch 16 > 8 clips: q = 1, one step per round.
ONE_STEP = DpEvent(1.0, 1.0, 1)
BASE = RunConfig(devices=3, rounds=4, seed=2, clips_per_day=4, days=2, batch_size=4,
                 dp_sgd=True, noise_multiplier=1.0, min_train_devices=2, delta=DELTA)


def cap_for(rounds: int, event: DpEvent = LOCAL) -> float:
    return selection_cap_for(rounds, event)


def registry_run(url: str, tmp_path, monkeypatch, caps: list[float | None], run_id: str,
                 **change) -> RunConfig:
    """Enroll cam-0.. with `caps`; the run's config as `fedmsr run` would freeze it."""
    monkeypatch.setenv("FEDMSR_DB", url)
    monkeypatch.chdir(tmp_path)
    db.upgrade(url)
    enroll(url, [DeviceSpec(f"cam-{i}", epsilon_cap=c, delta_cap=DELTA, device_index=i)
                 for i, c in enumerate(caps)], BundleOptions(bundles_dir=tmp_path / "devices"))
    cfg = dataclasses.replace(BASE, runs_dir=str(tmp_path / "runs"), run_id=run_id, **change)
    return fleet_for_new_run(cfg.validate())


def own_ledger(tmp_path, device: int, cap: float | None) -> DeviceLedger:
    """Provision a simulated device's own ledger (its bundle's state dir) ahead of the run."""
    return DeviceLedger.create(tmp_path / "devices" / f"cam-{device}" / "state", cap, DELTA)


def ledger_rows(url: str) -> list[tuple]:
    with db.get_engine(url).connect() as c:
        return [tuple(r) for r in c.execute(text(
            "SELECT d.name, e.run_id, e.round_number, e.kind, e.status FROM privacy_events e "
            "JOIN devices d ON d.id = e.device_id ORDER BY d.name, e.round_number"))]


def test_planned_local_event_is_what_the_trainer_reports() -> None:
    plan = Plan.from_config(dataclasses.replace(BASE, runs_dir="/tmp", run_id="x"))
    assert planned_local_event(plan.train, 8) == LOCAL


@pytest.mark.slow
def test_an_exhausted_device_is_never_sampled_and_the_run_ends_budget_exhausted(
        tmp_path, monkeypatch, task_identity) -> None:
    """(SQLite here; selection on the real ledger runs on both backends in
    test_budget_selection.py.)"""
    registry_url = f"sqlite:///{tmp_path / 'registry.db'}"
    cfg = registry_run(registry_url, tmp_path, monkeypatch, [cap_for(2), cap_for(1), cap_for(2)],
                       "exhaust")
    for device in range(3):  # own ledgers without a cap: only the server's ledger says no
        own_ledger(tmp_path, device, None)
    run_federation(FlakyFleetGrid(), cfg, observers=observers_for(cfg))

    status = read_status(cfg.run_dir())
    assert status.status == "budget-exhausted" and status.completed_rounds == 2
    for name in ("cam-0", "cam-2"):
        assert f"{name} (id" in status.reason
    assert f"cap {cap_for(2):g}" in status.reason and "0 device(s) can afford" in status.reason
    rounds = history(cfg.run_dir())
    assert [r["devices"] for r in rounds] == [[0, 1, 2], [0, 2]]  # cam-1 never after its cap
    assert rounds[1]["budget_refused"] == ["cam-1"] and rounds[1]["sampled"] == 2
    assert [r["ledger_disagreements"] for r in rounds] == [0, 0]  # own ledgers agree
    assert (cfg.run_dir() / "final_model.npz").exists()
    rows = ledger_rows(registry_url)
    assert [r[0] for r in rows] == ["cam-0", "cam-0", "cam-1", "cam-2", "cam-2"]
    assert {r[4] for r in rows} == {"committed"}
    with db.session_scope(registry_url) as s:
        for device in s.query(Device):
            state = privacy_ledger.budget_state(registry_url, device.id, DELTA)
            assert state.epsilon <= device.epsilon_cap  # never past a cap
    with db.get_engine(registry_url).connect() as c:
        assert c.execute(text("SELECT status FROM runs")).scalar() == "budget-exhausted"


@pytest.mark.slow
def test_a_device_whose_own_ledger_says_no_takes_no_part(tmp_path, monkeypatch,
                                                         task_identity) -> None:
    """cam-0's own ledger has no room: it declines at check-in, is never sent anything and
    never charged. cam-2's own ledger holds a release the server never saw: the server
    records the disagreement (audit log, round record)."""
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    cfg = registry_run(url, tmp_path, monkeypatch, [None, None, None], "own", rounds=1)
    own_ledger(tmp_path, 0, cap_for(0))
    elsewhere = own_ledger(tmp_path, 2, None)
    elsewhere.reserve("another-platform", 1, [LOCAL])
    own_ledger(tmp_path, 1, None)
    run_federation(FlakyFleetGrid(), cfg, observers=observers_for(cfg))

    (record,) = history(cfg.run_dir())
    assert read_status(cfg.run_dir()).status == "completed"
    assert record["budget_declined"] == [0] and record["devices"] == [1, 2]
    assert record["ledger_disagreements"] == 1
    assert [r[0] for r in ledger_rows(url)] == ["cam-1", "cam-2"]
    with db.get_engine(url).connect() as c:
        detail = c.execute(text("SELECT detail FROM audit_log WHERE action = "
                                "'budget.disagreement'")).scalar()
    assert json.loads(detail)["direction"] == "server-under-counted"


def test_a_device_refuses_to_train_past_its_own_cap(tmp_path, task_identity) -> None:
    cfg = dataclasses.replace(BASE, runs_dir=str(tmp_path), run_id="refuse").validate()
    plan = Plan.from_config(cfg, budget_plan(cfg))
    context = LoopbackGrid().contexts[100]  # simulated device 0, no registry bundle
    state = tmp_path / "refuse" / "device-state" / "0"
    DeviceLedger.create(state, cap_for(0), DELTA)
    initial = state_to_numpy(build_model(plan.model, seed=cfg.seed))
    msg = Message(RecordDict({ARRAYS_KEY: record_of(initial), CONFIG_KEY: plan.instructions(1)}),
                  dst_node_id=100, message_type="train")
    with pytest.raises(DeviceBudgetExceeded, match="past its own cap"):
        train_handler(msg, context)
    assert DeviceLedger.open(state).releases == ()  # nothing recorded, nothing trained


@pytest.mark.slow
def test_sigkill_after_reservation_keeps_the_charge_and_resume_does_not_double_it(
        tmp_path) -> None:
    """`fedmsr run` whose engine SIGKILLs itself right after round 1's reservation (test-only
    fault point `reserved`, docs/fault-injection.md): round 1 stays charged (reserved) though nothing was
    sent; the resume redoes round 1 without charging it again, although the devices are
    then exactly at their cap; round 2 no longer fits: budget-exhausted, exit code 3."""
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    for args in (["db", "upgrade"], ["fleet", "enroll", "--count", "2", "--prefix", "cam-",
                                     "--epsilon-cap", repr(cap_for(1, ONE_STEP))]):
        assert fedmsr("--db", url, *args, cwd=tmp_path, timeout=120).returncode == 0
    args = ["--db", url, "run", "--devices", "2", "--rounds", "2", "--seed", "4", *SMALL,
            *PATIENT, "--dp", "local", "--delta", str(DELTA), "--runs-dir", str(tmp_path / "runs")]
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", FAULT_POINT_ENV: "reserved:1"}
    killed = subprocess.run([*FEDMSR, *args, "--run-id", "k"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600, check=False)
    assert killed.returncode == 1, killed.stderr[-2000:]
    run_dir = tmp_path / "runs" / "k"
    assert not (run_dir / "history.json").exists()  # killed before any round finished
    assert [(r[0], r[2], r[4]) for r in ledger_rows(url)] == [
        ("cam-0", 1, "reserved"), ("cam-1", 1, "reserved")]  # spent, though never sent

    resumed = fedmsr("--db", url, "run", "--resume", "k", "--runs-dir", str(tmp_path / "runs"),
                     cwd=tmp_path)
    assert resumed.returncode == 3, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    # One short line, once: how many, and where the details are (not the device list).
    (line,) = [x for x in resumed.stderr.splitlines() if "budget exhausted" in x]
    assert line.startswith("budget-exhausted: run k stopped after 1 of 2 rounds: ")
    assert "2 device(s) out of budget" in line and "`fedmsr budget show`" in line
    assert "budget exhausted" not in resumed.stdout
    assert [r["devices"] for r in history(run_dir)] == [[0, 1]], [
        round_outcome(r) for r in history(run_dir)]
    assert [(r[0], r[2], r[4]) for r in ledger_rows(url)] == [
        ("cam-0", 1, "committed"), ("cam-1", 1, "committed")]  # round 1 charged once
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "budget-exhausted" and status["completed_rounds"] == 1
    assert "past its own cap" in status["reason"]  # the full reason: who, which cap
    assert "device 0" in status["reason"] and "device 1" in status["reason"]
    assert np.load(run_dir / "final_model.npz").files


@pytest.mark.slow
def test_central_dp_with_secure_aggregation_through_the_federation_loop(
        tmp_path, monkeypatch, task_identity) -> None:
    """Every device in the population is charged each round, drawn or not, by the server's
    ledger and by its own; the two agree at every check-in."""
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    cfg = registry_run(url, tmp_path, monkeypatch, [None] * 5, "central", devices=5, rounds=2,
                       dp_sgd=False, central_dp=True, client_sample_rate=0.5,
                       central_clip_norm=0.1, secure_aggregation=True, min_train_devices=1)
    run_federation(FlakyFleetGrid(), cfg)
    assert read_status(cfg.run_dir()).status == "completed"
    rounds = history(cfg.run_dir())
    for record in rounds:
        assert record["central_dp"]["population"] == 5
        assert record["central_dp"]["denominator"] == 2.5  # q N, whoever was drawn
        assert record["central_dp"]["drawn"] == record["sampled"]
        assert record["budget_reserved"] == 5
        assert record["train_loss"] is None and record["device_kl_bits"] is None
    assert rounds[1]["ledger_disagreements"] == rounds[1]["ledger_device_reported_less"] == 0
    rows = ledger_rows(url)
    assert [(r[0], r[2], r[3]) for r in rows] == [
        (f"cam-{d}", n, "central-dp-fedavg") for d in range(5) for n in (1, 2)]
    for device in range(5):
        own = DeviceLedger.open(tmp_path / "devices" / f"cam-{device}" / "state")
        assert [(r.round_number, r.event.kind.value) for r in own.releases] == [
            (1, "central-dp-fedavg"), (2, "central-dp-fedavg")]


def test_a_cap_without_a_registry_is_refused_before_anything_is_written(
        tmp_path, monkeypatch, capsys) -> None:
    from fl_server.cli import main

    monkeypatch.delenv("FEDMSR_DB", raising=False)
    monkeypatch.chdir(tmp_path)  # no fedmsr.db here: no registry
    code = main(["run", "--dp", "local", "--epsilon-cap", "4", "--runs-dir", "runs"])
    assert code == 2
    assert capsys.readouterr().err.startswith(
        "error: --epsilon-cap: per-device budgets live in the fleet registry")
    assert not (tmp_path / "runs").exists()


def test_a_real_device_is_provisioned_once(tmp_path, capsys) -> None:
    from fl_client.device_budget import main

    assert main(["provision", str(tmp_path), "--epsilon-cap", "6", "--delta", "1e-6"]) == 0
    ledger = DeviceLedger.open(tmp_path)
    assert (ledger.cap_epsilon, ledger.delta, ledger.releases) == (6.0, 1e-6, ())
    assert main(["provision", str(tmp_path), "--epsilon-cap", "60"]) == 2  # never re-created
    assert "already exists" in capsys.readouterr().err
    assert DeviceLedger.open(tmp_path).cap_epsilon == 6.0
