"""Central user-level DP-FedAvg: device-side clipping, Poisson sampling, noise on the sum, a
fixed denominator; measured against the formulas, and its accounting against dp-accounting
called directly (not our code)."""

from __future__ import annotations

import dataclasses
import logging
import math
import random

import dp_accounting
import numpy as np
import pytest
from scipy import stats as scipy_stats
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from fl_client.handlers import train as train_handler
from fl_server.config import ConfigError, RunConfig
from fl_server.dp_modes import with_calibrated_noise
from fl_server.federation import Plan
from privacy.accounting import EventKind, pld_epsilon
from privacy.encoder import build_model, state_to_numpy
from privacy.secagg.codec import flatten
from privacy.update_clip import clipped_arrays, update_vector
from privacy.wire.arrays import arrays_of, record_of
from privacy.wire.keys import ARRAYS_KEY, CONFIG_KEY, METRICS_KEY, WEIGHT_KEY
from strategies.central_dp import (
    CentralDpFedAvg,
    CentralDpParams,
    ServerRandomness,
    noisy_average,
    poisson_sample,
)
from tests.reference_memo import reference

DELTA = 1e-5
pytestmark = pytest.mark.usefixtures("task_identity")  # Flower stamps every Message


class SeededRandomness(ServerRandomness):
    """Test-only: reproducible draws and noise (the real class uses the OS CSPRNG)."""

    def __init__(self, seed: int, zero_noise: bool = False) -> None:
        super().__init__()
        self._uniform = random.Random(seed)
        self._normal = np.random.default_rng(seed)
        self.zero_noise = zero_noise

    def uniform(self) -> float:
        return self._uniform.random()

    def gaussian(self, size: int) -> np.ndarray:
        return np.zeros(size) if self.zero_noise else self._normal.standard_normal(size)


def strategy(params: CentralDpParams, randomness: ServerRandomness) -> CentralDpFedAvg:
    return CentralDpFedAvg(params=params, randomness=randomness, seed=0, min_train_nodes=1,
                           min_available_nodes=1, arrayrecord_key="arrays",
                           configrecord_key="config")


