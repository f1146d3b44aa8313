"""A run's DP mode, wired into the federation loop: which strategy, what each round
charges whom in the privacy ledger, and what devices are told for their own ledgers.

`fedmsr run --dp none|local|central|both` (docs/privacy-accounting.md):

* ``local`` — DP-SGD on each device (example-level): a device *sent* a train message is
  charged its own ``(q = batch / its clips, sigma, steps)`` event. Client sampling does not
  amplify it: the server knows who took part.
* ``central`` — user-level DP-FedAvg (`strategies.central_dp`): every eligible device is
  charged ``(q_client, sigma_central, 1 step)`` each round, drawn or not.
* ``both`` — both events; a device must afford both to be eligible.

The federation loop calls the hooks here; everything with state (the ledger, who is who in
the registry) lives in the strategy the run uses: `strategies.budget_selection`'s
wrapper around `SeededFedAvg` / `CentralDpFedAvg` for registry-backed runs (the ledger is
keyed by registry device ids), the bare strategy otherwise (no ledger without a registry:
`--epsilon-cap` is refused there, and devices still keep their own ledgers).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import Strategy
from sqlalchemy import select

from fl_client.device_budget import DECLINED_KEY, BudgetPlan, planned_local_event
from fl_client.device_ledger import LedgerReport
from fl_client.messages import CONFIG_KEY, WEIGHT_KEY
from fl_client.trainer import TrainConfig
from fl_server import privacy_ledger
from fl_server.config import DP_MODES, ConfigError, RunConfig
from fl_server.registry.db import resolve_url, session_scope
from fl_server.registry.identity import BUNDLES_EXTRA
from fl_server.registry.models import Device
from privacy.accounting import DpEvent, calibrate_noise
from strategies.budget_selection import (
    BudgetAwareStrategy,
    BudgetExhausted,
    RefusalLike,
    RoundPlan,
)
from strategies.central_dp import CentralDpFedAvg, CentralDpParams
from strategies.seeded_fedavg import SeededFedAvg

log = logging.getLogger("fedmsr.budget")


# -- configuration -------------------------------------------------------------------------

def with_calibrated_noise(cfg: RunConfig) -> RunConfig:
    """`--target-epsilon`: the central noise multiplier whose `rounds` releases of
    (q, sigma, 1 step) reach the target (reported PLD epsilon <= target), frozen into the
    config so run.json records the sigma the run uses and a resume reuses it."""
    if cfg.target_epsilon is None or not cfg.central_dp:
        return cfg
    try:
        sigma = calibrate_noise([(cfg.client_sample_rate, 1)] * cfg.rounds,
                                cfg.target_epsilon, cfg.delta)
    except ValueError as exc:
        raise ConfigError("target_epsilon", str(exc)) from None
    return dataclasses.replace(cfg, central_noise_multiplier=sigma).validate()


def require_ledger_for_caps(cfg: RunConfig) -> None:
    """A cap needs device identities across runs: only a registry-backed run has them."""
    if cfg.epsilon_cap is not None and cfg.device_indices is None:
        raise ConfigError("epsilon_cap", "per-device budgets live in the fleet registry, and "
                          "this run has none; set one up (`fedmsr db upgrade`, `fedmsr fleet "
                          "enroll`) or drop --epsilon-cap")


def central_params(cfg: RunConfig) -> CentralDpParams | None:
    if not cfg.central_dp:
        return None
    return CentralDpParams(cfg.client_sample_rate, cfg.central_noise_multiplier,
                           cfg.central_clip_norm)


def budget_plan(cfg: RunConfig) -> BudgetPlan | None:
    """What devices are told in a DP run (None without DP): run id, delta, the central
    event, and for simulated devices where their ledgers live and their caps."""
    if cfg.dp_mode == "none":
        return None
    params = central_params(cfg)
    return BudgetPlan(
        run_id=cfg.run_id, delta=cfg.delta,
        central_sample_rate=params.sample_rate if params else 0.0,
        central_noise_multiplier=params.noise_multiplier if params else 0.0,
        sim_state_root=str((cfg.run_dir() / "device-state").resolve()),
        sim_bundles_dir=str(cfg.extra.get(BUNDLES_EXTRA, "")),
        sim_caps=_registry_caps(cfg), sim_default_cap=cfg.epsilon_cap or 0.0)


def budget_flat(cfg: RunConfig) -> dict[str, Any]:
    """The budget plan as `budget.*` keys of every message's instructions record."""
    plan = budget_plan(cfg)
    return {} if plan is None else plan.to_flat()


