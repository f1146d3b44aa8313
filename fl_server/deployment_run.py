"""`fedmsr run --superlink ADDRESS`: the same federation on Flower's deployment engine.

The launcher prepares the run exactly as for simulation (run id, registry device list,
frozen `run.json`), then submits fedmsr's own Flower app to a running SuperLink over the
Control API (TLS with the CA of the operator's `[superlink.fedmsr]` connection) with one
run-config override: `fedmsr-run` = the absolute path of that `run.json`. Flower's run
config holds scalars only, and a path keeps the registry's device list and the registry
URL off the SuperNodes (every device receives the run config).

The ServerApp (spawned by the SuperLink, with the SuperLink's environment and working
directory) loads that file, writes the run directory next to it, and reaches the registry
the run recorded (`extra.registry`, stored without its password: the password, if any,
comes from the SuperLink's own `FEDMSR_DB`). The launcher follows the run (rounds from
`history.json`, Flower's run status from the Control API) and, like the simulation path,
takes its outcome from the run's `status.json`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import time
from pathlib import Path
from typing import Any

from flwr.cli.build import build_fab_from_disk
from flwr.common.serde import fab_to_proto, user_config_to_proto
from flwr.proto.control_pb2 import (  # pylint: disable=no-name-in-module
    ListRunsRequest,
    StartRunRequest,
    StopRunRequest,
)
from flwr.supercore.control import ControlHttpClient
from flwr.supercore.fab import Fab
from rich.console import Console
from sqlalchemy.engine import make_url

from fl_server import control_api
from fl_server.config import ConfigError, RunConfig
from fl_server.history import read_history
from fl_server.registry.db import ENV_VAR, RegistryError, registry_configured, resolve_url
from fl_server.registry.identity import SUPERLINK_EXTRA

#: The override `fedmsr run --superlink` sets (declared, empty, in [tool.flwr.app.config]).
RUN_CONFIG_KEY = "fedmsr-run"
#: Where the run records its registry URL (password removed) for the ServerApp.
REGISTRY_EXTRA = "registry"
POLL_S = 0.5
STATUS_EVERY_S = 2.0
#: How long the SuperLink may stay unreachable while following a run.
LOST_AFTER_S = 60.0
FINISHED = "finished"


# -- operator side -------------------------------------------------------------------------


def app_dir() -> Path:
    """fedmsr's Flower app: the source tree this fedmsr runs from (its pyproject.toml)."""
    root = Path(__file__).resolve().parents[1]
    pyproject = root / "pyproject.toml"
    if not pyproject.exists() or "[tool.flwr.app]" not in pyproject.read_text():
        raise ConfigError("--superlink", f"{root} has no Flower app (pyproject.toml with "
                          "[tool.flwr.app]); install fedmsr from its source tree "
                          "(`pip install -e .`) to submit runs to a SuperLink")
    return root


def check_superlink(address: str, flwr_home: Path) -> None:
    """Refuse early, before a run directory exists, when the SuperLink does not answer."""
    if not registry_configured():
        raise ConfigError("--superlink", "deployment runs take their fleet from the registry: "
                          "set --db or FEDMSR_DB (or run where fedmsr.db is), enroll devices "
                          "and `fedmsr fleet sync` them")
    try:
        with control_api.control_client(flwr_home, address) as client:
            control_api.call("reaching the SuperLink",
                             lambda: client.ListRuns(ListRunsRequest(limit=1)))
    except RegistryError as exc:
        raise RegistryError("--superlink", f"cannot use the SuperLink at {address}: "
                            f"{str(exc).split(': ', 1)[1]}") from None


def for_deployment(cfg: RunConfig, address: str) -> RunConfig:
    """Record the SuperLink and the registry the ServerApp must use; freeze into run.json."""
    extra = {**cfg.extra, SUPERLINK_EXTRA: address,
             REGISTRY_EXTRA: portable_registry_url(resolve_url())}
    cfg = dataclasses.replace(cfg, extra=extra).validate()
    cfg.save(cfg.run_dir() / "run.json")
    return cfg


def check_same_engine(cfg: RunConfig, superlink: str | None) -> None:
    """A resumed run stays on its engine: its devices are real nodes or virtual ones."""
    deployed_on = cfg.extra.get(SUPERLINK_EXTRA)
    if deployed_on and superlink is None:
        raise ConfigError("--resume", f"run {cfg.run_id} runs on the SuperLink at "
                          f"{deployed_on}; resume it with --superlink ADDRESS")
    if superlink is not None and not deployed_on:
        raise ConfigError("--superlink", f"run {cfg.run_id} ran in simulation (virtual "
                          "devices); resume it without --superlink")


