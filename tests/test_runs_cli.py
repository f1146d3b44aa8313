"""`fedmsr runs list/show`, the run header's left-out devices, and the one budget-exhausted
line, over one real registry-backed DP run shared by the module.

The run: 5 synthetic indices, 3 enrolled (cam-0..2) with caps that fit one local DP-SGD
round and not two, 2 rounds planned: round 1 trains, round 2 stops the run
budget-exhausted. It runs through the federation loop with the real ClientApp on an
in-process grid (no Ray), a few seconds.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import shutil
from pathlib import Path

import pytest
import typer
from rich.console import Console

from fl_server.cli import main
from fl_server.config import RunConfig
from fl_server.enrollment import BundleOptions, DeviceSpec, enroll
from fl_server.federation import run_federation
from fl_server.registry import db
from fl_server.registry.fleet import fleet_for_new_run, left_out
from fl_server.revocation import revoke
from fl_server.run_status import read_status
from fl_server.sinks import observers_for
from tests.test_budget_run import DELTA, LOCAL
from tests.test_budget_selection import cap_for
from tests.test_secagg_workflow import FlakyFleetGrid

RUN_ID = "r-exhaust"


@dataclasses.dataclass(frozen=True)
class SharedRun:
    root: Path
    url: str
    cfg: RunConfig
    console: str
    warnings: list[str]


class _Collect(logging.Handler):
    """Keeps the messages of the records it gets."""

    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory) -> SharedRun:
    from flwr.supercore.task_identity import TaskIdentity

    root = tmp_path_factory.mktemp("runs-cli")
    url = f"sqlite:///{root / 'registry.db'}"
    handler = _Collect(logging.WARNING)
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    logging.getLogger("fedmsr").addHandler(handler)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDMSR_DB", url)
        mp.chdir(root)
        db.upgrade(url)
        enroll(url, [DeviceSpec(f"cam-{i}", epsilon_cap=cap_for(1, LOCAL), delta_cap=DELTA,
                                device_index=i) for i in range(3)],
               BundleOptions(bundles_dir=root / "devices"))
        cfg = fleet_for_new_run(RunConfig(
            devices=5, rounds=2, seed=3, clips_per_day=4, days=2, batch_size=4, dp_sgd=True,
            noise_multiplier=1.0, min_train_devices=2, delta=DELTA, runs_dir=str(root / "runs"),
            run_id=RUN_ID).validate())
        cfg.run_dir().mkdir(parents=True)
        cfg.save(cfg.run_dir() / "run.json")
        out = io.StringIO()
        try:
            run_federation(FlakyFleetGrid(), cfg, Console(file=out, width=200),
                           observers=observers_for(cfg))
        finally:
            logging.getLogger("fedmsr").removeHandler(handler)
            TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
    return SharedRun(root, url, cfg, out.getvalue(), handler.messages)


@pytest.fixture
def in_root(shared_run: SharedRun, monkeypatch) -> SharedRun:
    monkeypatch.setenv("FEDMSR_DB", shared_run.url)
    monkeypatch.chdir(shared_run.root)
    return shared_run


def fedmsr_here(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_run_ends_budget_exhausted_quietly(shared_run: SharedRun) -> None:
    status = read_status(shared_run.cfg.run_dir())
    assert status.status == "budget-exhausted" and status.completed_rounds == 1
    assert "device 0 declined: device ledger" in status.reason  # the full reason is kept
    assert status.summary.startswith("privacy budget exhausted before round 2: 3 device(s) "
                                     "out of budget")  # ... and a short one beside it
    assert "budget-exhausted" not in shared_run.console  # the engine prints nothing of it
    # Nodes 3 and 4 are outside the run (not enrolled): the header says so, not every round.
    assert not [w for w in shared_run.warnings if "check-in refused" in w]
    # The exhausting round logs no per-device warning: the launcher's one line says it.
    assert not [w for w in shared_run.warnings if "privacy cap" in w or "own budget" in w]


def test_the_cli_prints_one_short_budget_line_and_exits_3(in_root: SharedRun, capsys) -> None:
    from fl_server.cli.run import EXIT_BUDGET_EXHAUSTED, _finish_run

    with pytest.raises(typer.Exit) as exited:
        _finish_run(in_root.cfg, read_status(in_root.cfg.run_dir()))
    assert exited.value.exit_code == EXIT_BUDGET_EXHAUSTED
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and len(lines[0]) < 300, lines
    assert "3 device(s) out of budget" in lines[0] and "`fedmsr budget show`" in lines[0]
    assert f"`fedmsr runs show {RUN_ID}`" in lines[0]


def test_runs_list_joins_the_directory_and_the_registry(in_root: SharedRun, capsys) -> None:
    code, out, err = fedmsr_here(capsys, "runs", "list")
    assert code == 0, err
    header, row = out.strip().splitlines()
    assert header.split()[:4] == ["id", "status", "rounds", "dp"]
    cells = row.split()
    assert cells[:4] == [RUN_ID, "budget-exhausted", "1/2", "local"]
    assert cells[-1] == RUN_ID  # the registry's run id: the run is in both

    code, out, _ = fedmsr_here(capsys, "runs", "list", "--json")
    (run,) = json.loads(out)["runs"]
    assert set(run) == {"id", "status", "stale", "reason", "rounds_done", "rounds_planned",
                        "dp_mode", "started", "duration_s", "run_dir", "registry_run_id",
                        "notes"}
    assert (run["status"], run["rounds_done"], run["rounds_planned"], run["dp_mode"],
            run["registry_run_id"], run["notes"]) == ("budget-exhausted", 1, 2, "local",
                                                     RUN_ID, [])
    assert run["duration_s"] >= 0 and run["started"]


def test_runs_show_has_config_rounds_epsilon_reason_and_files(in_root: SharedRun,
                                                              capsys) -> None:
    code, out, err = fedmsr_here(capsys, "runs", "show", RUN_ID)
    assert code == 0, err
    assert out.startswith(f"run {RUN_ID}: budget-exhausted, 1/2 rounds\n")
    assert "reason: privacy budget exhausted before round 2" in out
    assert "min_train_devices=2" in out and "device_indices=[0, 1, 2]" in out
    assert "checkpoints/ (1; latest round-0001.json)" in out and "history.json" in out
    code, out, _ = fedmsr_here(capsys, "runs", "show", RUN_ID, "--json")
    shown = json.loads(out)
    (round_1,) = shown["rounds"]
    assert (round_1["round"], round_1["sampled"], round_1["trained"], round_1["rejected"]) \
        == (1, 3, 3, 0)
    assert shown["epsilon_source"] == "privacy ledger"
    # The RDP bound of one LOCAL release: above the reported (PLD) figure the cap allows for
    # one round, below twice that.
    assert cap_for(0, LOCAL) < round_1["epsilon"] < 2 * cap_for(1, LOCAL)
    assert shown["files"]["checkpoints"] == 1 and shown["config"]["rounds"] == 2


def test_a_run_in_only_one_of_the_two_places_says_so(in_root: SharedRun, capsys,
                                                     monkeypatch, tmp_path) -> None:
    # The registry has the run, this runs directory does not: shown from the registry.
    code, out, _ = fedmsr_here(capsys, "runs", "list", "--json", "--runs-dir",
                               str(tmp_path / "empty"))
    (run,) = json.loads(out)["runs"]
    assert run["status"] == "budget-exhausted" and run["run_dir"] is None
    assert any("no run directory" in n for n in run["notes"])
    code, out, _ = fedmsr_here(capsys, "runs", "show", RUN_ID, "--runs-dir",
                               str(tmp_path / "empty"), "--json")
    assert code == 0 and [r["round"] for r in json.loads(out)["rounds"]] == [1]

    # A copy of the directory with no registry configured here: shown from its files.
    copy = tmp_path / "runs"
    shutil.copytree(in_root.cfg.run_dir(), copy / "copied")
    monkeypatch.delenv("FEDMSR_DB")
    monkeypatch.chdir(tmp_path)
    code, out, _ = fedmsr_here(capsys, "runs", "list", "--json")
    (run,) = json.loads(out)["runs"]
    assert run["registry_run_id"] is None and run["rounds_done"] == 1
    assert any("no registry is configured here" in n for n in run["notes"])


def test_an_interrupted_run_and_a_corrupt_status_are_rows_not_crashes(
        in_root: SharedRun, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("FEDMSR_DB")
    monkeypatch.chdir(tmp_path)
    for name in ("stopped", "broken"):
        shutil.copytree(in_root.cfg.run_dir(), tmp_path / "runs" / name)
    status = tmp_path / "runs" / "stopped" / "status.json"
    status.write_text(json.dumps({"status": "failed", "planned_rounds": 2,
                                  "completed_rounds": 1, "reason": "interrupted by SIGTERM",
                                  "updated_unix": 1.0}))
    (tmp_path / "runs" / "broken" / "status.json").write_text("{not json")
    code, out, _ = fedmsr_here(capsys, "runs", "list", "--json")
    runs = {r["id"]: r for r in json.loads(out)["runs"]}
    assert code == 0 and runs["stopped"]["status"] == "interrupted"
    assert runs["broken"]["status"] == "unreadable"
    assert "broken/status.json" in runs["broken"]["reason"]


def test_unknown_id_is_one_line_with_a_suggestion(in_root: SharedRun, capsys) -> None:
    code, out, err = fedmsr_here(capsys, "runs", "show", RUN_ID[:-2])
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ID: no run 'r-exhau'")
    assert f"did you mean {RUN_ID}?" in err
    code, _, err = fedmsr_here(capsys, "runs", "show", "zzzzzz")
    assert code == 2 and "`fedmsr runs list` shows the runs" in err


def test_empty_runs_dir_without_registry(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("FEDMSR_DB", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    code, out, _ = fedmsr_here(capsys, "runs", "list")
    assert code == 0 and out.startswith("no runs in runs or in the registry")
    code, out, _ = fedmsr_here(capsys, "runs", "list", "--json")
    assert json.loads(out)["runs"] == []
    (tmp_path / "file").write_text("")
    code, _, err = fedmsr_here(capsys, "runs", "list", "--runs-dir", "file")
    assert code == 2 and err.startswith("error: --runs-dir: file: not a directory")


def test_a_corrupt_history_is_one_line_naming_the_file(in_root: SharedRun, capsys, tmp_path,
                                                       monkeypatch) -> None:
    monkeypatch.delenv("FEDMSR_DB")
    copy = tmp_path / "runs" / "bad"
    shutil.copytree(in_root.cfg.run_dir(), copy)
    (copy / "history.json").write_text('[{"round": 1}]')
    code, out, err = fedmsr_here(capsys, "runs", "show", "bad", "--runs-dir",
                                 str(tmp_path / "runs"))
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith(f"error: ID: {copy / 'history.json'}: unreadable history (")


def test_the_header_names_the_left_out_devices_and_why(tmp_path, monkeypatch, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    monkeypatch.setenv("FEDMSR_DB", url)
    monkeypatch.chdir(tmp_path)
    db.upgrade(url)
    enroll(url, [DeviceSpec("a", device_index=0), DeviceSpec("b", device_index=1),
                 DeviceSpec("c", device_index=2, consent_training=False),
                 DeviceSpec("d", device_index=4)],
           BundleOptions(bundles_dir=tmp_path / "devices"))
    revoke(url, "b", "lost")
    cfg = fleet_for_new_run(RunConfig(devices=6, runs_dir=str(tmp_path), run_id="h"))
    assert {(g.reason, g.indices, g.names) for g in left_out(cfg)} == {
        ("revoked", (1,), ("b",)), ("no consent to training", (2,), ("c",)),
        ("not enrolled", (3, 5), ())}

    from fl_server.cli.run import _devices_phrase, _print_left_out

    assert _devices_phrase(cfg) == "2 of 6 devices (from the registry)"
    _print_left_out(cfg)
    assert "left out, not enrolled: 2 device(s), index 3, 5" in capsys.readouterr().out


def test_a_running_run_whose_engine_is_gone_is_stale(in_root: SharedRun, capsys, tmp_path,
                                                    monkeypatch) -> None:
    import subprocess

    from fl_server.launcher import ENGINE_FILE, EngineRecord

    monkeypatch.delenv("FEDMSR_DB")
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "runs" / "killed"
    shutil.copytree(in_root.cfg.run_dir(), run_dir)
    (run_dir / "status.json").write_text(json.dumps({"status": "running", "planned_rounds": 2,
                                                     "completed_rounds": 1}))
    gone = subprocess.Popen(["true"], start_new_session=True)  # its own group, then none
    gone.wait()
    (run_dir / ENGINE_FILE).write_text(EngineRecord(gone.pid, gone.pid, 1, "b", "t").to_json())
    code, out, _ = fedmsr_here(capsys, "runs", "list")
    assert code == 0 and "running (stale)" in out and "--resume killed" in out
