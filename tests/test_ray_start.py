"""Starting Ray for the simulation engine: a node start that timed out is retried.

Ray waits a fixed 30 s for its node to register; on a loaded machine that can pass, and
the run used to fail before its first round with no devices. The unit tests play the
timeout with a stand-in `ray.init` that leaves processes behind, as a failed real start
does; the last test makes a real Ray start time out and checks the retry with real Ray.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from fl_server.proc_table import descendants, read_stat
from fl_server.ray_start import NODE_START_TIMEOUT, RayStartError, start_ray

RAY_TIMEOUT = ("The current node timed out during startup. This could happen because some "
               "of the raylet failed to startup or the GCS has become overloaded.")


def _alive(pid: int) -> bool:
    stat = read_stat(pid)
    return stat is not None and stat.alive


class _Init:
    """A stand-in `ray.init`: each call starts a process tree (a shell with a child of its
    own, as Ray's raylet has workers), then fails with the given errors in turn."""

    def __init__(self, *errors: Exception | None) -> None:
        self.errors = list(errors)
        self.calls: list[dict[str, object]] = []
        self.trees: list[set[int]] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    def __call__(self, **kwargs: object) -> None:
        self.calls.append(kwargs)
        before = descendants(os.getpid())
        proc = subprocess.Popen(["sh", "-c", "sleep 600 & wait"])
        self.procs.append(proc)
        deadline = time.monotonic() + 10
        while len(tree := descendants(os.getpid()) - before) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)  # until the shell has started its own child
        self.trees.append(tree)
        error = self.errors.pop(0)
        if error is not None:
            raise error

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                for pid in descendants(proc.pid):
                    os.kill(pid, 9)
                proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(autouse=True)
def _own_pythonpath(monkeypatch: pytest.MonkeyPatch) -> None:
    """`start_ray` sets PYTHONPATH, as Flower does: put it back after each test, so later
    tests' subprocesses do not inherit this one's sys.path."""
    monkeypatch.delenv("PYTHONPATH", raising=False)


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """A child this process had before Ray was started: never Ray's, never to be killed."""
    proc = subprocess.Popen(["sleep", "600"])
    yield proc
    proc.kill()
    proc.wait(timeout=10)


def test_a_timed_out_start_is_retried_after_its_processes_are_stopped(
        bystander: subprocess.Popen[bytes]) -> None:
    init = _Init(Exception(RAY_TIMEOUT), None)
    try:
        assert start_ray({"num_cpus": 2, "num_gpus": 0}, init=init) == 2
        assert len(init.calls) == 2 and init.calls[0] == init.calls[1]
        assert init.calls[0]["num_cpus"] == 2 and init.calls[0]["include_dashboard"] is False
        first, second = init.trees
        assert len(first) == 2, first  # the shell and its sleep
        assert [pid for pid in first if _alive(pid)] == []
        assert all(_alive(pid) for pid in second)  # the start that worked keeps its node
        assert bystander.poll() is None
    finally:
        init.stop()