def _registry_caps(cfg: RunConfig) -> dict[int, float]:
    """Data index -> epsilon cap of the run's registry devices (with a cap)."""
    if cfg.device_indices is None:
        return {}
    url = resolve_url()
    ids = privacy_ledger.device_ids_for_indices(url, cfg.device_indices)
    with session_scope(url) as session:
        rows = session.execute(select(Device.id, Device.epsilon_cap)
                               .where(Device.id.in_(list(ids.values()))))
        caps = {device_id: cap for device_id, cap in rows}
    return {index: float(caps[i]) for index, i in ids.items() if caps.get(i) is not None}


# -- the strategy --------------------------------------------------------------------------

def make_strategy(cfg: RunConfig, base: SeededFedAvg) -> Strategy:
    """`base` (the run's aggregation rule), or CentralDpFedAvg under central DP (plain
    FedAvg on the noisy sum: config validation allows no other rule there); wrapped by the
    budget-aware selection when the run has a registry (so a ledger) and any DP."""
    params = central_params(cfg)
    inner = base if params is None else CentralDpFedAvg(
        params=params, seed=cfg.seed, fraction_train=1.0, min_train_nodes=cfg.min_train_devices,
        min_available_nodes=cfg.min_train_devices, weighted_by_key=WEIGHT_KEY,
        arrayrecord_key="arrays", configrecord_key=CONFIG_KEY)
    if cfg.device_indices is None or cfg.dp_mode == "none":
        return inner
    ledger = RegistryLedger(resolve_url(), cfg.run_id, cfg.delta, cfg.epsilon_cap)
    return BudgetAwareStrategy(inner, ledger, cfg.min_train_devices)


class RegistryLedger:
    """`strategies.budget_selection.BudgetLedger` over `fl_server.privacy_ledger`."""

    def __init__(self, url: str, run_id: str, delta: float, default_cap: float | None) -> None:
        self.url, self.run_id, self.delta, self.default_cap = url, run_id, delta, default_cap
        self._ids: dict[int, int] = {}

    def device_ids(self, indices: Sequence[int]) -> dict[int, int]:
        """Synthetic index -> registry device id (cached for the run)."""
        missing = [i for i in indices if i not in self._ids]
        if missing:
            self._ids.update(privacy_ledger.device_ids_for_indices(self.url, missing))
        return {i: self._ids[i] for i in indices}

    def eligible(self, server_round: int, planned: Mapping[int, Sequence[DpEvent]]
                 ) -> tuple[list[int], list[RefusalLike]]:
        ok: list[int] = []
        refused: list[RefusalLike] = []
        for events, ids in _grouped(planned).items():
            fits, out = privacy_ledger.eligible(self.url, ids, events, self.delta,
                                                self.default_cap)
            ok += fits
            for refusal in out:  # a resumed round: what is already reserved is not new
                if self._fits_after_resume(server_round, refusal.device_id, events):
                    ok.append(refusal.device_id)
                else:
                    refused.append(refusal)
        return ok, refused

    def _fits_after_resume(self, server_round: int, device_id: int,
                           events: tuple[DpEvent, ...]) -> bool:
        """Only for a device the pre-check refused: its releases for this round that are
        already in the ledger (reserved before a crash) are spent, not planned."""
        state = privacy_ledger.budget_state(self.url, device_id, self.delta)
        done = {e.kind for e in state.events
                if e.run_id == self.run_id and e.round_number == server_round}
        if not done:
            return False
        left = tuple(e for e in events if e.kind.value not in done)
        if not left:
            return True
        fits, _ = privacy_ledger.eligible(self.url, [device_id], left, self.delta,
                                          self.default_cap)
        return bool(fits)

    def reserve(self, server_round: int, releases: Mapping[int, Sequence[DpEvent]]
                ) -> tuple[list[int], list[RefusalLike]]:
        flat = [privacy_ledger.Release(device, event)
                for device, events in sorted(releases.items()) for event in events]
        result = privacy_ledger.reserve(self.url, self.run_id, server_round, flat, self.delta,
                                        self.default_cap)
        return list(result.reserved), list(result.refused)

    def commit(self, server_round: int, device_ids: Sequence[int]) -> None:
        privacy_ledger.commit(self.url, self.run_id, server_round, device_ids)