def check_address(address: str) -> str:
    """HOST:PORT, nothing else (Flower takes it as is)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError("--superlink", f"must be HOST:PORT of a running `fedmsr superlink "
                          f"start`, e.g. 127.0.0.1:9092; got {address!r}")
    return address


def portable_registry_url(url: str) -> str:
    """The URL another process can use: no password, SQLite path made absolute."""
    parsed = make_url(url)._replace(password=None)  # URL is a NamedTuple; set() keeps it
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        parsed = parsed.set(database=str(Path(parsed.database).resolve()))
    return parsed.render_as_string(hide_password=False)


def launch_deployment(cfg: RunConfig, address: str, flwr_home: Path,
                      console: Console) -> str:
    """Submit `cfg` to the SuperLink, follow it to its end; return the engine's complaint.

    The caller settles the outcome from status.json (`launcher.settle_status`); the text
    returned is Flower's account of a run that ended without the ServerApp saying so.
    A Ctrl-C (or SIGTERM turned KeyboardInterrupt) stops the run at the SuperLink first.
    """
    run_json = (cfg.run_dir() / "run.json").resolve()
    with control_api.control_client(flwr_home, address) as client:
        flwr_run = start_run(client, app_dir(), {RUN_CONFIG_KEY: str(run_json)})
        console.print(f"submitted to the SuperLink at {address} as Flower run {flwr_run}",
                      highlight=False)
        try:
            return follow(client, flwr_run, cfg, console)
        except BaseException:
            with contextlib.suppress(RegistryError):  # the interruption is what to report
                control_api.call(f"stopping Flower run {flwr_run}",
                                 lambda: client.StopRun(StopRunRequest(run_id=flwr_run)))
            raise


def start_run(client: ControlHttpClient, app: Path, overrides: dict[str, Any]) -> int:
    """What `flwr run APP fedmsr --run-config ...` does: build the FAB, start the run."""
    try:
        fab_bytes = build_fab_from_disk(app)
    except ValueError as exc:  # Flower's checks of the app (size, depth, pyproject)
        raise ConfigError("--superlink", f"cannot bundle the app in {app}: {exc}") from None
    fab = Fab(hashlib.sha256(fab_bytes).hexdigest(), fab_bytes, {})
    request = StartRunRequest(fab=fab_to_proto(fab),
                              override_config=user_config_to_proto(overrides))
    response = control_api.call("starting the run", lambda: client.StartRun(request))
    if not response.HasField("run_id"):
        raise RegistryError("superlink", "the SuperLink did not start the run")
    return int(response.run_id)


def follow(client: ControlHttpClient, flwr_run: int, cfg: RunConfig,
           console: Console) -> str:
    """Print each round as it lands in history.json until Flower says the run finished."""
    printed, last_check, lost_since = 0, 0.0, None
    while True:
        printed = _print_new_rounds(cfg, printed, console)
        if time.monotonic() - last_check >= STATUS_EVERY_S:
            last_check = time.monotonic()
            try:
                status = run_status(client, flwr_run)
                lost_since = None
            except RegistryError as exc:
                lost_since = lost_since or time.monotonic()
                if time.monotonic() - lost_since > LOST_AFTER_S:
                    return f"lost the SuperLink while following the run ({exc})"
                status = None
            if status is not None and status.status == FINISHED:
                _print_new_rounds(cfg, printed, console)
                return "" if status.sub_status == "completed" else \
                    f"Flower run {flwr_run} {status.sub_status}: {status.details or 'no details'}"
        time.sleep(POLL_S)


def run_status(client: ControlHttpClient, flwr_run: int) -> Any:
    """Flower's RunStatus (status, sub_status, details) of one run."""
    runs = control_api.call("reading the run's status",
                            lambda: client.ListRuns(ListRunsRequest(run_id=flwr_run))).run_dict
    if flwr_run not in runs:
        raise RegistryError("superlink", f"the SuperLink does not know Flower run {flwr_run}")
    return runs[flwr_run].status


def _print_new_rounds(cfg: RunConfig, printed: int, console: Console) -> int:
    history = read_history(cfg.run_dir())
    for record in history[printed:]:
        console.print(f"round {record.round:>3}/{cfg.rounds} loss {record.loss:.3f} "
                      f"devices {list(record.devices)} ({record.responded}/"
                      f"{record.sampled}) {record.wall_s:.1f}s", highlight=False)
    return max(printed, len(history))


# -- ServerApp side ------------------------------------------------------------------------


def load_submitted_run(path: str) -> RunConfig:
    """The run.json `fedmsr run --superlink` submitted, its run dir and registry in place."""
    run_json = Path(path)
    if not run_json.is_absolute():
        raise ConfigError(RUN_CONFIG_KEY, f"must be an absolute path to run.json, got {path!r}")
    cfg = RunConfig.load(run_json)
    cfg = dataclasses.replace(cfg, runs_dir=str(run_json.parent.parent)).with_run_id(
        run_json.parent.name)
    adopt_registry(cfg)
    return cfg


def adopt_registry(cfg: RunConfig) -> None:
    """Point this process (the ServerApp) at the run's registry.

    The SuperLink's own `FEDMSR_DB` wins when it names the same database (it may carry the
    password the run record leaves out); otherwise the recorded URL is used.
    """
    recorded = cfg.extra.get(REGISTRY_EXTRA)
    if not recorded:
        return
    here = os.environ.get(ENV_VAR)
    if not here or portable_registry_url(here) != recorded:
        os.environ[ENV_VAR] = str(recorded)
