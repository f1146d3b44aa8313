"""What an operator sees of the command line itself: help screens, version, database URLs,
colour. In-process (`main`), so each test takes well under a second."""

from __future__ import annotations

import io
import logging
import os
import re

import click
import pytest
import typer

from fl_server.cli import app, main, package_version
from fl_server.config import RUN_PANELS


def _every_command() -> list[list[str]]:
    """The argv prefix of every command and group of the tree (the root is [])."""
    found: list[list[str]] = []

    def walk(cmd: click.Command, path: list[str]) -> None:
        found.append(path)
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return found


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main([*argv]) == 0
    out = capsys.readouterr()
    assert out.err == ""
    return out.out


@pytest.mark.parametrize("path", _every_command(), ids=lambda p: " ".join(p) or "fedmsr")
def test_every_help_screen_is_plain_and_answers_to_h(capsys, path: list[str]) -> None:
    text = _help(capsys, *path, "-h")
    assert text.startswith("Usage: fedmsr"), text
    assert "\\[" not in text  # Typer's rich-markup escape, meaningless in plain help
    assert "\x1b" not in text
    assert "-h, --help" in text
    if "Commands:" in text:  # every summary whole at 80 columns, none cut with "..."
        commands = text.split("Commands:", 1)[1]
        assert "..." not in commands, commands


def test_defaults_show_without_escape(capsys) -> None:
    assert "[default: 8]" in _help(capsys, "run", "--help")


def test_version(capsys) -> None:
    assert _help(capsys, "--version").strip() == f"fedmsr {package_version()}"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", package_version())


@pytest.mark.parametrize("argv", [[], ["fleet"], ["db"]])
def test_bare_command_prints_help_and_exits_0(capsys, argv: list[str]) -> None:
    text = _help(capsys, *argv)
    assert text.startswith("Usage: fedmsr") and "Commands:" in text


def test_run_help_is_in_panels_deprecated_last(capsys) -> None:
    text = _help(capsys, "run", "-h")
    sections = re.findall(r"^(\S[^\n:]*):$", text, flags=re.MULTILINE)
    assert sections == [p for p in RUN_PANELS if p in sections] + ["Options"], sections
    for panel in ("Federation", "Data", "Training", "Differential privacy", "Secure aggregation",
                  "Collection and release", "Deployment", "Monitoring", "Deprecated"):
        assert panel in sections
    assert sections[-2:] == ["Deprecated", "Options"]
    deprecated = text.split("\nDeprecated:\n", 1)[1].split("\nOptions:\n", 1)[0]
    assert "--dp-sgd" in deprecated and "--dp-sgd" not in text.split("\nDeprecated:\n")[0]
    dp = text.split("\nDifferential privacy:\n", 1)[1]
    assert dp.lstrip().startswith("--dp TEXT")  # the DP mode heads its panel


@pytest.fixture
def registry_env(monkeypatch, tmp_path):
    """A clean slate for the registry URL: no FEDMSR_DB, no remembered --db, cwd tmp."""
    from fl_server.registry import db

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(db.ENV_VAR, raising=False)
    monkeypatch.setattr(db, "_flag_url", None)
    return db


@pytest.mark.parametrize(("given", "meant"), [
    ("postgres://u@127.0.0.1:1/test", "postgresql+psycopg://u@127.0.0.1:1/test"),
    ("postgresql://u@h/test", "postgresql+psycopg://u@h/test"),
    ("postgres+psycopg://h/test", "postgresql+psycopg://h/test"),
    ("postgresql+psycopg://h/test", "postgresql+psycopg://h/test"),
    ("sqlite:///postgres.db", "sqlite:///postgres.db"),
])
def test_postgres_spellings_mean_psycopg(registry_env, given: str, meant: str) -> None:
    assert registry_env.normalised(given) == meant
    assert str(registry_env.get_engine(given).url) == meant  # the driver loads: no refusal