def _grouped(planned: Mapping[int, Sequence[DpEvent]]) -> dict[tuple[DpEvent, ...], list[int]]:
    groups: dict[tuple[DpEvent, ...], list[int]] = {}
    for device, events in sorted(planned.items()):
        groups.setdefault(tuple(events), []).append(device)
    return groups


# -- the round hooks -----------------------------------------------------------------------

@dataclass
class RoundBudget:
    """What a round's check-in said about budgets (goes into the round's record)."""

    declined: dict[int, str] = dataclasses.field(default_factory=dict)  # index -> reason
    disagreements: int = 0          # device says it spent MORE than the server recorded
    device_reported_less: int = 0   # expected: reservations it never ran


def begin_round(strategy: Strategy, cfg: RunConfig, train: TrainConfig, server_round: int,
                devices: dict[int, int], answers: Mapping[int, Any]) -> tuple[dict[int, int],
                                                                            RoundBudget]:
    """After check-in: leave out devices whose own ledger declined, audit the totals they
    report against the server's ledger, and give the budget wrapper the round's plan."""
    budget = RoundBudget()
    if cfg.dp_mode == "none":
        return devices, budget
    taking_part: dict[int, int] = {}
    for node, index in devices.items():
        answer = answers.get(node, {})
        if DECLINED_KEY in answer:
            budget.declined[index] = str(answer[DECLINED_KEY])
        else:
            taking_part[node] = index
    if budget.declined:
        log.warning("round %d: %d device(s) declined by their own ledger: %s", server_round,
                    len(budget.declined), "; ".join(f"device {i}: {reason}" for i, reason in
                                                    sorted(budget.declined.items())))
    declined = {f"device {index}": why for index, why in budget.declined.items()}
    if len(taking_part) < cfg.min_train_devices:
        raise BudgetExhausted(server_round, len(taking_part), cfg.min_train_devices, [],
                              declined)
    if isinstance(strategy, BudgetAwareStrategy):
        ledger = strategy.ledger
        assert isinstance(ledger, RegistryLedger)
        ids = ledger.device_ids(sorted(devices.values()))
        _audit(ledger, cfg, devices, answers, ids, budget)
        central = central_params(cfg)
        strategy.begin_round(RoundPlan(
            ledger_ids={node: ids[index] for node, index in taking_part.items()},
            if_sent={node: _local(train, answers.get(node, {})) for node in taking_part},
            every_eligible=(central.event(),) if central else (),
            declined=declined))
    return taking_part, budget


def _local(train: TrainConfig, answer: Mapping[str, Any]) -> tuple[DpEvent, ...]:
    """The local DP-SGD event a device will report for the clips it said it holds."""
    event = planned_local_event(train, int(answer.get("num-clips", 0)) or 1)
    return () if event is None else (event,)


def _audit(ledger: RegistryLedger, cfg: RunConfig, devices: Mapping[int, int],
           answers: Mapping[int, Any], ids: Mapping[int, int], budget: RoundBudget) -> None:
    for node, index in sorted(devices.items()):
        answer = answers.get(node, {})
        if "ledger_epsilon" not in answer:
            continue
        report = LedgerReport.from_config(answer)
        found = privacy_ledger.audit_device_report(ledger.url, ids[index], report,
                                                   run_id=cfg.run_id)
        if found is not None and found.direction == "server-under-counted":
            budget.disagreements += 1
            log.warning("device %d reports epsilon %.4g over %d releases, the server "
                        "recorded %.4g over %d", index, found.device_epsilon,
                        found.device_events, found.server_epsilon, found.server_events)
        elif found is not None:
            budget.device_reported_less += 1


