"""The README's `flwr run .` section, executed as written in a copy of the app."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fl_server.deployment import free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fl_client", "fl_server", "strategies", "privacy", "monitoring")


def readme_block() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- flwr-run:begin -->\s*```bash\n(.*?)```", text, re.DOTALL)
    assert match, "README lost its flwr-run block"
    return match.group(1)


def copy_app(dest: Path) -> None:
    dest.mkdir()
    for name in ("pyproject.toml", "README.md", ".gitignore"):
        shutil.copy(ROOT / name, dest / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, dest / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    # Smaller than the defaults so CI stays fast; the commands are the README's own.
    pyproject = dest / "pyproject.toml"
    text = pyproject.read_text()
    for key, value in (("num-server-rounds", "2"), ("num-devices", "3"),
                       ("clips-per-day", "4"), ("days", "2")):
        text, count = re.subn(rf"^{key} = .*$", f"{key} = {value}", text, flags=re.MULTILINE)
        assert count == 1, key
    pyproject.write_text(text)


def test_readme_flwr_run_block(tmp_path) -> None:
    app = tmp_path / "app"
    copy_app(app)
    # free ports for the SuperLink's Fleet and Control APIs: the README's own are fixed
    script = readme_block().replace("num-supernodes=8", "num-supernodes=3")
    ports: set[int] = set()
    while len(ports) < 2:
        ports.add(free_port())
    for fixed, port in zip(("39191", "39193"), sorted(ports), strict=True):
        assert fixed in script, fixed
        script = script.replace(fixed, str(port))
    flwr_home = tmp_path / "flwr-home"
    env = {**os.environ, "FLWR_HOME": str(flwr_home),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=app, env=env,
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert '"status": "finished:completed"' in result.stdout
    runs = list((app / "runs").glob("flwr-*"))
    assert len(runs) == 1
    rows = json.loads((runs[0] / "history.json").read_text())
    assert [r["round"] for r in rows] == [1, 2] and rows[-1]["responded"] == 3
    assert json.loads((runs[0] / "status.json").read_text())["status"] == "completed"
    # The SuperLink was stopped by its PID: nothing started with this FLWR_HOME is left.
    leftover = subprocess.run(["pgrep", "-f", str(flwr_home)], capture_output=True, text=True,
                              check=False)
    assert leftover.stdout.strip() == ""
