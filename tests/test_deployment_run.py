"""`fedmsr run --superlink`: the refusals that need no SuperLink, and how the ServerApp
finds the run it was handed. (The deployed run itself: tests/test_deployment.py.)"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from fl_server import deployment, pki
from fl_server.cli import main
from fl_server.config import ConfigError, RunConfig
from fl_server.deployment_run import (
    REGISTRY_EXTRA,
    RUN_CONFIG_KEY,
    check_same_engine,
    load_submitted_run,
    portable_registry_url,
)
from fl_server.registry.db import ENV_VAR
from fl_server.registry.identity import SUPERLINK_EXTRA

ROOT = Path(__file__).resolve().parents[1]


def run_cli(args: list[str], cwd: Path, monkeypatch, capsys, **env: str) -> tuple[int, str]:
    """`fedmsr ARGS` in process (exit code, stderr), in `cwd` with `env` set."""
    monkeypatch.chdir(cwd)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    code = main(args)
    return code, capsys.readouterr().err


def test_unreachable_superlink_is_one_error_and_writes_no_run(tmp_path, monkeypatch,
                                                              capsys) -> None:
    flwr_home = tmp_path / "flwr-home"
    created = pki.init_pki(tmp_path / "pki", ["127.0.0.1"])
    closed = deployment.free_port()  # nothing listens there
    deployment.write_flwr_config(flwr_home, f"127.0.0.1:{closed}", created.ca_cert)
    code, err = run_cli(["run", "--superlink", f"127.0.0.1:{closed}", "--devices", "3"],
                        tmp_path, monkeypatch, capsys, FLWR_HOME=str(flwr_home),
                        FEDMSR_DB=f"sqlite:///{tmp_path / 'r.db'}")
    assert code == 2, err
    assert err.startswith(f"error: --superlink: cannot use the SuperLink at 127.0.0.1:{closed}: ")
    assert "unavailable" in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists() and not (tmp_path / "r.db").exists()


@pytest.mark.parametrize(("args", "db", "expected"), [
    (["--superlink", "nohost"], "sqlite:///r.db", "must be HOST:PORT"),
    (["--superlink", "127.0.0.1:99999"], "sqlite:///r.db", "must be HOST:PORT"),
    (["--superlink", "127.0.0.1:9092"], "", "take their fleet from the registry"),
    (["--superlink", "127.0.0.1:9092"], "sqlite:///r.db", "no [superlink.fedmsr] connection"),
])
def test_bad_superlink_invocations_are_refused_before_anything_is_written(
        tmp_path, monkeypatch, capsys, args, db, expected) -> None:
    code, err = run_cli(["run", *args], tmp_path, monkeypatch, capsys,
                        FLWR_HOME=str(tmp_path / "empty-flwr-home"), FEDMSR_DB=db)
    assert code == 2
    assert err.startswith("error: --superlink: ") and expected in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no run, no db, no Flower home


def test_a_resumed_run_stays_on_its_engine() -> None:
    simulated = RunConfig(run_id="sim")
    deployed = dataclasses.replace(simulated, run_id="dep",
                                   extra={SUPERLINK_EXTRA: "127.0.0.1:9092"})
    with pytest.raises(ConfigError, match="ran in simulation"):
        check_same_engine(simulated, "127.0.0.1:9092")
    with pytest.raises(ConfigError, match="resume it with --superlink"):
        check_same_engine(deployed, None)
    check_same_engine(simulated, None)
    check_same_engine(deployed, "127.0.0.2:9093")  # a SuperLink that moved


def test_the_recorded_registry_url_has_no_password_and_an_absolute_sqlite_path(
        tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert portable_registry_url("sqlite:///fedmsr.db") == f"sqlite:///{tmp_path}/fedmsr.db"
    assert portable_registry_url("postgresql+psycopg://op:s3cret@db:5432/fleet?options="
                                 "-csearch_path%3Dx") == \
        "postgresql+psycopg://op@db:5432/fleet?options=-csearch_path%3Dx"


def test_the_server_app_runs_the_submitted_run_json_in_its_directory(
        tmp_path, monkeypatch) -> None:
    run_dir = tmp_path / "elsewhere" / "runs" / "r7"
    run_dir.mkdir(parents=True)
    recorded = "postgresql+psycopg://op@db:5432/fleet"
    RunConfig(run_id="r7", runs_dir="runs", device_indices=[0, 2],
              extra={REGISTRY_EXTRA: recorded}).save(run_dir / "run.json")
    monkeypatch.chdir(tmp_path)  # the SuperLink's working directory, not the operator's
    monkeypatch.setenv(ENV_VAR, "postgresql+psycopg://op:s3cret@db:5432/fleet")
    cfg = load_submitted_run(str(run_dir / "run.json"))
    assert cfg.run_dir() == run_dir and cfg.device_indices == [0, 2]
    assert os.environ[ENV_VAR].endswith(":s3cret@db:5432/fleet")  # same database: kept
    monkeypatch.setenv(ENV_VAR, "sqlite:///other.db")
    load_submitted_run(str(run_dir / "run.json"))
    assert os.environ[ENV_VAR] == recorded  # another database: the run's own
    with pytest.raises(ConfigError, match="absolute path"):
        load_submitted_run("runs/r7/run.json")


def test_the_app_declares_the_override_it_is_submitted_with() -> None:
    """Flower refuses run-config overrides the app's table does not declare."""
    import tomllib

    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert table[RUN_CONFIG_KEY] == ""
    # Flower's run config holds scalars only
    assert all(isinstance(v, (str, int, float, bool)) for v in table.values()), {
        k: type(v).__name__ for k, v in table.items() if not isinstance(v, (str, int, float))}
