"""End to end through Flower's simulation engine: the real ClientApp and ServerApp.

A 3-device x 2-round run, and a run whose launcher is SIGKILLed after its first round and
then resumed: it must finish its planned rounds without repeating one, and end with the
same model as an uninterrupted run of the same seed.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fl_server.federation import record_bytes
from fl_server.fault_points import HOLD_ENV
from fl_server.launcher import group_members
from privacy.encoder import EncoderConfig, build_model, state_to_numpy
from privacy.wire.arrays import record_of
from tests.helpers import FEDMSR, PATIENT, SMALL, fedmsr, history, round_outcome, wait_for

pytestmark = pytest.mark.slow
CORE = ("round", "loss", "kl_bits", "utility_acc", "identity_acc", "wall_s")


def _final(run_dir) -> dict[str, np.ndarray]:
    with np.load(run_dir / "final_model.npz") as npz:
        return {k: npz[k] for k in npz.files}


def test_three_devices_two_rounds(tmp_path) -> None:
    """Devices evaluate every second round (`--eval-every 2`): round 2 only."""
    result = fedmsr("run", "--devices", "3", "--rounds", "2", "--seed", "3", *SMALL, *PATIENT,
                    "--eval-every", "2", "--runs-dir", str(tmp_path), "--run-id", "e2e")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = tmp_path / "e2e"
    rows = history(run_dir)
    assert [r["round"] for r in rows] == [1, 2]
    for row in rows:
        assert all(isinstance(row[k], (int, float)) and math.isfinite(row[k]) for k in CORE)
        assert row["responded"] == row["sampled"] == 3 and row["devices"] == [0, 1, 2], \
            round_outcome(row)
        assert row["loss"] > 0 and row["kl_bits"] >= 0 and 0 <= row["identity_acc"] <= 1
        assert row["client_train_s_sum"] > 0
    assert (run_dir / "history.csv").read_text().count("\n") == 3
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.json")) == [
        "round-0001.json", "round-0002.json"]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    # The final model is a trained version of the initial one, with the same arrays.
    cfg = json.loads((run_dir / "final_model.json").read_text())["encoder"]
    initial = state_to_numpy(build_model(EncoderConfig(**cfg), seed=3))
    final = _final(run_dir)
    assert final.keys() == initial.keys()
    assert any(not np.allclose(final[k], initial[k]) for k in final)
    model_bytes = record_bytes(record_of(final))
    # Round 1: 3 train messages out; round 2 also 3 evaluate messages; 3 updates back.
    assert [r["bytes_sent"] for r in rows] == [3 * model_bytes, 6 * model_bytes]
    assert all(r["bytes_received"] == 3 * model_bytes for r in rows)
    assert rows[0]["device_kl_bits"] is None and rows[1]["device_kl_bits"] > 0
    assert not (run_dir / "engine.json").exists()  # the launcher cleaned up after itself
    assert "round   2/2" in result.stdout


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path) -> None:
    # 2 rounds: killed after round 1's checkpoint, round 2 is the resumed one.
    args = ["--devices", "3", "--rounds", "2", "--seed", "11", *SMALL, *PATIENT,
            "--runs-dir", str(tmp_path)]
    # round 2 is held at its check-in for as long as it takes the test to kill the launcher
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", HOLD_ENV: "checkin:2"}
    proc = subprocess.Popen([*FEDMSR, "run", *args, "--run-id", "killed"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = tmp_path / "killed"
    try:
        wait_for(run_dir / "checkpoints" / "round-0001.json", proc, timeout_s=300)
        wait_for(run_dir / "history.json", proc, timeout_s=300)  # written after the checkpoint
        engine = json.loads((run_dir / "engine.json").read_text())
        proc.send_signal(signal.SIGKILL)  # the launcher only, as `kill -9 <pid>` would
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [r["round"] for r in history(run_dir)] == [1]

    resumed = fedmsr("run", "--resume", "killed", "--runs-dir", str(tmp_path))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "after round 1" in resumed.stdout  # the checkpoint's round, whatever history said
    assert [r["round"] for r in history(run_dir)] == [1, 2]
    left = group_members(engine["pgid"])  # nothing of the killed launch survives
    assert left == [], _describe(left)

    straight = fedmsr("run", *args, "--run-id", "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    a, b = _final(run_dir), _final(tmp_path / "straight")
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-5, err_msg=name)
    assert [r["devices"] for r in history(run_dir)] == [r["devices"] for r in
                                                        history(tmp_path / "straight")]


def _describe(pids: list[int]) -> str:
    """What the surviving processes are: state, command line, whether they carry a launch token."""
    out = []
    for pid in pids:
        proc = Path(f"/proc/{pid}")
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            token = b"FEDMSR_ENGINE_TOKEN" in (proc / "environ").read_bytes()
        except OSError as exc:
            out.append(f"{pid}: gone ({exc.__class__.__name__})")
            continue
        out.append(f"{pid} [{state}] token={token}: {cmd[:200]}")
    return "; ".join(out)


def test_dp_sgd_run_keeps_private_metrics_and_noise_seed_on_devices(tmp_path) -> None:
    """Under DP-SGD a device sends only its update, its DP event and plan-fixed metrics,
    and its noise comes from a device secret: two runs with one seed end differently."""
    args = ["--devices", "2", "--rounds", "1", "--seed", "5", *SMALL, "--dp-sgd",
            "--noise-multiplier", "1.3", "--clip", "0.7", "--runs-dir", str(tmp_path)]
    for run_id in ("dp-a", "dp-b"):
        result = fedmsr("run", *args, "--run-id", run_id)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (row,) = history(tmp_path / "dp-a")
    assert row["train_loss"] is None and row["train_kl_bits"] is None
    assert row["device_kl_bits"] is None and row["device_activity_acc"] is None
    assert math.isfinite(row["loss"]) and math.isfinite(row["utility_acc"])
    clips = 4 * 2  # clips per day x training days
    assert [e["device"] for e in row["dp_events"]] == [0, 1]
    for event in row["dp_events"]:
        assert event["noise_multiplier"] == 1.3
        assert event["sample_rate"] == min(1.0, 16 / clips)
        assert event["steps"] == math.ceil(clips / 16)
    a, b = _final(tmp_path / "dp-a"), _final(tmp_path / "dp-b")
    assert any(not np.allclose(a[k], b[k]) for k in a)
