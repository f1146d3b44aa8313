"""Fault suite: hostile devices in a real simulated federation, corrupt checkpoints.

* A fleet where most devices misbehave in one way each (NaN, wrong shape, wrong dtype, a
  10^4-times update, an earlier round's reply replayed, a reply claiming another device,
  an inflated example count): the run finishes, every bad reply is dropped and counted
  for its reason, and the final model is exactly the one the honest updates define,
  recomputed here without Flower.
* The newest checkpoint truncated or corrupted after a run: the resume names the file,
  falls back to the previous good one, redoes the lost round and ends where the
  uninterrupted run ended.

Signed check-ins with another device's key are refused before any train message goes
out (tests/test_registry_identity.py); here the train replies themselves are hostile.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

from fl_client.local_clips import local_clips
from fl_client.trainer import train_local
from fl_client.training_seed import round_seed
from fl_server.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from fl_server.config import RunConfig
from fl_server.federation import Plan
from fl_server.launcher import prepare_new_run
from monitoring.metrics import FedmsrMetrics
from monitoring.observer import MetricsObserver
from privacy.encoder import build_model, state_to_numpy
from privacy.wire.round_record import RoundRecord
from tests.helpers import PATIENT_CONFIG, fedmsr, history, round_outcome

pytestmark = pytest.mark.slow
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: device -> misbehaviour (tests/hostile_app.py); devices 0 and 8 are honest.
HOSTILE = {1: "nan", 2: "shape", 3: "dtype", 4: "huge", 5: "replay", 6: "impostor",
           7: "greedy"}


def _final(run_dir) -> dict[str, np.ndarray]:
    with np.load(run_dir / "final_model.npz") as npz:
        return {k: npz[k] for k in npz.files}


def local_round(plan: Plan, seed: int, server_round: int, device: int,
                start: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
    """One device's local round, as the ClientApp does it (same data, same seed), on one
    torch thread as in the engine (a Ray actor of one CPU): on two threads a convolution's
    weight gradient is summed in another order and the models differ in the sixth digit,
    so the result would depend on which test ran before in this process."""
    import torch

    batch = local_clips(plan.fleet, device, range(plan.train_days))
    train = dataclasses.replace(plan.train, seed=round_seed(seed, server_round, device))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train_local(plan.model, start, batch.x, batch.labels["activity"], train)
    finally:
        torch.set_num_threads(threads)
    return result.arrays, result.num_examples


def fedavg(updates: list[tuple[dict[str, np.ndarray], int]]) -> dict[str, np.ndarray]:
    """Weighted mean in device order, accumulated in float32 as Flower's FedAvg does
    (so that the next round trains from bit-identical weights)."""
    total = sum(weight for _, weight in updates)
    out: dict[str, np.ndarray] = {}
    for arrays, weight in updates:
        for name, value in arrays.items():
            term = value * (weight / total)
            out[name] = term if name not in out else out[name] + term
    return out


def honest_rounds(cfg: RunConfig, honest_by_round: list[list[int]]) -> list[dict]:
    """The global model after each round, recomputed without Flower from the honest
    devices' local rounds."""
    plan = Plan.from_config(cfg)
    arrays = state_to_numpy(build_model(plan.model, seed=cfg.seed))
    models = []
    for server_round, honest in enumerate(honest_by_round, start=1):
        arrays = fedavg([local_round(plan, cfg.seed, server_round, d, arrays) for d in honest])
        models.append(arrays)
    return models


