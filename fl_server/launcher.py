"""Start a run on Flower's simulation engine (or a SuperLink) and report how it really ended.

Ray binds non-loopback addresses unless `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` is in the
environment of the process that starts it (DESIGN.md), so the engine process gets it in
its environment. The outcome comes from the run's status file, never from the engine's
return code alone.
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
import time
from pathlib import Path

from flwr.app.typing import ConfigRecordValues
from rich.console import Console

from fl_server.config import ConfigError, RunConfig
from fl_server.registry.fleet import fleet_for_new_run, fleet_for_resume
from fl_server.run_status import RunStatus, read_status, write_status
from privacy.atomic_write import write_text_atomic

RAY_LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}
ENGINE_FILE = "engine.json"
PR_SET_PDEATHSIG = 1


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


def launch_simulation(cfg: RunConfig, console: Console | None = None) -> RunStatus:
    """Run `cfg` to completion (or failure) in a supervised engine process; return its status.

    The engine (Flower's simulation runtime, Ray and its agents) runs in a process group of
    its own, so the launcher can stop every process it started by one group id, including
    Ray agents that outlive a SIGKILLed driver. The group id is recorded in the run
    directory, and a resume first stops whatever an earlier, killed launch left behind.
    """
    run_dir = cfg.run_dir()
    stop_stale_engine(run_dir)
    env = {**os.environ, **RAY_LOOPBACK_ENV}
    child = subprocess.Popen(
        [sys.executable, "-m", "fl_server.engine", str(run_dir.resolve())],
        env=env, start_new_session=True, preexec_fn=_die_with_parent,
    )
    write_text_atomic(run_dir / ENGINE_FILE, json.dumps({"pid": child.pid, "pgid": child.pid}))
    try:
        child.wait()
    except BaseException:  # Ctrl-C or SIGTERM of the launcher: stop the engine, then report
        _stop_group(child.pid, grace_s=10.0)
        raise
    finally:
        _stop_group(child.pid, grace_s=0.0)
        (run_dir / ENGINE_FILE).unlink(missing_ok=True)
    return settle_status(cfg, f"engine process exited with code {child.returncode}")


def launch_on_superlink(cfg: RunConfig, address: str, console: Console) -> RunStatus:
    """Run `cfg` on the deployment engine (`fedmsr run --superlink`); return its status."""
    from fl_server.deployment import operator_flwr_home
    from fl_server.deployment_run import launch_deployment

    return settle_status(cfg, launch_deployment(cfg, address, operator_flwr_home(), console))


def run_engine(cfg: RunConfig, console: Console | None = None) -> RunStatus:
    """Inside the engine process: run the federation on Flower's simulation runtime."""
    os.environ.update(RAY_LOOPBACK_ENV)
    from flwr.simulation import run_simulation  # after the env var: Ray reads it on start

    from fl_client.client_app import app as client_app
    from fl_server.server_app import make_server_app

    # Opacus calls logging.basicConfig at import; without this every Flower DEBUG record
    # would reach that root handler and flood the console.
    logging.getLogger("flwr").propagate = False
    engine_error = ""
    try:
        run_simulation(server_app=make_server_app(cfg, console), client_app=client_app,
                       num_supernodes=cfg.devices, backend_config=backend_config())
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
    """Kill what a killed launcher left running for this run (by its recorded group id)."""
    path = run_dir / ENGINE_FILE
    if not path.exists():
        return False
    try:
        pgid = int(json.loads(path.read_text())["pgid"])
    except (ValueError, KeyError, TypeError):
        path.unlink()
        return False
    stopped = bool(group_members(pgid))
    if stopped:
        _stop_group(pgid, grace_s=5.0)
    path.unlink(missing_ok=True)
    return stopped


def group_members(pgid: int) -> list[int]:
    """Live processes in process group `pgid` (from /proc: no signal is sent)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


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
