"""`fedmsr run`'s options and `[tool.flwr.app.config]` both come from RunConfig: same
names, same defaults, and errors that name the option the user typed."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest
import typer

from fl_server.cli import app, main
from fl_server.cli.run_options import OPTION_NAMES
from fl_server.config import RUN_OPTION, RunConfig, user_config_key

ROOT = Path(__file__).resolve().parents[1]


def test_flower_app_config_is_run_config_at_its_defaults() -> None:
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    table.pop("fedmsr-run")  # the `fedmsr run --superlink` hand-over, not a setting
    scalar = (bool, int, float, str)  # what Flower's run config can hold (None cannot be)
    expected = {user_config_key(f.name): f.default for f in dataclasses.fields(RunConfig)
                if isinstance(f.default, scalar)}
    assert sorted(table) == sorted(expected), "[tool.flwr.app.config] keys != RunConfig fields"
    for key, default in expected.items():
        assert (table[key], type(table[key])) == (default, type(default)), key
    assert RunConfig.from_user_config(table) == RunConfig()


def test_run_options_are_run_config_fields_with_their_defaults() -> None:
    command = typer.main.get_command(app).commands["run"]  # type: ignore[attr-defined]
    params = {p.name: p for p in command.params}
    fields = [f for f in dataclasses.fields(RunConfig) if RUN_OPTION in f.metadata]
    assert set(params) == set(OPTION_NAMES) == {f.name for f in fields} | {
        "dp", "resume", "superlink", "config", "dry_run"}
    for f in fields:
        option, param = f.metadata[RUN_OPTION], params[f.name]
        assert param.opts == [OPTION_NAMES[f.name]]
        assert param.help == option.help
        assert param.default == (option.unset if f.default is None else f.default), f.name
    assert params["dp"].default == RunConfig().dp_mode


@pytest.mark.parametrize(("args", "line"), [
    (["--dp", "central", "--central-noise", "0"],
     "error: --central-noise: must be a finite number > 0 with central DP, got 0.0"),
    (["--secure-aggregation", "--neighbours", "3"],
     ("error: --neighbours: must be even and in 2..7, or 7 (complete graph), got 3; or 0 "
      "for the default")),
    (["--dp", "both", "--dp-sgd"],
     ("error: --dp-sgd: --dp-sgd means --dp local; with --dp both drop it (--dp both is "
      "local DP-SGD plus central DP)")),
    (["--resume", "x", "--devices", "8", "--clip", "1.0"],  # given, though at the defaults
     "error: --resume: the run continues with its saved configuration; drop --clip, --devices"),
])
def test_bad_run_options_are_one_line_naming_the_option(tmp_path, capsys, args, line) -> None:
    assert main(["run", "--runs-dir", str(tmp_path / "runs"), *args]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [line]
    assert not (tmp_path / "runs").exists()