def test_postgres_alias_is_accepted_by_db_flag(registry_env, capsys) -> None:
    # Nothing listens on port 1: the URL is accepted (no "unsupported", no "no driver"),
    # and the refusal is the connection's.
    assert main(["--db", "postgres://fedmsr@127.0.0.1:1/test", "db", "current"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --db: cannot use the registry database "
                          "postgresql+psycopg://fedmsr@127.0.0.1:1/test"), err


@pytest.mark.parametrize("url", ["mysql://x/y", "not a url"])
def test_bad_fedmsr_db_is_named_as_the_variable(registry_env, monkeypatch, capsys,
                                                url: str) -> None:
    monkeypatch.setenv("FEDMSR_DB", url)
    assert main(["db", "current"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: FEDMSR_DB: ") and len(err.strip().splitlines()) == 1, err
    monkeypatch.setattr(registry_env, "_flag_url", None)
    assert main(["--db", url, "db", "current"]) == 2
    assert capsys.readouterr().err.startswith("error: --db: ")


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_colour_only_on_a_terminal_without_no_color(monkeypatch) -> None:
    from fl_server.terminal import colour_allowed

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert colour_allowed(_Stream(tty=True)) and not colour_allowed(_Stream(tty=False))
    monkeypatch.setenv("NO_COLOR", "1")
    assert not colour_allowed(_Stream(tty=True))
    monkeypatch.setenv("NO_COLOR", "")  # the convention: empty means unset
    assert colour_allowed(_Stream(tty=True))


@pytest.mark.parametrize(("tty", "no_color", "coloured"), [
    (False, "", False), (True, "1", False), (True, "", True)])
def test_engine_log_is_plain_off_a_terminal_and_without_the_deprecation(
        monkeypatch, tty: bool, no_color: str, coloured: bool) -> None:
    """What the engine process sets up before `run_simulation`, through Flower's own
    logger: the run_simulation notice is dropped, any other record kept, colour only on a
    terminal without NO_COLOR (Ray's prefixes follow)."""
    from flwr.common.logger import FLOWER_LOGGER, console_handler, log

    from fl_server.engine_output import DropRunSimulationDeprecation, configure_engine_output

    stream = _Stream(tty)
    monkeypatch.setattr("sys.stderr", stream)
    monkeypatch.setenv("NO_COLOR", no_color)
    monkeypatch.setenv("RAY_COLOR_PREFIX", "1")  # restored afterwards, whatever is set
    monkeypatch.setattr(console_handler, "colored", console_handler.colored)
    monkeypatch.setattr(FLOWER_LOGGER, "filters", list(FLOWER_LOGGER.filters))
    old = console_handler.setStream(stream)
    try:
        configure_engine_output()
        configure_engine_output()  # idempotent: one filter
        log(logging.WARNING, "DEPRECATED FEATURE: %s\n\n  removed later", "The `run_simulation` "
            "function is deprecated and will be removed in a future version of Flower.")
        log(logging.WARNING, "DEPRECATED FEATURE: %s", "something else")
        log(logging.INFO, "aggregate_train: Received 2 results and 0 failures")
    finally:
        console_handler.setStream(old)
    text = stream.getvalue()
    assert "run_simulation" not in text
    assert "DEPRECATED FEATURE: something else" in text and "aggregate_train" in text
    assert ("\x1b" in text) is coloured
    assert (os.environ["RAY_COLOR_PREFIX"] == "0") is not coloured
    assert sum(isinstance(f, DropRunSimulationDeprecation) for f in FLOWER_LOGGER.filters) == 1


def test_run_progress_says_ray_is_starting_then_counts_rounds(monkeypatch) -> None:
    import sys
    import threading
    import time
    import types

    from rich.console import Console

    from fl_server.config import RunConfig
    from fl_server.run_progress import STARTING_RAY, RunProgress
    from tests.helpers import round_record

    ray_up = threading.Event()
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(is_initialized=ray_up.is_set))
    cfg = RunConfig(rounds=3)
    out = io.StringIO()
    with RunProgress(cfg, Console(file=out, force_terminal=True, width=150)) as progress:
        progress.run_started(cfg, 1)  # a resume after round 1: Ray is still starting
        assert progress.description == STARTING_RAY
        ray_up.set()
        deadline = time.monotonic() + 30  # the watcher polls every 0.2 s
        while progress.description != "round 2/3" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert progress.description == "round 2/3"
        progress.round_finished(cfg, round_record(2))
        assert progress.description == "round 3/3"
    assert STARTING_RAY in out.getvalue()


def test_run_progress_only_when_stderr_is_a_terminal(monkeypatch) -> None:
    from rich.console import Console

    from fl_server.config import RunConfig
    from fl_server.run_progress import RunProgress

    piped = Console(file=io.StringIO())
    monkeypatch.setattr("sys.stderr", _Stream(tty=False))
    assert RunProgress.for_terminal(RunConfig(), piped) is None
    monkeypatch.setattr("sys.stderr", _Stream(tty=True))
    assert RunProgress.for_terminal(RunConfig(), piped) is not None
