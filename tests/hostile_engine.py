"""`python -m tests.hostile_engine RUN_DIR`: `fl_server.engine` with the hostile test ClientApp.

The run's configuration comes from RUN_DIR/run.json (written by `prepare_new_run`), the
ServerApp is the production one; only the devices differ (tests/hostile_app.py).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path

from fl_server.config import RunConfig
from fl_server.launcher import RAY_LOOPBACK_ENV, backend_config, settle_status


def main(argv: list[str]) -> int:
    run_dir = Path(argv[0]).resolve()
    os.environ.update(RAY_LOOPBACK_ENV)
    from flwr.simulation import run_simulation

    from fl_server.ray_start import start_ray
    from fl_server.server_app import make_server_app
    from tests.hostile_app import app as client_app
    cfg = RunConfig.load(run_dir / "run.json").with_run_id(run_dir.name)
    cfg = dataclasses.replace(cfg, runs_dir=str(run_dir.parent))
    logging.getLogger("flwr").propagate = False
    error = ""
    try:
        config = backend_config()
        start_ray(config["init_args"])  # as the engine does: a late node is retried
        run_simulation(server_app=make_server_app(cfg), client_app=client_app,
                       num_supernodes=cfg.devices, backend_config=config)
    except (Exception, SystemExit) as exc:
        error = str(exc) or type(exc).__name__
    return 0 if settle_status(cfg, error).status == "completed" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
