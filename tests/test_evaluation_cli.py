"""`fedmsr eval` end to end (through the real console entry), at a tiny scale."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from fl_server.eval_pipeline import REDUCED
from tests.helpers import fedmsr

REDUCED_NOISE = REDUCED.release_noise

FILES = ("metrics.json", "timings.json", "table.csv", "report.md", "frontier.png", "pl_curves.png",
         "reconstructions.png", "pareto.png")
#: the reduced scale, shrunk further so one run takes well under a minute
TINY = ["--reduced", "--devices", "3", "--clips-per-day", "4", "--epochs", "1", "--attack-steps", "10"]
ENCODERS = ["non-private (beta=0)", "MSR beta=0.01", "MSR beta=0.1", "MSR beta=0.01 + DP-SGD",
            "MSR beta=0.01 + invariant W=0.03"]
PIXELS = ["raw pixels", "blur", "pixelation", "pixel noise"]


def releases(noise: tuple[float, ...]) -> list[str]:
    """The randomized releases: every non-DP encoder through each noise multiplier."""
    return [f"{e} + release sigma={n:g}" for e in ENCODERS if "DP-SGD" not in e for n in noise]


def _video(path: Path, frames: int = 40) -> Path:
    """A small real video file (moving gradient) written with OpenCV."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 8.0, (48, 40))
    assert writer.isOpened()
    yy, xx = np.mgrid[0:40, 0:48]
    for t in range(frames):
        img = np.stack([(xx * 5 + t * 3) % 256, (yy * 6) % 256, np.full_like(xx, 90 + t)], -1)
        writer.write(img.astype(np.uint8))
    writer.release()
    return path


