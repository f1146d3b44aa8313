"""`fedmsr run --secure-aggregation` end to end through Flower's simulation engine.

The reference is computed independently, in this process: each device's local training
redone with the same inputs and seed (runs without DP are deterministic), then the
plaintext FedAvg weighted mean. The securely aggregated model must equal it within the
quantisation bound (plus float32 rounding of the stored arrays).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from fl_client.local_clips import local_clips
from fl_client.trainer import train_local
from fl_client.training_seed import training_seed
from fl_server.config import RunConfig
from fl_server.enrollment import INFO_FILE
from fl_server.federation import Plan
from fl_server.secagg_identities import IDENTITIES_FILE
from privacy.encoder import build_model, state_to_numpy
from privacy.secagg.encoding import EncodingSpec
from privacy.wire.instructions import Instructions
from tests.helpers import PATIENT, SMALL, fedmsr, history, round_outcome

pytestmark = pytest.mark.slow


def plaintext_fedavg(cfg: RunConfig) -> dict[str, np.ndarray]:
    """Ray gives each simulated device one CPU (one torch thread); so does this replay,
    since multi-threaded convolution backward sums in another order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _replay(cfg)
    finally:
        torch.set_num_threads(threads)


def _replay(cfg: RunConfig) -> dict[str, np.ndarray]:
    plan = Plan.from_config(cfg)
    initial = state_to_numpy(build_model(plan.model, seed=cfg.seed))
    instructions = Instructions(1, plan.fleet, plan.model, plan.train, plan.train_days)
    updates, weights = [], []
    for device in range(cfg.devices):
        batch = local_clips(plan.fleet, device, instructions.days("train"))
        train_cfg = dataclasses.replace(plan.train, seed=training_seed(instructions, device))
        result = train_local(plan.model, initial, batch.x, batch.labels["activity"], train_cfg)
        updates.append(result.arrays)
        weights.append(result.num_examples)
    return {k: sum(w * u[k].astype(np.float64) for u, w in zip(updates, weights)) / sum(weights)
            for k in initial}


def test_secure_run_equals_plaintext_fedavg(tmp_path) -> None:
    """Registry-backed: devices sign their round keys with their enrollment keys, and verify
    each other against the registry's public keys (not the simulated enrollment's)."""
    db = ["--db", f"sqlite:///{tmp_path / 'fedmsr.db'}"]
    for args in (["db", "upgrade"], ["fleet", "enroll", "--count", "3", "--prefix", "sa-"]):
        result = fedmsr(*db, *args, cwd=tmp_path, timeout=120)
        assert result.returncode == 0, result.stderr
    result = fedmsr(*db, "run", "--devices", "3", "--rounds", "1", "--seed", "3", *SMALL,
                    *PATIENT, "--secure-aggregation", "--runs-dir", str(tmp_path), "--run-id", "sa",
                    cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = tmp_path / "sa"
    enrolled = {}
    for info in (tmp_path / "devices").glob(f"*/{INFO_FILE}"):
        bundle = json.loads(info.read_text())
        enrolled[str(bundle["device_index"])] = bundle["public_key"]
    assert json.loads((run_dir / IDENTITIES_FILE).read_text()) == enrolled
    assert sorted(enrolled) == ["0", "1", "2"]
    cfg = RunConfig.load(run_dir / "run.json")
    assert cfg.secure_aggregation
    [row] = history(run_dir)
    assert row["devices"] == [0, 1, 2] and row["responded"] == 3, round_outcome(row)
    assert row["train_loss"] is None  # no per-device training metric leaves a device
    with np.load(run_dir / "final_model.npz") as npz:
        secure = {k: npz[k] for k in npz.files}
    expected = plaintext_fedavg(cfg)
    bound = EncodingSpec(cfg.secagg_clip, cfg.secagg_mod_bits, cfg.clips_per_day * cfg.days,
                         cfg.devices).quantisation_bound
    initial = state_to_numpy(build_model(Plan.from_config(cfg).model, seed=cfg.seed))
    moved = 0
    for k, value in expected.items():
        tolerance = bound + 2 * np.finfo(np.float32).eps * np.abs(value)
        assert np.all(np.abs(secure[k] - value) <= tolerance), k
        moved += int(np.any(np.abs(value - initial[k]) > 100 * tolerance))
    assert moved > 0  # the comparison is not trivially initial == initial
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"


def test_secure_aggregation_bad_threshold_is_refused(tmp_path) -> None:
    result = fedmsr("run", "--devices", "5", "--secure-aggregation", "--neighbours", "4",
                    "--threshold", "2", "--runs-dir", str(tmp_path), "--run-id", "bad")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: --threshold: ")
    assert not (tmp_path / "bad").exists()
