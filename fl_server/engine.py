"""The engine process: `python -m fl_server.engine RUN_DIR` runs one federation.

Started by the launcher in a process group of its own (see `launcher.py`); it reads the
frozen configuration from RUN_DIR/run.json, so what runs is exactly what was recorded.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from fl_server.config import RunConfig
from fl_server.launcher import run_engine


def main(argv: list[str]) -> int:
    run_dir = Path(argv[0])
    cfg = RunConfig.load(run_dir / "run.json")
    cfg = cfg.with_run_id(run_dir.name)
    status = run_engine(_relocated(cfg, run_dir))
    return 0 if status.status == "completed" else 1


def _relocated(cfg: RunConfig, run_dir: Path) -> RunConfig:
    """Point runs_dir at RUN_DIR's parent (absolute): the engine's cwd may differ."""
    return dataclasses.replace(cfg, runs_dir=str(run_dir.parent))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
