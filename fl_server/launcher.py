"""Start a run on Flower's simulation engine (or a SuperLink) and report how it really ended.

Ray binds non-loopback addresses unless `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` is in the
environment of the process that starts it (docs/architecture.md), so the engine process
gets it in its environment. The outcome comes from the run's status file, never from the
engine's return code alone.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

from flwr.app.typing import ConfigRecordValues
from rich.console import Console

from fl_server.config import ConfigError, RunConfig
from fl_server.proc_table import live_processes, read_stat
from fl_server.registry.fleet import fleet_for_new_run, fleet_for_resume
from fl_server.run_status import RunStatus, read_status, write_status
from privacy.atomic_write import write_text_atomic

RAY_LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}
ENGINE_FILE = "engine.json"
PR_SET_PDEATHSIG = 1
#: In the engine's environment: this launch's token (see `EngineRecord`).
ENGINE_TOKEN_ENV = "FEDMSR_ENGINE_TOKEN"
#: The signals that end a launch cleanly (`RunInterrupted`).
INTERRUPT_SIGNALS = (signal.SIGTERM, signal.SIGINT)
log = logging.getLogger("fedmsr.launcher")


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def prepare_new_run(cfg: RunConfig) -> RunConfig:
    """Assign a run id, create the run directory and freeze the config into run.json."""
    cfg = fleet_for_new_run(cfg.with_run_id(cfg.run_id or new_run_id()))  # registry's devices
    run_dir = cfg.run_dir()
    if (run_dir / "run.json").exists():
        raise ConfigError("run_id", f"run {cfg.run_id} already exists in {cfg.runs_dir}; "
                          "use --resume to continue it")
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(run_dir / "run.json")
    return cfg


def load_run_for_resume(runs_dir: str, run_id: str) -> RunConfig:
    """The frozen config of an earlier run (its run.json), checked before anything starts."""
    cfg = RunConfig.load(Path(runs_dir) / run_id / "run.json")
    if cfg.run_id != run_id:
        raise ConfigError("run_id", f"{runs_dir}/{run_id}/run.json belongs to run {cfg.run_id!r}")
    cfg, dropped = fleet_for_resume(cfg.with_run_id(run_id))  # runs_dir as given now
    if dropped:  # no longer eligible in the registry (revoked): out of the remaining rounds
        cfg.save(Path(runs_dir) / run_id / "run.json")
    return cfg


def backend_config(cpus: int | None = None) -> dict[str, dict[str, ConfigRecordValues]]:
    """Ray: one CPU per virtual device, no dashboard, quiet logs."""
    return {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": cpus or os.cpu_count() or 1, "num_gpus": 0,
                      "include_dashboard": False, "logging_level": logging.ERROR,
                      "log_to_driver": True},
    }


class RunInterrupted(Exception):
    """The launcher got SIGTERM or SIGINT: the engine was stopped and the run marked failed.

    Raised (not returned) so the CLI exits with the signal's own code (128 + signal number,
    as a shell reports a process killed by it) instead of the failed-run code.
    """

    def __init__(self, signum: int, status: RunStatus) -> None:
        self.signum = signum
        self.status = status
        super().__init__(status.reason)


@dataclass(frozen=True)
class EngineRecord:
    """What the launcher writes to engine.json: enough to recognise its engine's group later.

    A process group id is a pid, and pids are reused: a resume must not signal a group
    that now belongs to someone else. The group leader's start time (clock ticks since
    boot, /proc/<pid>/stat field 22) and the boot id identify the leader; a per-launch
    token in the engine's environment (inherited by Ray's processes) identifies the group
    when the leader is already gone.
    """

    pid: int
    pgid: int
    start_ticks: int | None = None
    boot_id: str = ""
    token: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def read(cls, path: Path) -> EngineRecord | None:
        """The record, or None for a file that is not one (it is then useless: removed)."""
        try:
            raw = json.loads(path.read_text())
            start = raw.get("start_ticks")
            return cls(int(raw["pid"]), int(raw["pgid"]),
                       None if start is None else int(start),
                       str(raw.get("boot_id", "")), str(raw.get("token", "")))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None


def launch_simulation(cfg: RunConfig, console: Console | None = None) -> RunStatus:
    """Run `cfg` to completion (or failure) in a supervised engine process; return its status.

    The engine (Flower's simulation runtime, Ray and its agents) runs in a process group of
    its own, so the launcher can stop every process it started by one group id, including
    Ray agents that outlive a SIGKILLed driver. The group is recorded in the run directory
    (`EngineRecord`), and a resume first stops whatever an earlier, killed launch left
    behind, if that group is still the run's. SIGTERM or SIGINT to the launcher stops the
    engine's group, marks the run failed ("interrupted by SIGTERM") and raises
    `RunInterrupted`.
    """
    run_dir = cfg.run_dir()
    stop_stale_engine(run_dir)
    token = secrets.token_hex(16)
    env = {**os.environ, **RAY_LOOPBACK_ENV, ENGINE_TOKEN_ENV: token}
    child: subprocess.Popen[bytes] | None = None
    with _signals_raise() as caught:
        try:
            child = subprocess.Popen(
                [sys.executable, "-m", "fl_server.engine", str(run_dir.resolve())],
                env=env, start_new_session=True, preexec_fn=_die_with_parent,
            )
            write_text_atomic(run_dir / ENGINE_FILE, EngineRecord(
                child.pid, child.pid, _start_ticks(child.pid), _boot_id(), token).to_json())
            child.wait()
        except _Interrupt:
            _ignore_signals()  # a second Ctrl-C must not cut the cleanup short
            if child is not None:
                _stop_group(child.pid, grace_s=10.0)
        finally:
            if child is not None:
                _stop_group(child.pid, grace_s=0.0)
            (run_dir / ENGINE_FILE).unlink(missing_ok=True)
    if caught:  # unless the run had already ended on its own, it ends failed, and says why
        reason = f"interrupted by {signal.Signals(caught[0]).name}"
        status = settle_status(cfg, reason)
        if status.reason == reason:
            raise RunInterrupted(caught[0], status)
        return status
    assert child is not None
    return settle_status(cfg, f"engine process exited with code {child.returncode}")


class _Interrupt(BaseException):
    """Raised by the launcher's signal handler inside `child.wait()` (never escapes)."""


@contextmanager
def _signals_raise() -> Iterator[list[int]]:
    """While inside: SIGTERM and SIGINT raise `_Interrupt` (the signal is appended to the
    list yielded); afterwards the previous handlers are back. Outside the main thread
    (signals cannot be handled there) nothing changes."""
    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return

    def handler(signum: int, _frame: object) -> None:
        caught.append(signum)
        raise _Interrupt

    previous = {sig: signal.signal(sig, handler) for sig in INTERRUPT_SIGNALS}
    try:
        yield caught
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _ignore_signals() -> None:
    for sig in INTERRUPT_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def launch_on_superlink(cfg: RunConfig, address: str, console: Console) -> RunStatus:
    """Run `cfg` on the deployment engine (`fedmsr run --superlink`); return its status."""
    from fl_server.deployment import operator_flwr_home
    from fl_server.deployment_run import launch_deployment

    return settle_status(cfg, launch_deployment(cfg, address, operator_flwr_home(), console))


def run_engine(cfg: RunConfig, console: Console | None = None) -> RunStatus:
    """Inside the engine process: run the federation on Flower's simulation runtime."""
    os.environ.update(RAY_LOOPBACK_ENV)
    from flwr.simulation import run_simulation  # after the env var: Ray reads it on start

    # Ray puts its vendored packages (psutil among them) on sys.path when first imported;
    # imported lazily in the engine's backend thread while the ServerApp thread loads the
    # app and footage libraries, that import was seen to miss psutil. Import it here, in the
    # main thread, before any engine thread runs.
    import ray  # noqa: F401

    from fl_client.client_app import app as client_app
    from fl_server.server_app import make_server_app

    from fl_server.engine_output import configure_engine_output
    from fl_server.ray_start import start_ray
    from fl_server.run_progress import RunProgress

    # Opacus calls logging.basicConfig at import; without this every Flower DEBUG record
    # would reach that root handler and flood the console.
    logging.getLogger("flwr").propagate = False
    configure_engine_output()  # plain off a terminal; no run_simulation deprecation notice
    console = console or Console()
    progress = RunProgress.for_terminal(cfg, console)
    engine_error = ""
    try:
        with progress or nullcontext():  # "starting Ray" shows while Ray starts
            server_app = make_server_app(cfg, console, [progress] if progress else [])
            # Ray first, here: Flower then skips its own start, and a node start that timed
            # out on a loaded machine is retried instead of leaving the run with no devices.
            config = backend_config()
            start_ray(config["init_args"])
            run_simulation(server_app=server_app, client_app=client_app,
                           num_supernodes=cfg.devices, backend_config=config)
    except (Exception, SystemExit) as exc:  # the engine wraps ServerApp errors; status says more
        engine_error = str(exc) or type(exc).__name__
    return settle_status(cfg, engine_error)


def settle_status(cfg: RunConfig, engine_error: str) -> RunStatus:
    """The run's final status; a run the ServerApp never marked finished counts as failed."""
    run_dir = cfg.run_dir()
    status = read_status(run_dir)
    if status is None or status.status == "running":
        status = RunStatus("failed", cfg.rounds,
                           completed_rounds=status.completed_rounds if status else 0,
                           reason=engine_error or "the engine stopped before the ServerApp "
                                                  "finished")
        write_status(run_dir, status)
    return status


def stop_stale_engine(run_dir: Path) -> bool:
    """Kill what a killed launcher left running for this run, if it is still this run's.

    The recorded group is signalled only when its leader is the recorded process (same
    start time, same boot) or, with the leader gone, a member carries the launch's token.
    A group id now used by an unrelated process is left alone (and logged).
    """
    path = run_dir / ENGINE_FILE
    if not path.exists():
        return False
    record = EngineRecord.read(path)
    stopped = False
    if record is not None and group_members(record.pgid):
        if is_this_runs_group(record):
            _stop_group(record.pgid, grace_s=5.0)
            stopped = True
        else:
            log.warning("engine.json names process group %d, which is no longer this run's "
                        "engine (reused id): left alone", record.pgid)
    path.unlink(missing_ok=True)
    return stopped


def is_this_runs_group(record: EngineRecord) -> bool:
    """Whether process group `record.pgid` is still the engine group `record` describes."""
    if record.start_ticks is None or not record.token:
        return False  # an older record cannot be checked: never signal on a guess
    leader = _start_ticks(record.pgid)
    if leader is not None:
        return leader == record.start_ticks and _boot_id() == record.boot_id
    # The leader is gone. A member whose environment carries the launch's token settles it.
    # Ray's agents rename themselves (setproctitle), which overwrites the memory /proc shows
    # as their environment, and Ray's daemons may not pass it on, so the token may not be
    # readable in any survivor. Then the start times decide: every process the engine left
    # started after it, and while a group has members the kernel does not hand its id to a
    # new process, so members that all started after the recorded leader (same boot) are
    # the engine's; a member older than the leader is someone else's.
    marker = f"{ENGINE_TOKEN_ENV}={record.token}".encode()
    members = group_members(record.pgid)
    for pid in members:
        try:
            if marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                return True
        except OSError:
            continue
    starts = [_start_ticks(pid) for pid in members]
    return bool(members) and all(t is not None and t >= record.start_ticks for t in starts)


def _start_ticks(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot), or None if there is none."""
    stat = read_stat(pid)
    return None if stat is None else stat.start_ticks


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def group_members(pgid: int) -> list[int]:
    """Live processes in process group `pgid` (from /proc: no signal is sent)."""
    return [stat.pid for stat in live_processes() if stat.pgid == pgid]


def _stop_group(pgid: int, grace_s: float) -> None:
    """SIGTERM the group, wait up to `grace_s`, then SIGKILL whatever is left."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        if not group_members(pgid):
            return
        if sig == signal.SIGTERM and grace_s <= 0:
            continue
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)


def _die_with_parent() -> None:
    """In the child, before exec: get SIGKILL when the launcher dies (Linux prctl)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