def test_the_start_gets_what_flowers_backend_would_pass(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The same `ray.init` arguments as Flower's own `RayBackend.init_ray` for fedmsr's
    backend configuration, its PYTHONPATH for Ray's workers included (this sys.path, then
    the PYTHONPATH already set), and the same PYTHONPATH left in this environment."""
    import ray
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend

    from fl_server.launcher import backend_config

    config = backend_config()
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    flower_calls: list[dict[str, object]] = []
    monkeypatch.setattr(ray, "init", lambda **kwargs: flower_calls.append(kwargs))
    monkeypatch.setenv("PYTHONPATH", "/already/there")
    backend = RayBackend.__new__(RayBackend)  # only its init_ray, not its actor pool
    backend.init_args_key = "init_args"
    backend.init_ray(config)
    flower_env = os.environ["PYTHONPATH"]

    monkeypatch.setenv("PYTHONPATH", "/already/there")
    init = _Init(None)
    try:
        start_ray(config["init_args"], init=init)
    finally:
        init.stop()
    assert init.calls == flower_calls
    assert os.environ["PYTHONPATH"] == flower_env
    assert flower_env.endswith(f"{os.pathsep}/already/there")


def test_a_running_ray_is_used_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    def must_not_start(**kwargs: object) -> None:
        raise AssertionError("ray.init called while Ray was running")

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "init", must_not_start)
    assert start_ray({"num_cpus": 1}) == 0


def test_every_start_timing_out_is_one_clear_error(bystander: subprocess.Popen[bytes]) -> None:
    init = _Init(Exception(RAY_TIMEOUT), Exception(RAY_TIMEOUT))
    try:
        with pytest.raises(RayStartError) as caught:
            start_ray({"num_cpus": 1}, tries=2, init=init)
        message = str(caught.value)
        assert "\n" not in message
        assert message.startswith("Ray's node did not start in 2 tries")
        assert NODE_START_TIMEOUT in message and "overloaded" in message
        assert len(init.calls) == 2
        assert [pid for tree in init.trees for pid in tree if _alive(pid)] == []
        assert bystander.poll() is None
    finally:
        init.stop()


def test_any_other_error_is_raised_as_is_at_once() -> None:
    error = ValueError("num_cpus must be an integer")
    init = _Init(error, None)
    try:
        with pytest.raises(ValueError) as caught:
            start_ray({"num_cpus": "two"}, init=init)
        assert caught.value is error and len(init.calls) == 1
        assert all(_alive(pid) for pid in init.trees[0])  # not a timeout: nothing stopped
    finally:
        init.stop()


def test_tries_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="tries must be at least 1, got 0"):
        start_ray({}, tries=0, init=_Init())


@pytest.mark.slow
def test_a_real_ray_start_that_timed_out_is_retried() -> None:
    probe = subprocess.run([sys.executable, "-m", "tests.ray_start_probe"],
                           capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr[-3000:]
    report = json.loads(probe.stdout.strip().splitlines()[-1])
    assert "timed out (try 1 of 3)" in probe.stderr
    assert report["tries"] == 2
    # The failed start had started Ray's own processes (GCS, raylet, agents) under its
    # session, and none of them, anywhere on the machine, outlived the retry.
    assert len(report["at_failure"]) >= 2, report
    assert report["after_retry"] == [], report
    assert report["cpus"] == 2.0


def test_the_engine_starts_ray_under_its_progress_line_and_fails_in_one_line(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`run_engine` starts Ray while "starting Ray" shows (the progress line is entered),
    before Flower's simulation; when Ray does not start, the run fails at once with the
    start's one-line reason and the simulation never runs."""
    import flwr.simulation

    import fl_server.engine_output
    import fl_server.ray_start
    from fl_server.config import RunConfig
    from fl_server.launcher import RAY_LOOPBACK_ENV, backend_config, run_engine
    from fl_server.run_progress import RunProgress
    from fl_server.run_status import read_status

    shown: list[str] = []

    class Line:
        def __enter__(self) -> Line:
            shown.append("entered")
            return self

        def __exit__(self, *exc: object) -> None:
            shown.append("left")

    def no_ray(init_args: dict[str, object]) -> int:
        assert init_args == backend_config()["init_args"]
        shown.append("ray")
        raise RayStartError(3, RAY_TIMEOUT)

    def no_simulation(**kwargs: object) -> None:
        raise AssertionError("the simulation ran without Ray")

    # What run_engine changes in this process for good (its own process in production) is
    # put back after the test: the environment, Flower's logger, the engine's output.
    for name in (*RAY_LOOPBACK_ENV, "RAY_COLOR_PREFIX"):
        monkeypatch.setenv(name, os.environ.get(name, ""))
    flower_log = logging.getLogger("flwr")
    monkeypatch.setattr(flower_log, "propagate", flower_log.propagate)
    monkeypatch.setattr(fl_server.engine_output, "configure_engine_output", lambda: None)
    monkeypatch.setattr(RunProgress, "for_terminal", classmethod(lambda cls, cfg, console: Line()))
    monkeypatch.setattr(fl_server.ray_start, "start_ray", no_ray)
    monkeypatch.setattr(flwr.simulation, "run_simulation", no_simulation)
    cfg = RunConfig(devices=2, rounds=1, runs_dir=str(tmp_path)).with_run_id("r1")
    cfg.run_dir().mkdir()
    status = run_engine(cfg)
    assert shown == ["entered", "ray", "left"]
    assert status.status == "failed" and status.completed_rounds == 0
    assert status.reason.startswith("Ray's node did not start in 3 tries")
    assert "\n" not in status.reason
    assert read_status(cfg.run_dir()) == status