def assert_same_model(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert got.keys() == want.keys()
    for name, value in want.items():
        assert got[name].dtype == value.dtype, name
        np.testing.assert_allclose(got[name], value, rtol=1e-6, atol=1e-7, err_msg=name)


def test_hostile_devices_then_a_truncated_checkpoint(tmp_path, one_torch_thread) -> None:
    cfg = prepare_new_run(RunConfig(devices=9, rounds=2, seed=4, clips_per_day=4, days=2,
                                    runs_dir=str(tmp_path), run_id="hostile",
                                    **PATIENT_CONFIG).validate())
    run_dir = cfg.run_dir()
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONPATH": REPO,
           "FEDMSR_TEST_HOSTILE": ",".join(f"{d}:{k}" for d, k in HOSTILE.items())}
    done = subprocess.run([sys.executable, "-m", "tests.hostile_engine", str(run_dir)],
                          env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    # 1. Every hostile reply dropped, for its reason; the rounds went on with the rest.
    first, second = history(run_dir)
    why = f"{round_outcome(first)}\n{round_outcome(second)}\n{done.stderr[-2000:]}"
    assert first["devices"] == [0, 5, 8] and second["devices"] == [0, 8], why
    assert first["rejected"] == {"identity": 1, "shape": 1, "dtype": 1, "non_finite": 1,
                                 "norm_bound": 1, "metrics": 1}
    assert second["rejected"] == {**first["rejected"], "stale_round": 1}
    assert {d["device"]: d["reason"] for d in second["rejected_devices"]} == {
        1: "non_finite", 2: "shape", 3: "dtype", 4: "norm_bound", 5: "stale_round",
        6: "identity", 7: "metrics"}
    for row in (first, second):
        assert row["sampled"] == 9 and row["failed"] == 0, why
        assert row["responded"] == len(row["devices"]), why

    # 2. The model is the one the surviving updates define (recomputed without Flower).
    plan = Plan.from_config(cfg)
    round1, round2 = honest_rounds(cfg, [[0, 5, 8], [0, 8]])
    assert_same_model(load_checkpoint(run_dir / "checkpoints" / "round-0001.json").arrays,
                      round1)
    attacked = _final(run_dir)
    assert_same_model(attacked, round2)
    # The replay would have shown: device 5's round-1 model again, in round 2.
    replayed = fedavg([local_round(plan, cfg.seed, 2, 0, round1),
                       local_round(plan, cfg.seed, 1, 5, state_to_numpy(
                           build_model(plan.model, seed=cfg.seed))),
                       local_round(plan, cfg.seed, 2, 8, round1)])
    assert max(float(np.max(np.abs(attacked[k] - replayed[k]))) for k in attacked) > 1e-3

    # 3. The Prometheus counter, fed from the run's own records.
    metrics = FedmsrMetrics()
    observer = MetricsObserver(metrics)
    observer.run_started(cfg, 0)
    for row in (first, second):
        observer.round_finished(cfg, RoundRecord.from_json(row))
    for reason, count in {"non_finite": 2, "stale_round": 1, "identity": 2, "metrics": 2,
                          "malformed": 0}.items():
        assert metrics.registry.get_sample_value("fedmsr_updates_rejected_total",
                                                 {"reason": reason}) == count, reason

    # 4. The newest checkpoint truncated; `fedmsr run --resume` names it, falls back to
    #    round 1 and redoes round 2 (now with the production ClientApp: all honest).
    npz = run_dir / "checkpoints" / "round-0002.npz"
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    resumed = fedmsr("run", "--resume", "hostile", "--runs-dir", str(tmp_path))
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, out[-3000:]
    assert "round-0002.npz: checksum mismatch (corrupt or truncated)" in out
    assert "resuming hostile after round 1" in out
    # stderr is a pipe here: plain lines, and no notice of Flower's run_simulation deprecation
    # Ray forwards its actors' own log lines at shutdown, coloured by the actor process
    # ("(ClientAppActor pid=N) ... Manually terminating"): a known leak, not fedmsr's lines.
    ours = "\n".join(line for line in resumed.stderr.splitlines()
                     if not line.lstrip().startswith("(ClientAppActor pid="))
    assert "\x1b" not in ours and "DEPRECATED" not in resumed.stderr, resumed.stderr
    rows = history(run_dir)
    assert [r["round"] for r in rows] == [1, 2] and rows[0] == first
    assert rows[1]["devices"] == list(range(9)) and rows[1]["rejected"] == {}, \
        round_outcome(rows[1]) + "\n" + out[-2000:]
    honest_round2 = fedavg([local_round(plan, cfg.seed, 2, d, round1) for d in range(9)])
    assert_same_model(_final(run_dir), honest_round2)
    assert latest_checkpoint(run_dir).server_round == 2  # rewritten, verifies again


def test_a_corrupt_checkpoint_is_named_and_the_previous_one_used(tmp_path) -> None:
    """Same size, one flipped byte (not just truncation), and a metadata file of `null`."""
    from fl_server.checkpoint import Checkpoint, save_checkpoint

    for server_round in (1, 2, 3):
        save_checkpoint(tmp_path, Checkpoint(server_round, {"w": np.full(4, server_round,
                                                                         dtype=np.float32)}))
    npz = tmp_path / "checkpoints" / "round-0003.npz"
    blob = bytearray(npz.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    npz.write_bytes(bytes(blob))
    (tmp_path / "checkpoints" / "round-0002.json").write_text("null\n")
    skipped: list[str] = []
    ckpt = latest_checkpoint(tmp_path, skipped)
    assert ckpt is not None and ckpt.server_round == 1
    np.testing.assert_array_equal(ckpt.arrays["w"], np.ones(4, dtype=np.float32))
    assert len(skipped) == 2
    assert "round-0003.npz: checksum mismatch" in skipped[0]
    assert "round-0002.json: unreadable checkpoint" in skipped[1]
    with pytest.raises(CheckpointError, match="round-0002.json"):
        load_checkpoint(tmp_path / "checkpoints" / "round-0002.json")
