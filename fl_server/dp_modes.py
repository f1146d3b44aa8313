"""A run's DP mode from its configuration: the noise a `--target-epsilon` calls for, the
central DP parameters, and what devices are told for their own ledgers.

What a round does with the mode is `fl_server.dp_policy`; the modes themselves are
described in docs/privacy-accounting.md.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from sqlalchemy import select

from fl_server.config import ConfigError, RunConfig
from fl_server.registry.db import resolve_url, session_scope
from fl_server.registry.devices import device_ids_for_indices
from fl_server.registry.identity import BUNDLES_EXTRA
from fl_server.registry.models import Device
from privacy.accounting import calibrate_noise
from privacy.release_mechanism import GaussianRelease, calibrate_release
from privacy.wire.budget import BudgetPlan
from strategies.central_dp import CentralDpParams

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


def with_calibrated_release(cfg: RunConfig) -> RunConfig:
    """`--release-epsilon`: the noise multiplier of the randomized release whose uploads
    over the horizon (`release_horizon_clips`, one event step per clip) compose to the
    epsilon at the run's delta, frozen into the config like the central noise."""
    if cfg.release_epsilon is None:
        return cfg
    try:
        release = calibrate_release(cfg.release_epsilon, cfg.delta, cfg.release_horizon_clips,
                                    cfg.release_clip)
    except ValueError as exc:
        raise ConfigError("release_epsilon", str(exc)) from None
    return dataclasses.replace(cfg, release_noise_multiplier=release.noise_multiplier
                               ).validate()


def release_of(cfg: RunConfig) -> GaussianRelease | None:
    """The run's randomized release (None: devices upload samples of q(z|x))."""
    if cfg.release_noise_multiplier <= 0:
        return None
    return GaussianRelease(cfg.release_clip, cfg.release_noise_multiplier)


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
    """What devices are told in a DP run or one with randomized release (None otherwise):
    run id, delta, the central event, and for simulated devices where their ledgers live
    and their caps."""
    if cfg.dp_mode == "none" and release_of(cfg) is None:
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
    ids = device_ids_for_indices(url, cfg.device_indices)
    with session_scope(url) as session:
        rows = session.execute(select(Device.id, Device.epsilon_cap)
                               .where(Device.id.in_(list(ids.values()))))
        caps = {device_id: cap for device_id, cap in rows}
    return {index: float(cap) for index, i in ids.items() if (cap := caps.get(i)) is not None}