def _run_dir(tmp: Path) -> Path:
    """A run folder as `fedmsr run` leaves it (final_model.npz / .json, run.json)."""
    from privacy.encoder import EncoderConfig, build_model, state_to_numpy

    run = tmp / "runs" / "r1"
    run.mkdir(parents=True)
    cfg = EncoderConfig()
    np.savez(run / "final_model.npz", **state_to_numpy(build_model(cfg, seed=7)))
    (run / "final_model.json").write_text(json.dumps({"encoder": dataclasses.asdict(cfg)}))
    (run / "run.json").write_text(json.dumps({"beta": 0.05}))
    return run


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("eval")
    out = tmp / "report"
    proc = fedmsr("eval", *TINY, "--seed", "3", "--out", str(out), "--clips", str(_video(tmp / "v.avi")),
                  "--model", str(_run_dir(tmp)), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_eval_writes_every_output(report: Path):
    for name in FILES:
        assert (report / name).is_file() and (report / name).stat().st_size > 0, name
    for name in ("frontier.png", "pl_curves.png", "reconstructions.png", "pareto.png"):
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((report / "metrics.json").read_text())
    names = [r["name"] for r in metrics["representations"]]
    assert names == PIXELS + ENCODERS + releases(REDUCED_NOISE) + ["run r1"]
    with (report / "table.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["name"] for r in rows] == names
    for rep in metrics["representations"]:
        assert set(rep["pl"]["curves"]) >= {"identity", "location", "routine", "identity_set", "linkage_auc"}
        assert "1" in rep["pl"]["curves"]["identity"]
        assert 0.0 <= rep["dtp"]["activity_linear"] <= 1.0
        assert {"psnr", "ssim", "attack"} <= set(rep["rr"]["best"])
    run = next(r for r in metrics["representations"] if r["name"] == "run r1")
    assert run["beta"] == 0.05
    gi = metrics["gradient_inversion"]
    for model in ("round 1 (initial model)", "MSR beta=0.01"):
        assert {"plain", "dp_sgd", "secure_sum"} <= set(gi[model])
    assert {"identity_from_activity", "identity_chance", "prior_psnr"} <= set(metrics["references"])
    assert set(metrics["real_clips"]) == set(names)  # the given video: RR for every representation
    eff = metrics["efficiency"]
    assert eff["payload_bytes"] == 44 and eff["raw_bytes"] == 8 * 32 * 32 * 3
    assert "latency_s_median" in json.loads((report / "timings.json").read_text())
    md = (report / "report.md").read_text()
    for section in ("## Privacy-utility table", "## PL(k)", "## Gradient inversion", "## References",
                    "## System efficiency",
                    "## Operating point", "## Reconstruction on the given clips"):
        assert section in md


@pytest.mark.slow
@pytest.mark.extended  # determinism of the pipeline's parts: the unit tests of each
def test_eval_is_deterministic_for_a_seed(report: Path, tmp_path: Path):
    """Same seed, same inputs: every file but the wall-clock timings is byte-identical."""
    again = tmp_path / "again"
    proc = fedmsr("eval", *TINY, "--seed", "3", "--out", str(again), "--clips",
                  str(_video(tmp_path / "v.avi")), "--model", str(_run_dir(tmp_path)), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("metrics.json", "table.csv", "frontier.png", "pl_curves.png", "reconstructions.png"):
        assert (again / name).read_bytes() == (report / name).read_bytes(), name
    md_a = [line for line in (report / "report.md").read_text().splitlines() if "latency" not in line]
    md_b = [line for line in (again / "report.md").read_text().splitlines() if "latency" not in line]
    assert md_a == md_b


@pytest.mark.parametrize(("args", "field"), [
    (["--seed", "-1"], "--seed"),
    (["--devices", "1"], "--devices"),
    (["--epochs", "0"], "--epochs"),
    (["--clips", "/nonexistent/footage"], "--clips"),
    (["--model", "/nonexistent/run"], "--model"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path: Path, args: list[str], field: str):
    out = tmp_path / "out"
    proc = fedmsr("eval", "--reduced", "--out", str(out), *args, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}"), proc.stderr
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_out_folder_that_is_not_a_report_is_refused(tmp_path: Path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    proc = fedmsr("eval", "--reduced", "--out", str(out), timeout=120)
    assert proc.returncode == 2 and "error: --out" in proc.stderr
    assert (out / "notes.txt").read_text() == "keep me"


@pytest.mark.slow
@pytest.mark.extended  # test_eval_writes_every_output runs the same pipeline, smaller
def test_reduced_eval_as_ci_runs_it(tmp_path: Path):
    """`fedmsr eval --reduced` unchanged (the CI-sized benchmark): every file, every row."""
    out = tmp_path / "reduced"
    proc = fedmsr("eval", "--reduced", "--out", str(out), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in FILES:
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["name"] for r in metrics["representations"]] == PIXELS + ENCODERS + releases(REDUCED_NOISE)
    raw = metrics["representations"][0]
    # raw pixels of distinct wearers: re-identified from 16 clips, linked across days
    assert raw["pl"]["curves"]["identity_best"]["16"] == 1.0
    assert_operating_points(metrics)


def assert_operating_points(metrics: dict) -> None:
    """Every encoder row is an operating point twice (linkable, unlinkable), with the fields
    the report promises; randomized releases carry their epsilon, the others none."""
    ops = metrics["operating_points"]
    encoders = [r["name"] for r in metrics["representations"] if r["family"] == "encoder"]
    points = {p["name"]: p for p in ops["points"]}
    assert set(points) == {n for e in encoders for n in (e, f"{e} + unlinkable")}
    fields = {"name", "activity_acc", "activity_ref", "identity_k1", "identity_kmax", "kmax",
              "identity_chance", "linkage_auc_kmax", "psnr", "psnr_blur", "epsilon_per_device"}
    for name, p in points.items():
        assert fields <= set(p), name
        assert (p["epsilon_per_device"] is not None) == ("release sigma" in name), name
        assert p["epsilon_per_device"] is None or p["epsilon_per_device"] > 0
        for key in ("activity_acc", "identity_k1", "identity_kmax", "linkage_auc_kmax"):
            assert 0.0 <= p[key] <= 1.0, (name, key)
    assert set(ops["pareto"]) <= set(points) and ops["pareto"]
    assert set(ops["misses"]) == set(points)