def secure_release(strategy: Strategy, mean: np.ndarray, total_weight: int,
                   secure_arrays: ArrayRecord) -> ArrayRecord:
    """Under central DP the unmasked SecAgg result (every device weight 1) is the mean of
    the clipped updates: mean * count is their sum, which gets the noise; otherwise the
    SecAgg model as it is."""
    inner = getattr(strategy, "inner", strategy)
    if not isinstance(inner, CentralDpFedAvg):
        return secure_arrays
    return inner.aggregate_sum(np.asarray(mean, dtype=np.float64) * total_weight)


def is_central(strategy: Strategy) -> bool:
    return isinstance(getattr(strategy, "inner", strategy), CentralDpFedAvg)


def commit_round(strategy: Strategy, server_round: int) -> None:
    """After the round's checkpoint: its reservations become committed."""
    if isinstance(strategy, BudgetAwareStrategy):
        strategy.commit(server_round)


def commit_checkpointed(strategy: Strategy, checkpoint_round: int) -> int:
    """On resume: commit the reservations of every round the checkpoint already holds (a
    kill between checkpoint and commit left them reserved); the number of rows."""
    if not isinstance(strategy, BudgetAwareStrategy) or checkpoint_round < 1:
        return 0
    ledger = strategy.ledger
    assert isinstance(ledger, RegistryLedger)
    return privacy_ledger.commit_through(ledger.url, ledger.run_id, checkpoint_round)


def round_record(strategy: Strategy, server_round: int, budget: RoundBudget) -> dict[str, Any]:
    """The round's budget figures for history.json (and the metrics observer)."""
    record: dict[str, Any] = {"ledger_disagreements": budget.disagreements,
                              "ledger_device_reported_less": budget.device_reported_less,
                              "budget_declined": sorted(budget.declined)}
    if isinstance(strategy, BudgetAwareStrategy):
        record["budget_reserved"] = len(strategy.reserved.get(server_round, []))
        record["budget_refused"] = sorted(r.name for r in strategy.refused.get(server_round, []))
    inner = getattr(strategy, "inner", strategy)
    if isinstance(inner, CentralDpFedAvg):
        record["central_dp"] = {"population": len(inner.population), "drawn": len(inner.drawn),
                                "denominator": inner.params.denominator(len(inner.population))
                                if inner.population else None,
                                "noise_std": inner.params.noise_std}
    return record


# -- `fedmsr run` options ------------------------------------------------------------------

def with_run_options(cfg: RunConfig, *, dp: str, dp_sgd_alias: bool, epsilon_cap: float,
                     delta: float, client_sample_rate: float, central_noise: float,
                     central_clip: float, target_epsilon: float) -> RunConfig:
    """`--dp none|local|central|both` (`--dp-sgd`: the old spelling of `--dp local`),
    `--epsilon-cap` / `--target-epsilon` (0: unset) and the central DP settings; validated,
    with the central noise calibrated when a target is given."""
    if dp not in DP_MODES:
        raise ConfigError("dp", f"must be one of {', '.join(DP_MODES)}, got {dp!r}")
    if dp_sgd_alias and dp not in ("none", "local"):
        raise ConfigError("dp_sgd", f"--dp-sgd means --dp local; with --dp {dp} drop it "
                          "(--dp both is local DP-SGD plus central DP)")
    mode = "local" if dp_sgd_alias else dp
    cfg = dataclasses.replace(
        cfg, dp_sgd=mode in ("local", "both"), central_dp=mode in ("central", "both"),
        epsilon_cap=epsilon_cap or None, delta=delta, client_sample_rate=client_sample_rate,
        central_noise_multiplier=central_noise, central_clip_norm=central_clip,
        target_epsilon=target_epsilon or None).validate()
    return with_calibrated_noise(cfg)


def describe(cfg: RunConfig) -> str:
    """One phrase for the `fedmsr run` banner."""
    parts = []
    if cfg.dp_sgd:
        parts.append(f"DP-SGD sigma={cfg.noise_multiplier:g}")
    if cfg.central_dp:
        parts.append(f"central DP q={cfg.client_sample_rate:g} "
                     f"sigma={cfg.central_noise_multiplier:.4g} C={cfg.central_clip_norm:g}")
    if not parts:
        return "no DP"
    cap = f", default cap epsilon={cfg.epsilon_cap:g}" if cfg.epsilon_cap else ""
    return " + ".join(parts) + f" (delta={cfg.delta:g}{cap})"
