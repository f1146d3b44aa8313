"""Robust aggregation: Flower's rules behind fedmsr's seeded strategy, on real local updates.

Six honest devices train one real local round each; a seventh sends a huge but finite
update (it passes the default norm bound, so only the aggregation rule can stop it).
FedAvg is pulled far away; median, trimmed mean, Krum, Multi-Krum and Bulyan stay with
the honest updates. Each result is also checked against an independent computation.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.stats
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.exception import InconsistentMessageReplies
from flwr.serverapp.strategy import FedMedian

from fl_client.local_clips import local_clips
from fl_client.trainer import train_local
from fl_client.training_seed import round_seed
from fl_server.config import ConfigError, RunConfig
from fl_server.federation import Plan
from privacy.encoder import build_model, state_to_numpy
from privacy.wire.keys import ARRAYS_KEY, METRICS_KEY, WEIGHT_KEY
from strategies.robust_aggregation import (
    AGGREGATIONS,
    TooFewUpdates,
    required_updates,
    robust_strategy,
)
from strategies.update_validation import DEFAULT_MAX_UPDATE_NORM, update_norm

HONEST = 6
ROBUST = ("median", "trimmed-mean", "krum", "multikrum", "bulyan")
pytestmark = pytest.mark.usefixtures("task_identity")  # Flower stamps new messages


@pytest.fixture(scope="module")
def updates(one_torch_thread):
    """(global arrays, six honest trained models, one attacker's model)."""
    cfg = RunConfig(devices=HONEST + 1, clips_per_day=4, days=2, seed=2).validate()
    plan = Plan.from_config(cfg)
    start = state_to_numpy(build_model(plan.model, seed=cfg.seed))
    honest = []
    for device in range(HONEST):
        batch = local_clips(plan.fleet, device, range(plan.train_days))
        train = dataclasses.replace(plan.train, seed=round_seed(cfg.seed, 1, device))
        honest.append(train_local(plan.model, start, batch.x, batch.labels["activity"],
                                  train).arrays)
    # Against device 0's direction, ~180 times as long (norm 90): finite, and within the
    # default norm bound of 100, so validation lets it through.
    scale = 0.9 * DEFAULT_MAX_UPDATE_NORM / update_norm(start, honest[0])
    attacker = {k: (start[k] - scale * (honest[0][k] - start[k])).astype(start[k].dtype)
                for k in start}
    return start, honest, attacker


def replies(models: list[dict[str, np.ndarray]], extra_metric: int | None = None
            ) -> list[Message]:
    out = []
    for i, arrays in enumerate(models):
        metrics = {"loss": 1.0, "train_seconds": 0.1, WEIGHT_KEY: 8}
        if i == extra_metric:
            metrics["surprise"] = 1.0
        out.append(Message(RecordDict({
            ARRAYS_KEY: ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            METRICS_KEY: MetricRecord(metrics)}), dst_node_id=100 + i, message_type="train"))
    return out


def aggregate(rule: str, models, byzantine: int = 1, **kwargs) -> dict[str, np.ndarray]:
    strategy = robust_strategy(rule, seed=0, byzantine=byzantine, min_train_nodes=1,
                               weighted_by_key=WEIGHT_KEY, **kwargs)
    arrays, _ = strategy.aggregate_train(1, replies(models))
    return {k: v.numpy() for k, v in arrays.items()}


def distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return update_norm(a, b)


@pytest.fixture(scope="module")
def results(updates) -> dict[str, dict[str, np.ndarray]]:
    """Each rule over the six honest updates and the attacker's, in device order.
    (Flower's Bulyan runs gc.collect() per update: worth doing once.)"""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    start, honest, attacker = updates
    return {rule: aggregate(rule, [*honest, attacker]) for rule in AGGREGATIONS}


def test_robust_rules_resist_a_huge_update_that_fedavg_follows(updates, results) -> None:
    start, honest, attacker = updates
    assert update_norm(start, attacker) < DEFAULT_MAX_UPDATE_NORM  # validation lets it in
    honest_mean = aggregate("fedavg", honest)
    spread = max(distance(h, honest_mean) for h in honest)  # how far an honest one may be
    pulled = distance(results["fedavg"], honest_mean)
    assert pulled > 10 * spread
    for rule in ROBUST:
        robust = results[rule]
        assert distance(robust, honest_mean) <= spread, rule
        assert distance(robust, attacker) > distance(robust, honest_mean), rule
        assert all(robust[k].dtype == start[k].dtype for k in start), rule


def test_each_rule_computes_what_it_should(updates, results) -> None:
    start, honest, attacker = updates
    models = [*honest, attacker]
    stack = {k: np.stack([m[k] for m in models]) for k in start}
    median, trimmed = results["median"], results["trimmed-mean"]  # trim_fraction 0.2
    for k in start:
        np.testing.assert_array_equal(median[k], np.median(stack[k], axis=0))
        np.testing.assert_allclose(trimmed[k], scipy.stats.trim_mean(stack[k], 0.2, axis=0),
                                   rtol=1e-6, atol=1e-7)
    krum = results["krum"]  # exactly one honest device's model
    assert any(all(np.array_equal(krum[k], h[k]) for k in start) for h in honest)
    # Multi-Krum keeps n - f = 6 updates: here exactly the honest ones, equally weighted.
    honest_mean = aggregate("fedavg", honest)
    multikrum = results["multikrum"]
    for k in start:
        np.testing.assert_allclose(multikrum[k], honest_mean[k], rtol=1e-5, atol=1e-7)


def test_same_inputs_give_a_bit_identical_model(updates, results) -> None:
    start, honest, attacker = updates
    for rule in AGGREGATIONS:
        again = aggregate(rule, [*honest, attacker])
        assert all(np.array_equal(again[k], results[rule][k]) for k in start), rule


def test_replies_are_not_consumed_and_odd_metric_keys_do_not_sink_the_round(updates) -> None:
    start, honest, attacker = updates
    batch = replies([*honest, attacker], extra_metric=2)
    with pytest.raises(InconsistentMessageReplies):  # Flower's own FedMedian would give up
        FedMedian(min_train_nodes=1).aggregate_train(1, replies([*honest, attacker],
                                                                extra_metric=2))
    strategy = robust_strategy("median", seed=0, byzantine=1, min_train_nodes=1)
    arrays, metrics = strategy.aggregate_train(1, batch)
    assert arrays is not None and "surprise" not in metrics
    assert metrics["loss"] == pytest.approx(1.0)
    for reply in batch:  # still whole: the round counts the bytes it received afterwards
        assert set(reply.content[ARRAYS_KEY]) == set(start)


def test_too_few_updates_fail_the_round_instead_of_averaging(updates) -> None:
    start, honest, _ = updates
    table = {rule: required_updates(rule, 1, 0.2) for rule in AGGREGATIONS}
    assert table == {"fedavg": 1, "median": 3, "trimmed-mean": 5, "krum": 5,
                     "multikrum": 5, "bulyan": 7}
    assert required_updates("trimmed-mean", 2, 0.25) == 8  # floor(0.25 * 8) = 2 trimmed
    for rule, needed in table.items():
        if needed == 1:
            continue
        with pytest.raises(TooFewUpdates, match=f"needs at least {needed} accepted updates"):
            aggregate(rule, [*honest, honest[0]][:needed - 1])
        aggregate(rule, [*honest, honest[0]][:needed])


def test_config_refuses_combinations_that_cannot_work() -> None:
    base = RunConfig(devices=8)
    with pytest.raises(ConfigError, match="aggregation: median needs each device's update, "
                                          "but secure aggregation reveals only their sum"):
        dataclasses.replace(base, aggregation="median", secure_aggregation=True).validate()
    with pytest.raises(ConfigError, match="aggregation: must be one of"):
        dataclasses.replace(base, aggregation="mean").validate()
    with pytest.raises(ConfigError, match="byzantine_devices: bulyan tolerating 2 hostile "
                                          "device.* needs at least 11"):
        dataclasses.replace(base, aggregation="bulyan", byzantine_devices=2).validate()
    with pytest.raises(ConfigError, match="byzantine_devices: krum .* a round samples 4"):
        dataclasses.replace(base, aggregation="krum", fraction_train=0.5).validate()
    for bad in (0.0, float("inf"), float("nan"), -1.0):
        with pytest.raises(ConfigError, match="max_update_norm"):
            dataclasses.replace(base, max_update_norm=bad).validate()
    with pytest.raises(ConfigError, match="trim_fraction"):
        dataclasses.replace(base, aggregation="trimmed-mean", trim_fraction=0.5).validate()
    assert dataclasses.replace(base, aggregation="bulyan", byzantine_devices=1).validate()
    with pytest.raises(ConfigError, match="aggregation: central DP"):  # outside its analysis
        dataclasses.replace(base, aggregation="median", central_dp=True).validate()
    assert dataclasses.replace(base, aggregation="median", dp_sgd=True).validate()  # local DP
    assert dataclasses.replace(base, secure_aggregation=True).validate().aggregation == "fedavg"


def test_cli_refuses_robust_aggregation_with_secure_aggregation(tmp_path, capsys) -> None:
    from fl_server.cli import main

    code = main(["run", "--devices", "6", "--aggregation", "krum", "--secure-aggregation",
                 "--runs-dir", str(tmp_path), "--run-id", "x"])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        "error: --aggregation: krum needs each device's update")
    assert not (tmp_path / "x").exists()  # nothing written
