"""The operator's Flower ServerApp.

Two ways in: `flwr run .` loads the module-level `app` and reads the run configuration
from `[tool.flwr.app.config]`; `fedmsr run` builds its own app around an already
validated `RunConfig` with :func:`make_server_app`. Both run the same federation loop.
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from rich.console import Console

from fl_server.config import RunConfig
from fl_server.federation import run_federation
from fl_server.sinks import observers_for

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point for `flwr run .`: the run id comes from Flower's own run id."""
    cfg = RunConfig.from_user_config(context.run_config)
    if not cfg.run_id:
        cfg = cfg.with_run_id(f"flwr-{context.run_id}")
    cfg.run_dir().mkdir(parents=True, exist_ok=True)
    cfg.save(cfg.run_dir() / "run.json")
    run_federation(grid, cfg, observers=observers_for(cfg))


def make_server_app(cfg: RunConfig, console: Console | None = None) -> ServerApp:
    """A ServerApp bound to `cfg` (used by the `fedmsr run` launcher)."""
    bound = ServerApp()

    @bound.main()
    def _main(grid: Grid, context: Context) -> None:  # noqa: ARG001 - Flower's signature
        run_federation(grid, cfg, console, observers=observers_for(cfg))

    return bound
