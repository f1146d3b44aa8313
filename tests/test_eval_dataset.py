"""`fedmsr eval --dataset MANIFEST` end to end on real-photo footage, and its bad inputs."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from tests.helpers import fedmsr
from tests.test_evaluation_cli import (
    ENCODERS,
    PIXELS,
    REDUCED_NOISE,
    assert_operating_points,
    releases,
)

FILES = ("metrics.json", "timings.json", "table.csv", "report.md", "frontier.png", "pl_curves.png",
         "reconstructions.png", "pareto.png")
TINY = ["--reduced", "--epochs", "1", "--attack-steps", "1"]


def _footage(root: Path, devices: int = 3, days: int = 4) -> Path:
    from privacy.footage_samples import write_pan_dataset

    return write_pan_dataset(root, devices, days, 2, seed=1)


def _manifest(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    return _footage(tmp_path_factory.mktemp("footage"))


@pytest.fixture(scope="module")
def report(sample: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "report"
    proc = fedmsr("eval", *TINY, "--seed", "2", "--dataset", str(sample), "--out", str(out), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "done" in proc.stdout and "left" in proc.stdout  # the progress bar, finished
    return out


def _in_unit(value: object, what: str) -> None:
    assert isinstance(value, float | int) and 0.0 <= value <= 1.0, (what, value)


def test_manifest_eval_writes_every_report_file_with_finite_metrics(report: Path, sample: Path):
    for name in FILES:
        assert (report / name).is_file() and (report / name).stat().st_size > 0, name
    metrics = json.loads((report / "metrics.json").read_text())
    settings = metrics["settings"]
    assert settings["tasks"]["utility"] == "activity"
    assert settings["tasks"]["private"] == ["identity", "device"]  # every other label + device
    assert settings["dataset"]["targets"] == ["cam-0", "cam-1", "cam-2"]
    assert settings["dataset"]["days"]["cam-0"] == {"train": [0], "fit": [1], "test": [2, 3]}
    assert str(sample) in settings["data"]
    reps = metrics["representations"]
    # 4 pixel baselines, beta 0, 2 MSR, MSR with DP-SGD, the invariant MSR, then every
    # non-DP encoder through each randomized release
    assert [r["name"] for r in reps] == PIXELS + ENCODERS + releases(REDUCED_NOISE)
    for rep in reps:
        for key in ("activity_linear", "activity_mlp", "activity_chance"):
            _in_unit(rep["dtp"][key], f"{rep['name']} {key}")
        for attr in ("identity", "device"):
            for key, v in rep["pl"]["single"][attr].items():
                _in_unit(v, f"{rep['name']} {attr} {key}")
        curves = rep["pl"]["curves"]
        assert {"identity", "device", "identity_set", "identity_best", "linkage_auc"} <= set(curves)
        assert "1" in curves["identity_best"] and "1" in curves["linkage_auc"]
        for name, curve in curves.items():
            for k, v in curve.items():
                _in_unit(v, f"{rep['name']} {name}@{k}")
        best = rep["rr"]["best"]
        if rep["name"] != "raw pixels":  # raw frames are their own perfect reconstruction
            assert math.isfinite(best["psnr"]) and -1.0 <= best["ssim"] <= 1.0, rep["name"]
        if rep["family"] == "encoder":
            assert math.isfinite(rep["kl_bits"]) and rep["kl_bits"] >= 0
    with (report / "table.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["name"] for r in rows] == [r["name"] for r in reps]
    assert {"activity_linear", "identity_single", "device_single", "linkage_auc_kmax"} <= set(rows[0])
    assert_operating_points(metrics)
    assert "latency_s_median" in json.loads((report / "timings.json").read_text())


@pytest.mark.slow
def test_manifest_eval_is_deterministic_for_a_seed(report: Path, sample: Path, tmp_path: Path):
    again = tmp_path / "again"
    proc = fedmsr("eval", *TINY, "--seed", "2", "--dataset", str(sample), "--out", str(again), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("metrics.json", "table.csv", "frontier.png", "pl_curves.png", "reconstructions.png"):
        assert (again / name).read_bytes() == (report / name).read_bytes(), name


def _bad(tmp_path: Path, *args: str) -> str:
    out = tmp_path / "out"
    proc = fedmsr("eval", "--reduced", "--out", str(out), *args, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert not out.exists()
    return lines[0]


def test_utility_label_missing_from_the_manifest(sample: Path, tmp_path: Path):
    line = _bad(tmp_path, "--dataset", str(sample), "--utility-label", "scene")
    assert line.startswith("error: --utility-label") and "'scene'" in line and "activity" in line


def test_unknown_privacy_label(sample: Path, tmp_path: Path):
    line = _bad(tmp_path, "--dataset", str(sample), "--privacy-labels", "identity,face")
    assert line.startswith("error: --privacy-labels") and "'face'" in line


def test_utility_label_cannot_be_private(sample: Path, tmp_path: Path):
    line = _bad(tmp_path, "--dataset", str(sample), "--privacy-labels", "activity")
    assert line.startswith("error: --privacy-labels") and "utility" in line


def test_label_with_one_class(tmp_path: Path):
    rows = [f"r{i}.avi,cam-{i % 2},{i // 2},walk,home" for i in range(8)]
    m = _manifest(tmp_path / "m.csv", "path,device,day,activity,location", rows)
    line = _bad(tmp_path, "--dataset", str(m))
    assert line.startswith("error: --utility-label") and "'activity'" in line and "one class" in line
    rows = [f"r{i}.avi,cam-{i % 2},{i // 2},{'walk' if i % 3 else 'run'},home" for i in range(8)]
    m = _manifest(tmp_path / "m.csv", "path,device,day,activity,location", rows)
    line = _bad(tmp_path, "--dataset", str(m))
    assert line.startswith("error: --privacy-labels") and "'location'" in line and "one class" in line


def test_unreadable_manifest(tmp_path: Path):
    line = _bad(tmp_path, "--dataset", str(tmp_path / "none.csv"))
    assert line.startswith("error: --dataset") and "none.csv" in line
    m = _manifest(tmp_path / "m.csv", "path,day,activity", ["a.avi,0,walk"])
    line = _bad(tmp_path, "--dataset", str(m))
    assert line.startswith("error: --dataset") and "'device'" in line


def test_too_few_days_names_the_manifest_and_the_device(tmp_path: Path):
    m = _footage(tmp_path / "f", devices=2, days=3)
    line = _bad(tmp_path, "--dataset", str(m))
    assert line.startswith("error: --dataset") and str(m) in line
    assert "'cam-0' has 3 day(s)" in line and ">= 4" in line


def test_options_that_do_not_apply(sample: Path, tmp_path: Path):
    assert _bad(tmp_path, "--utility-label", "activity").startswith("error: --utility-label")
    assert _bad(tmp_path, "--dataset", str(sample), "--devices", "3").startswith("error: --devices")
    assert _bad(tmp_path, "--image-size", "48").startswith("error: --image-size")


def test_plan_gives_a_third_of_six_devices_to_the_population(tmp_path: Path):
    from fl_server.eval_splits import plan_manifest

    rows = [f"r{d}-{day}.avi,cam-{d},{day},{'walk' if (d + day) % 2 else 'run'},{d % 2}"
            for d in range(6) for day in range(5)]
    m = _manifest(tmp_path / "m.csv", "path,device,day,activity,identity", rows)
    plan = plan_manifest(m)
    assert plan.targets == ("cam-0", "cam-1", "cam-2", "cam-3") and plan.pop == ("cam-4", "cam-5")
    assert plan.days["cam-0"].train == (0,) and plan.days["cam-0"].fit == (1,)
    assert plan.days["cam-0"].test == (2, 3, 4)
    assert plan.tasks.private == ("identity", "device") and plan.tasks.identity == "identity"


def test_synthetic_table_columns_are_unchanged_and_manifest_ones_follow_the_tasks():
    from privacy.evaluation.report import columns
    from privacy.evaluation.tasks import SYNTHETIC, Tasks

    assert columns(SYNTHETIC) == (
        "name", "family", "beta", "dp_sgd", "kl_bits",
        "activity_linear", "activity_mlp", "indoor_linear", "objects_auc_linear",
        "identity_single", "identity_chance", "location_single", "routine_single",
        "identity_pl_kmax", "kmax", "identity_gain_kmax", "linkage_auc_kmax",
        "rr_psnr", "rr_ssim", "rr_attack")
    tasks = Tasks(utility="scene", unseen=(), multilabel=(), private=("device", "room"), identity="device")
    cols = columns(tasks)
    assert cols[5:10] == ("scene_linear", "scene_mlp", "identity_single", "identity_chance", "room_single")


def test_tasks_refuse_inconsistent_names_and_attributes_resolve():
    import numpy as np

    from privacy.evaluation.tasks import Tasks, attribute

    with pytest.raises(ValueError, match="identity"):
        Tasks(private=("location",), identity="identity")
    with pytest.raises(ValueError, match="utility"):
        Tasks(utility="room", private=("room",), identity="room")
    with pytest.raises(ValueError, match="linkage_auc"):
        Tasks(private=("identity", "linkage_auc"))
    labels = {"wearer": np.array([3, 4]), "hour": np.array([7, 13]), "room": np.array([1, 0])}
    assert attribute(labels, "identity").tolist() == [3, 4]
    assert attribute(labels, "routine").tolist() == [1, 3]
    assert attribute(labels, "room").tolist() == [1, 0]
    with pytest.raises(KeyError, match="location"):
        attribute(labels, "location")


def test_splits_name_each_training_clips_device(sample: Path):
    """Identity-invariant training may use the device of each training clip (and nothing
    else): both sources give it as an index 0..K-1 over the target devices, clip by clip."""
    import numpy as np

    from fl_server.eval_splits import manifest_splits, plan_manifest, synthetic_splits
    from privacy.footage import DecodeParams

    syn = synthetic_splits(3, 0, 2, 2, 1, 2, seed=0, image_size=32, frames=8)
    assert syn.train_devices.dtype == np.int64
    assert syn.train_devices.tolist() == [0] * 4 + [1] * 4 + [2] * 4  # device-major, 2 days x 2
    plan = plan_manifest(sample)
    splits = manifest_splits(plan, DecodeParams(8, 32))
    assert len(splits.train_devices) == len(splits.train_x) == len(splits.train_y)
    assert sorted(set(splits.train_devices.tolist())) == list(range(len(plan.targets)))
    assert np.all(np.diff(splits.train_devices) >= 0)  # decoded device by device, in plan order
