"""Every server fedmsr starts listens on 127.0.0.1 only, by default: read from the
processes' own sockets (/proc), while they run.

`fedmsr run` (the launcher, its engine, Ray and the run's metrics exporter), `fedmsr
superlink start` (Flower's SuperLink and what it spawns), `fedmsr device start` (a
SuperNode) and `fedmsr monitor`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from fl_server.deployment import free_port
from fl_server.fault_points import HOLD_ENV
from fl_server.launcher import group_members
from tests.helpers import FEDMSR, PATIENT, SMALL, fedmsr, wait_for
from tests.listening import Listener, descendants, listeners

pytestmark = pytest.mark.slow


@contextmanager
def started(args: list[str], cwd: Path, **env: str) -> Iterator[subprocess.Popen]:
    """`fedmsr ARGS` in a session of its own, stopped (its whole group) on the way out."""
    environ = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", **env}
    proc = subprocess.Popen([*FEDMSR, *args], cwd=cwd, env=environ, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=open(cwd / "stderr.log", "w"))
    try:
        yield proc
    finally:
        for pid in [proc.pid]:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=30)


def open_ports(pids: Callable[[], set[int]], proc: subprocess.Popen, cwd: Path,
               want: Callable[[list[Listener]], bool], timeout_s: float = 300.0
               ) -> list[Listener]:
    """The processes' listeners once `want` holds of them; fails when the process dies or
    the time runs out (never a silent fall-through)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = listeners(pids())
        if want(found):
            return found
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before listening: "
                                 f"{(cwd / 'stderr.log').read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"not listening within {timeout_s} s; found {found}")
        time.sleep(0.2)


def assert_loopback(found: list[Listener]) -> None:
    assert found, "no listening socket found: the check would be vacuous"
    outside = [str(f) for f in found if not f.loopback]
    assert not outside, "listening beyond loopback:\n" + "\n".join(outside)


def test_a_run_listens_on_loopback_only(tmp_path) -> None:
    """The launcher, the engine, Ray's processes and the exporter of a run held inside its
    second round (so every one of them is up while the sockets are read)."""
    args = ["run", "--devices", "2", "--rounds", "2", "--seed", "1", *SMALL, *PATIENT,
            "--metrics-port", "0", "--runs-dir", str(tmp_path / "runs"), "--run-id", "lo"]
    run_dir = tmp_path / "runs" / "lo"
    with started(args, tmp_path, **{HOLD_ENV: "checkin:2"}) as proc:
        try:
            wait_for(run_dir / "checkpoints" / "round-0001.json", proc, timeout_s=300)
            engine = json.loads((run_dir / "engine.json").read_text())

            def processes() -> set[int]:
                return (descendants(proc.pid) | set(group_members(engine["pgid"]))
                        | descendants(engine["pgid"]))
            found = open_ports(processes, proc, tmp_path,
                               lambda f: any(x.pid == engine["pgid"] for x in f))
            assert_loopback(found)
            assert any("ray" in f.command or "gcs_server" in f.command for f in found), found
        finally:
            engine_file = run_dir / "engine.json"
            if engine_file.exists():
                try:
                    os.killpg(json.loads(engine_file.read_text())["pgid"], signal.SIGKILL)
                except ProcessLookupError:
                    pass


def test_a_superlink_a_supernode_and_the_monitor_listen_on_loopback_only(tmp_path) -> None:
    port = free_port()
    db = f"sqlite:///{tmp_path / 'fedmsr.db'}"
    for step in (["pki", "init", "--pki-dir", "pki"], ["db", "upgrade"],
                 ["fleet", "enroll", "--count", "1", "--prefix", "lo-", "--superlink",
                  f"127.0.0.1:{port}"]):
        result = fedmsr("--db", db, *step, cwd=tmp_path, timeout=120)
        assert result.returncode == 0, result.stderr
    link_dir, node_dir, monitor_dir = (tmp_path / n for n in ("link", "node", "monitor"))
    for d in (link_dir, node_dir, monitor_dir, tmp_path / "runs"):
        d.mkdir()
    with started(["--db", db, "superlink", "start", "--pki-dir", str(tmp_path / "pki"),
                  "--port", str(port), "--state", str(tmp_path / "state.db")],
                 link_dir) as link:
        found = open_ports(lambda: set(group_members(link.pid)), link, link_dir,
                           lambda f: any(x.port == port for x in f))
        assert_loopback(found)
        with started(["--db", db, "device", "start", str(tmp_path / "devices" / "lo-0")],
                     node_dir) as node:
            assert_loopback(open_ports(lambda: set(group_members(node.pid)), node, node_dir,
                                       bool))
    with started(["--db", db, "monitor", "--port", "0", "--runs-dir", str(tmp_path / "runs")],
                 monitor_dir) as monitor:
        assert_loopback(open_ports(lambda: set(group_members(monitor.pid)), monitor,
                                   monitor_dir, bool, timeout_s=120))