def model(size: int = 20_000) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {"a": rng.normal(size=(size // 2,)).astype(np.float32),
            "b": rng.normal(size=(size // 4, 2)).astype(np.float32)}


def reply(arrays: dict[str, np.ndarray], node: int) -> Message:
    msg = Message(RecordDict({"arrays": record_of(arrays),
                              "metrics": MetricRecord({WEIGHT_KEY: 1})}), dst_node_id=node,
                  message_type="train")
    return Message(msg.content, reply_to=msg)


def configure(s: CentralDpFedAvg, arrays: dict[str, np.ndarray], population: list[int]) -> list:
    return s.train_messages(1, record_of(arrays), ConfigRecord({}), s.sample(population))


# -- device-side clipping -------------------------------------------------------------------

def test_clipping_bounds_the_float32_update_and_keeps_its_direction() -> None:
    base = model()
    rng = np.random.default_rng(2)
    new = {k: (v + rng.normal(scale=0.3, size=v.shape)).astype(np.float32)
           for k, v in base.items()}
    for clip in (1e-3, 0.5, 3.0):
        out = clipped_arrays(base, new, clip)
        assert all(out[k].dtype == np.float32 for k in out)
        got, raw = update_vector(base, out), update_vector(base, new)
        assert np.linalg.norm(got) <= clip  # as the receiver measures it, after rounding
        assert np.linalg.norm(got) == pytest.approx(clip, rel=1e-3)
        cosine = got @ raw / (np.linalg.norm(got) * np.linalg.norm(raw))
        assert cosine > 0.999
    small = {k: v + np.float32(1e-4) for k, v in base.items()}  # already within the bound
    assert all(np.array_equal(clipped_arrays(base, small, 10.0)[k], small[k]) for k in base)


# -- Poisson sampling -----------------------------------------------------------------------

def test_poisson_draw_includes_each_device_independently_with_probability_q() -> None:
    population, q, trials = list(range(40)), 0.3, 3000
    uniform = random.Random(7).random
    counts = np.zeros(len(population))
    sizes = []
    for _ in range(trials):
        drawn = poisson_sample(population, q, uniform)
        sizes.append(len(drawn))
        counts[drawn] += 1
    # Per device: Binomial(trials, q); the draw size: Binomial(40, q), not a fixed size.
    per_device_sd = math.sqrt(trials * q * (1 - q))
    assert np.all(np.abs(counts - trials * q) < 5 * per_device_sd)
    assert np.mean(sizes) == pytest.approx(40 * q, abs=5 * math.sqrt(40 * q * (1 - q) / trials))
    assert np.var(sizes) == pytest.approx(40 * q * (1 - q), rel=0.15)
    assert min(sizes) < 12 - 4 and max(sizes) > 12 + 4  # the size varies


def test_the_server_draw_is_not_reproducible_from_anything_stored() -> None:
    population = list(range(64))
    draws = {tuple(poisson_sample(population, 0.5, ServerRandomness().uniform))
             for _ in range(4)}
    assert len(draws) == 4  # fresh OS randomness each time (2^-64 odds of a clash)
    assert not np.array_equal(ServerRandomness().gaussian(8), ServerRandomness().gaussian(8))


# -- noise on the sum, fixed denominator ----------------------------------------------------

def test_noise_std_is_sigma_c_over_q_n_and_the_denominator_is_fixed() -> None:
    """Zero updates: the release is pure noise, std sigma*C/(qN) per coordinate. Equal
    updates u from k devices: its mean is k*u/(qN), whatever k is (never k*u/k)."""
    params = CentralDpParams(sample_rate=0.25, noise_multiplier=1.3, clip_norm=0.8)
    population = list(range(100, 120))  # N = 20, qN = 5
    base = model()
    s = strategy(params, SeededRandomness(3))
    configure(s, base, population)
    released, _ = s.aggregate_train(1, [])
    noise = update_vector(base, arrays_of(released))
    expected_std = params.noise_multiplier * params.clip_norm / (params.sample_rate * 20)
    n = noise.size  # the std estimate's relative error is ~1/sqrt(2n) = 0.5%
    assert np.std(noise) == pytest.approx(expected_std, rel=5 / math.sqrt(2 * n))
    assert abs(np.mean(noise)) < 5 * expected_std / math.sqrt(n)

    # Low noise for the mean: the estimate of k has std sigma*C/(qN)/sqrt(n)*qN/|u_i| ~ 0.13.
    quiet = dataclasses.replace(params, noise_multiplier=0.1)
    step = 0.6 / math.sqrt(flatten(base).size)  # ||u|| = 0.6 <= C: not clipped
    u = {k: (v.astype(np.float64) + step).astype(np.float32) for k, v in base.items()}
    per_device = float(np.mean(update_vector(base, u)))
    tolerance = 5 * quiet.noise_std / (0.25 * 20) / math.sqrt(n) * (0.25 * 20) / per_device
    assert tolerance < 1.0  # far apart from the wrong denominators (k, or the drawn count)
    for k_devices in (1, 3, 9):
        s = strategy(quiet, SeededRandomness(10 + k_devices))
        configure(s, base, population)
        released, metrics = s.aggregate_train(1, [reply(u, 100 + i) for i in range(k_devices)])
        got = update_vector(base, arrays_of(released))
        estimate = float(np.mean(got)) / per_device * (quiet.sample_rate * 20)
        assert estimate == pytest.approx(k_devices, abs=tolerance)
        assert metrics["contributors"] == k_devices


def test_the_production_noise_source_has_the_calibrated_std_and_is_gaussian() -> None:
    """The real `ServerRandomness` (OS-seeded, nothing to fix), not a stand-in: the release
    of zero updates is N(0, (sigma C / (q N))^2) per coordinate, by its mean, its std and a
    Kolmogorov-Smirnov test against that normal; two releases are independent draws."""
    params = CentralDpParams(sample_rate=0.25, noise_multiplier=1.3, clip_norm=0.8)
    population = list(range(100, 120))  # N = 20, qN = 5
    base = model()
    expected_std = params.noise_multiplier * params.clip_norm / (params.sample_rate * 20)
    releases = []
    for _ in range(2):
        s = strategy(params, ServerRandomness())
        configure(s, base, population)
        released, _ = s.aggregate_train(1, [])
        releases.append(update_vector(base, arrays_of(released)).astype(np.float64))
    for noise in releases:
        n = noise.size
        assert np.std(noise) == pytest.approx(expected_std, rel=5 / math.sqrt(2 * n)), (
            f"production noise std {np.std(noise):.5f}, want sigma*C/(qN) = {expected_std:.5f}")
        assert abs(np.mean(noise)) < 5 * expected_std / math.sqrt(n)
        assert scipy_stats.kstest(noise / expected_std, "norm").pvalue > 1e-6
    # independent vectors: their correlation is ~N(0, 1/n)
    correlation = float(np.corrcoef(releases[0], releases[1])[0, 1])
    assert abs(correlation) < 5 / math.sqrt(releases[0].size)


def test_the_server_clips_again_what_a_device_did_not() -> None:
    params = CentralDpParams(sample_rate=0.5, noise_multiplier=1.0, clip_norm=1.0)
    base = model(2_000)
    s = strategy(params, SeededRandomness(4, zero_noise=True))
    configure(s, base, [1, 2])
    huge = {k: v + np.float32(50.0) for k, v in base.items()}
    released, _ = s.aggregate_train(1, [reply(huge, 1)])
    got = update_vector(base, arrays_of(released))
    assert np.linalg.norm(got) == pytest.approx(1.0 / (0.5 * 2), rel=1e-5)


def test_noisy_average_formula() -> None:
    params = CentralDpParams(0.1, 2.0, 0.5)
    out = noisy_average(np.ones(3), params, 40, lambda n: np.full(n, 2.0))
    np.testing.assert_allclose(out, (1 + 2.0 * 0.5 * 2.0) / (0.1 * 40))


# -- accounting -----------------------------------------------------------------------------

@reference
def dp_accounting_epsilon(q: float, sigma: float, rounds: int, delta: float) -> float:
    """dp-accounting's own PLD accountant, fine grid: R x PoissonSampled(q, Gaussian(sigma))."""
    acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)),
                rounds)
    return acc.get_epsilon(delta)


def test_each_round_is_one_poisson_subsampled_gaussian_release() -> None:
    params = CentralDpParams(0.2, 1.1, 1.0)
    event = params.event()
    assert (event.sample_rate, event.noise_multiplier, event.steps, event.kind) == \
        (0.2, 1.1, 1, EventKind.CENTRAL_DP_FEDAVG)
    exact = dp_accounting_epsilon(0.2, 1.1, 30, DELTA)
    ours = pld_epsilon([event] * 30, DELTA)
    assert exact <= ours <= 1.02 * exact


def test_target_epsilon_calibrates_the_central_noise_for_the_planned_rounds(tmp_path) -> None:
    cfg = RunConfig(devices=4, rounds=20, runs_dir=str(tmp_path), run_id="cal", central_dp=True,
                    delta=DELTA, client_sample_rate=0.1, target_epsilon=2.0).validate()
    cfg = with_calibrated_noise(cfg)
    sigma = cfg.central_noise_multiplier
    reached = dp_accounting_epsilon(0.1, sigma, 20, DELTA)
    assert reached <= 2.0 * 1.001 and reached >= 2.0 * 0.97  # calibrated, not just "safe"
    assert dp_accounting_epsilon(0.1, sigma * 0.97, 20, DELTA) > 2.0 * 0.999
    assert with_calibrated_noise(cfg) == cfg  # deterministic: a resume recalibrates the same


@pytest.mark.parametrize("change, field", [
    (dict(client_sample_rate=0.0), "client_sample_rate"),
    (dict(client_sample_rate=1.5), "client_sample_rate"),
    (dict(central_noise_multiplier=0.0), "central_noise_multiplier"),
    (dict(central_clip_norm=-1.0), "central_clip_norm"),
    (dict(fraction_train=0.5), "fraction_train"),
    (dict(target_epsilon=-1.0), "target_epsilon"),
    (dict(delta=1.0), "delta"),
    (dict(epsilon_cap=0.0), "epsilon_cap"),
])
def test_bad_central_settings_are_one_clear_error(change, field) -> None:
    with pytest.raises(ConfigError) as err:
        dataclasses.replace(RunConfig(central_dp=True), **change).validate()
    assert err.value.field_name == field


def test_target_epsilon_without_central_dp_is_refused() -> None:
    with pytest.raises(ConfigError, match="--dp central"):
        RunConfig(target_epsilon=1.0).validate()


# -- on the device, and through secure aggregation ------------------------------------------

def central_plan(tmp_path, devices: int = 4) -> tuple[RunConfig, Plan]:
    cfg = RunConfig(devices=devices, clips_per_day=4, days=2, seed=5, runs_dir=str(tmp_path),
                    run_id="central", central_dp=True, client_sample_rate=0.5,
                    central_clip_norm=0.05, secure_aggregation=True).validate()
    return cfg, Plan.from_config(cfg)


def test_a_central_dp_device_clips_counts_once_and_keeps_its_metrics(tmp_path) -> None:
    from tests.test_secagg_workflow import LoopbackGrid

    cfg, plan = central_plan(tmp_path)
    initial = state_to_numpy(build_model(plan.model, seed=cfg.seed))
    msg = Message(RecordDict({ARRAYS_KEY: record_of(initial),
                              CONFIG_KEY: plan.instructions(1)}), dst_node_id=101,
                  message_type="train")
    out = train_handler(msg, LoopbackGrid().contexts[101])
    update = update_vector(initial, arrays_of(out.content[ARRAYS_KEY]))
    assert 0 < np.linalg.norm(update) <= cfg.central_clip_norm
    assert np.linalg.norm(update) == pytest.approx(cfg.central_clip_norm, rel=1e-3)  # clipped
    metrics = out.content[METRICS_KEY]
    assert metrics[WEIGHT_KEY] == 1 and "loss" not in metrics and "kl_bits" not in metrics


def test_secure_aggregation_sum_gets_the_same_release_as_the_plain_sum(tmp_path) -> None:
    """Weights 1, so the unmasked SecAgg mean times the count is the sum of the clipped
    updates: the central release from it equals the plain one (noise off, to compare)."""
    from strategies.secagg_workflow import SecAggParams, round_setup, secure_train_round
    from tests.test_secagg_workflow import NODES, LoopbackGrid

    cfg, plan = central_plan(tmp_path, devices=len(NODES))
    initial = state_to_numpy(build_model(plan.model, seed=cfg.seed))
    content = RecordDict({ARRAYS_KEY: record_of(initial), CONFIG_KEY: plan.instructions(1)})
    messages = [Message(content=content, message_type="train", dst_node_id=n) for n in NODES]
    params = CentralDpParams(cfg.client_sample_rate, 1.0, cfg.central_clip_norm)
    secagg = SecAggParams(clip=cfg.secagg_clip, max_weight=cfg.clips_per_day * cfg.days,
                          enrollment_seed=cfg.seed, round_context=b"central/round-1",
                          sim_state_root=str(tmp_path / "device-state"))
    secure = secure_train_round(LoopbackGrid(), messages, NODES, initial, secagg, 5.0, 5.0)
    assert secure.result.total_weight == len(NODES)  # every device weight 1

    s = strategy(params, SeededRandomness(0, zero_noise=True))
    configure(s, initial, sorted(NODES))
    via_secagg = arrays_of(s.aggregate_secure(secure.result.mean, secure.result.total_weight,
                                              secure.arrays))
    plain_grid = LoopbackGrid()
    replies = [train_handler(m, plain_grid.contexts[m.metadata.dst_node_id]) for m in messages]
    for r, m in zip(replies, messages, strict=True):
        r.metadata.__dict__["_src_node_id"] = m.metadata.dst_node_id
    plain, _ = s.aggregate_train(1, replies)
    bound = round_setup(secagg, sorted(NODES.values()), 1).encoding.quantisation_bound
    total_bound = bound * len(NODES) / (params.sample_rate * len(NODES)) + 1e-6
    for k, value in arrays_of(plain).items():
        assert np.all(np.abs(via_secagg[k].astype(np.float64) - value) <= total_bound), k
    assert not all(np.array_equal(via_secagg[k], initial[k]) for k in initial)


def test_secure_release_leaves_a_non_central_model_alone() -> None:
    base = model(100)
    record = record_of(base)
    from strategies.seeded_fedavg import SeededFedAvg

    assert SeededFedAvg(seed=0).aggregate_secure(np.zeros(100), 3, record) is record


def test_secure_release_noise_covers_the_fixed_point_rounding() -> None:
    """Through SecAgg+ one device can move the decoded sum by C + r, r being its fixed-point
    rounding in L2, so the noise is sigma * (C + r): the accounted (q, sigma) event stays
    exact. Zero-sum updates make the release pure noise, compared to the draws themselves."""
    params = CentralDpParams(0.5, 2.0, 1.0)
    base = model(100)
    expected = np.random.default_rng(7).standard_normal(100)
    for rounding in (0.0, 0.25):
        s = strategy(params, SeededRandomness(7))
        configure(s, base, [1, 2, 3, 4])
        released = arrays_of(s.aggregate_secure(np.zeros(100), 4, record_of(base),
                                                 rounding_l2=rounding))
        noise = (flatten(released) - flatten(base)) * params.denominator(4)
        assert np.allclose(noise, 2.0 * (1.0 + rounding) * expected, atol=1e-4), rounding
        assert s.round_figures().noise_std == pytest.approx(2.0 * (1.0 + rounding))
    with pytest.raises(ValueError, match="rounding_l2"):
        s.aggregate_secure(np.zeros(100), 4, record_of(base), rounding_l2=float("nan"))


def test_a_secure_round_reports_its_fixed_point_rounding(tmp_path) -> None:
    """The bound handed to the release is sqrt(d) times half a quantisation step."""
    from strategies.secagg_workflow import SecAggParams, round_setup, secure_train_round
    from tests.test_secagg_workflow import NODES, LoopbackGrid

    cfg, plan = central_plan(tmp_path, devices=len(NODES))
    initial = state_to_numpy(build_model(plan.model, seed=cfg.seed))
    content = RecordDict({ARRAYS_KEY: record_of(initial), CONFIG_KEY: plan.instructions(1)})
    messages = [Message(content=content, message_type="train", dst_node_id=n) for n in NODES]
    secagg = SecAggParams(clip=cfg.secagg_clip, max_weight=cfg.clips_per_day * cfg.days,
                          enrollment_seed=cfg.seed, round_context=b"central/round-1",
                          sim_state_root=str(tmp_path / "device-state"))
    secure = secure_train_round(LoopbackGrid(), messages, NODES, initial, secagg, 5.0, 5.0)
    d = flatten(initial).size
    setup = round_setup(secagg, sorted(NODES.values()), d)
    assert secure.rounding_l2 == pytest.approx(math.sqrt(d) * setup.encoding.quantisation_bound)
    assert 0 < secure.rounding_l2 < 1e-3  # tiny at 32 bits, but accounted


# -- the strategy's bookkeeping and guards (mutation testing: docs/testing.md) --------------

def test_the_denominator_needs_a_population_of_at_least_one() -> None:
    params = CentralDpParams(sample_rate=0.25, noise_multiplier=1.0, clip_norm=1.0)
    assert params.denominator(1) == 0.25 and params.denominator(8) == 2.0
    with pytest.raises(ValueError, match=r"^the eligible population must be >= 1, got 0$"):
        params.denominator(0)


def test_round_figures_before_and_after_a_round() -> None:
    params = CentralDpParams(sample_rate=0.5, noise_multiplier=1.3, clip_norm=0.8)
    s = strategy(params, SeededRandomness(5, zero_noise=True))
    fresh = s.round_figures()
    assert (fresh.population, fresh.drawn, fresh.denominator) == (0, 0, None)
    assert fresh.noise_std == pytest.approx(1.3 * 0.8)
    base = model(2_000)
    population = list(range(100, 110))
    messages = configure(s, base, population)
    s.aggregate_train(1, [])
    after = s.round_figures()
    assert after.population == 10 and after.drawn == len(messages) == len(s.drawn)
    assert after.denominator == 0.5 * 10 and after.noise_std == pytest.approx(1.3 * 0.8)


def test_aggregation_before_the_round_is_set_up_is_refused() -> None:
    params = CentralDpParams(sample_rate=0.5, noise_multiplier=1.0, clip_norm=1.0)
    s = strategy(params, SeededRandomness(6))
    message = r"^central DP: sample and train_messages must run before aggregation$"
    with pytest.raises(RuntimeError, match=message):
        s.aggregate_train(1, [])
    s.sample(list(range(10)))  # drawn, but no train message (no global arrays) yet
    with pytest.raises(RuntimeError, match=message):
        s.aggregate_train(1, [])


def test_a_failed_reply_is_skipped_and_the_next_one_still_counts() -> None:
    from flwr.app import Error

    params = CentralDpParams(sample_rate=1.0, noise_multiplier=1.0, clip_norm=1.0)
    s = strategy(params, SeededRandomness(7, zero_noise=True))
    base = model(2_000)
    configure(s, base, [100, 101])
    failed = Message(Error(code=1, reason="device crashed"),
                     reply_to=Message(RecordDict(), dst_node_id=100, message_type="train"))
    _, metrics = s.aggregate_train(1, [failed, reply(base, 101)])
    assert metrics["contributors"] == 1


def test_the_secure_release_slack_is_checked_and_does_not_outlive_its_release() -> None:
    params = CentralDpParams(sample_rate=1.0, noise_multiplier=2.0, clip_norm=0.5)
    s = strategy(params, SeededRandomness(8, zero_noise=True))
    base = model(2_000)
    configure(s, base, [100, 101])
    size = flatten(base).size
    with pytest.raises(ValueError, match=r"^rounding_l2 must be a finite number >= 0, got -1"):
        s.aggregate_secure(np.zeros(size), 2, record_of(base), rounding_l2=-1.0)
    s.aggregate_secure(np.zeros(size), 2, record_of(base))  # no rounding given: none
    assert s.round_figures().noise_std == pytest.approx(2.0 * 0.5)
    s.aggregate_secure(np.zeros(size), 2, record_of(base), rounding_l2=0.25)
    assert s.round_figures().noise_std == pytest.approx(2.0 * (0.5 + 0.25))
    s.aggregate_sum(np.zeros(size))  # the next release has no slack left over
    assert s.round_figures().noise_std == pytest.approx(2.0 * 0.5)


def test_the_draw_is_logged_with_its_figures(caplog) -> None:
    params = CentralDpParams(sample_rate=1.0, noise_multiplier=1.0, clip_norm=1.0)
    s = strategy(params, SeededRandomness(9))
    with caplog.at_level(logging.INFO, logger="flwr"):
        configure(s, model(2_000), [100, 101, 102])
    assert "central DP: drew 3 of 3 eligible devices (q=1.0)" in [
        r.getMessage() for r in caplog.records]
