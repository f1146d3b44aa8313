"""Every DP mode and every robust aggregation rule, end to end: `fedmsr run` through
Flower's simulation engine, and what it leaves checked by an independent computation.

* `--dp central --target-epsilon`: the calibrated sigma, recounted with dp-accounting's PLD
  accountant, reaches the target without going over; every device of the population is
  charged each round (drawn or not) and `fedmsr budget show` agrees with the recount.
* `--dp both`: each device is charged its DP-SGD release and the central release every
  round; `budget show` agrees with dp-accounting's composition of the two.
* `--aggregation median|trimmed-mean|krum|multikrum|bulyan`: the final model is the rule
  applied, in NumPy/SciPy here, to the devices' local rounds recomputed without Flower.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from fl_server.config import RunConfig
from fl_server.round_plan import Plan
from privacy.accounting import DpEvent, EventKind
from privacy.encoder import build_model, state_to_numpy
from tests.helpers import PATIENT, SMALL, fedmsr, history, round_outcome
from tests.ledger_recount import independent_epsilon, ledger_rows, shown_budgets
from tests.test_fault_injection import _enroll, local_event
from tests.test_faults import local_round

pytestmark = pytest.mark.slow
DELTA = 1e-5


def run(tmp_path: Path, url: str | None, run_id: str, *args: str) -> tuple[Path, RunConfig]:
    db = ["--db", url] if url else []
    result = fedmsr(*db, "run", *SMALL, *PATIENT, "--runs-dir", str(tmp_path / "runs"),
                    "--run-id", run_id, *args, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = tmp_path / "runs" / run_id
    return run_dir, RunConfig.load(run_dir / "run.json")


def test_central_dp_calibrated_to_a_target_epsilon(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    _enroll(tmp_path, url, 4)
    target, rounds, q = 6.0, 2, 0.5
    run_dir, cfg = run(tmp_path, url, "central", "--devices", "4", "--rounds", str(rounds),
                       "--seed", "3", "--dp", "central", "--client-sample-rate", str(q),
                       "--target-epsilon", str(target), "--delta", str(DELTA),
                       "--min-devices", "1")
    sigma = cfg.central_noise_multiplier
    central = DpEvent(q, sigma, 1, EventKind.CENTRAL_DP_FEDAVG)
    exact = independent_epsilon([central] * rounds, DELTA)
    assert exact <= target, f"sigma {sigma} spends {exact} > target {target}"
    assert exact >= 0.95 * target, f"sigma {sigma} is far noisier than the target needs"
    rows = ledger_rows(url, "central")
    assert sorted((r.device, r.round_number) for r in rows) == [
        (f"cam-{d}", n) for d in range(4) for n in range(1, rounds + 1)]  # drawn or not
    assert {(r.kind, r.sample_rate, r.noise_multiplier, r.steps) for r in rows} == {
        ("central-dp-fedavg", q, sigma, 1)}
    shown = shown_budgets(url, DELTA)
    for d in range(4):
        got = float(shown[f"cam-{d}"]["epsilon"])
        assert exact * (1 - 1e-9) <= got <= 1.02 * exact, (d, got, exact)
    for record in history(run_dir):
        assert record["central_dp"]["population"] == 4, round_outcome(record)
        assert record["central_dp"]["denominator"] == q * 4


def test_both_dp_modes_charge_both_releases(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    _enroll(tmp_path, url, 3)
    run_dir, cfg = run(tmp_path, url, "both", "--devices", "3", "--rounds", "1", "--seed", "4",
                       "--dp", "both", "--client-sample-rate", "1.0", "--central-noise", "2.0",
                       "--delta", str(DELTA))
    assert cfg.dp_sgd and cfg.central_dp
    local = local_event(cfg)
    central = DpEvent(1.0, 2.0, 1, EventKind.CENTRAL_DP_FEDAVG)
    rows = ledger_rows(url, "both")
    assert sorted((r.device, r.kind) for r in rows) == sorted(
        (f"cam-{d}", kind) for d in range(3)
        for kind in ("central-dp-fedavg", "local-dp-sgd")), rows
    for r in rows:
        want = central if r.kind == "central-dp-fedavg" else local
        assert (r.sample_rate, r.noise_multiplier, r.steps) == (
            want.sample_rate, want.noise_multiplier, want.steps), r
    exact = independent_epsilon([local, central], DELTA)
    shown = shown_budgets(url, DELTA)
    for d in range(3):
        got = float(shown[f"cam-{d}"]["epsilon"])
        assert exact * (1 - 1e-9) <= got <= 1.02 * exact, (d, got, exact)
    [record] = history(run_dir)
    assert record["devices"] == [0, 1, 2], round_outcome(record)


def _krum_scores(stack: np.ndarray, f: int) -> np.ndarray:
    """Krum (Blanchard et al. 2017): each update's summed squared distance to its n-f-2
    nearest others."""
    n = len(stack)
    dist = ((stack[:, None, :] - stack[None, :, :]) ** 2).sum(-1)
    return np.array([np.sort(np.delete(dist[i], i))[: n - f - 2].sum() for i in range(n)])


def expected_model(rule: str, models: list[dict[str, np.ndarray]], f: int
                   ) -> dict[str, np.ndarray]:
    names = list(models[0])
    flat = np.stack([np.concatenate([m[k].ravel().astype(np.float64) for k in names])
                     for m in models])
    if rule == "median":
        out = np.median(flat, axis=0)
    elif rule == "trimmed-mean":
        out = scipy.stats.trim_mean(flat, 0.2, axis=0)
    elif rule == "krum":
        out = flat[int(np.argmin(_krum_scores(flat, f)))]
    elif rule == "bulyan":
        out = _bulyan(flat, f)
    elif rule == "multikrum":  # the n - f best-scored, equally weighted (equal clip counts)
        keep = np.argsort(_krum_scores(flat, f), kind="stable")[: len(flat) - f]
        out = flat[keep].mean(axis=0)
    else:
        raise AssertionError(rule)
    arrays, start = {}, 0
    for k in names:
        size = models[0][k].size
        arrays[k] = out[start:start + size].reshape(models[0][k].shape)
        start += size
    return arrays


@pytest.mark.parametrize("rule", [
    "median",  # the default run's sibling of the four others
    *(pytest.param(rule, marks=pytest.mark.extended)
      for rule in ("trimmed-mean", "krum", "multikrum"))])
def test_a_robust_rule_through_the_engine(tmp_path, rule: str) -> None:
    run_dir, cfg = run(tmp_path, None, rule, "--devices", "5", "--rounds", "1", "--seed", "2",
                       "--aggregation", rule, "--byzantine", "1")
    [record] = history(run_dir)
    assert record["devices"] == [0, 1, 2, 3, 4], round_outcome(record)
    plan = Plan.from_config(cfg)
    start = state_to_numpy(build_model(plan.model, seed=cfg.seed))
    models = [local_round(plan, cfg.seed, 1, d, start)[0] for d in range(5)]
    want = expected_model(rule, models, f=1)
    with np.load(run_dir / "final_model.npz") as npz:
        for name, value in want.items():
            assert npz[name].dtype == start[name].dtype, name
            np.testing.assert_allclose(npz[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def _bulyan(flat: np.ndarray, f: int) -> np.ndarray:
    """Bulyan as Flower 1.42 defines it: theta = n - 2f updates selected by Multi-Krum in
    one shot (the theta lowest Krum scores; El Mhamdi et al. 2018 apply Krum recursively,
    see docs/robustness.md), then per coordinate the mean of the beta = theta - 2f values
    nearest the selected updates' median."""
    theta = len(flat) - 2 * f
    chosen = np.argsort(_krum_scores(flat, f), kind="stable")[:theta]
    selected = flat[np.sort(chosen)]
    beta = theta - 2 * f
    nearest = np.argsort(np.abs(selected - np.median(selected, axis=0)), axis=0,
                         kind="stable")[:beta]
    return np.take_along_axis(selected, nearest, axis=0).mean(axis=0)


@pytest.mark.extended
def test_bulyan_through_the_engine(tmp_path) -> None:
    """Bulyan tolerating f = 1 needs 4f + 3 = 7 updates: 7 devices."""
    run_dir, cfg = run(tmp_path, None, "bulyan", "--devices", "7", "--rounds", "1", "--seed",
                       "2", "--aggregation", "bulyan", "--byzantine", "1")
    [record] = history(run_dir)
    assert record["devices"] == list(range(7)), round_outcome(record)
    plan = Plan.from_config(cfg)
    start = state_to_numpy(build_model(plan.model, seed=cfg.seed))
    models = [local_round(plan, cfg.seed, 1, d, start)[0] for d in range(7)]
    want = expected_model("bulyan", models, f=1)
    with np.load(run_dir / "final_model.npz") as npz:
        for name, value in want.items():
            np.testing.assert_allclose(npz[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
