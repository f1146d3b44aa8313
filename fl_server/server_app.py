"""The operator's Flower ServerApp.

Three ways in, one federation loop:

* `flwr run .` loads the module-level `app`, which reads the run configuration from
  `[tool.flwr.app.config]` (Flower's `context.run_config`);
* `fedmsr run --superlink` submits the same `app` to a SuperLink with one override,
  `fedmsr-run` = the absolute path of the run's frozen `run.json` (Flower's run config
  holds scalars only; the registry's device list does not fit in it). The app then runs
  exactly that configuration, in that run directory, against the run's registry;
* `fedmsr run` (simulation) builds its own app around an already validated `RunConfig`
  with :func:`make_server_app`.
"""

from __future__ import annotations

from collections.abc import Sequence

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from rich.console import Console

from fl_server.config import RunConfig
from fl_server.deployment_run import RUN_CONFIG_KEY, load_submitted_run
from fl_server.federation import run_federation
from fl_server.observers import RoundObserver
from fl_server.sinks import observers_for
from privacy.wire.object_pulls import shorten_object_pull_backoff

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point of a Flower-launched run (`flwr run .`, `fedmsr run --superlink`)."""
    shorten_object_pull_backoff()  # replies' arrays: ask again soon, not after 1-10 s
    user_config = dict(context.run_config)
    submitted = str(user_config.pop(RUN_CONFIG_KEY, "") or "")
    if submitted:  # `fedmsr run --superlink`: its frozen run.json, launcher-prepared
        cfg = load_submitted_run(submitted)
    else:  # `flwr run .`: the table; the run id comes from Flower's own run id
        cfg = RunConfig.from_user_config(user_config)
        if not cfg.run_id:
            cfg = cfg.with_run_id(f"flwr-{context.run_id}")
        cfg.run_dir().mkdir(parents=True, exist_ok=True)
        cfg.save(cfg.run_dir() / "run.json")
    run_federation(grid, cfg, observers=observers_for(cfg))


def make_server_app(cfg: RunConfig, console: Console | None = None,
                    watchers: Sequence[RoundObserver] = ()) -> ServerApp:
    """A ServerApp bound to `cfg` (used by the `fedmsr run` launcher); `watchers` observe
    the rounds besides the configured sinks (the engine's progress line)."""
    bound = ServerApp()

    @bound.main()
    def _main(grid: Grid, context: Context) -> None:
        run_federation(grid, cfg, console, observers=[*observers_for(cfg), *watchers])

    return bound
