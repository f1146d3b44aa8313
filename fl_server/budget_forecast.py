"""What a run will charge each device's privacy budget, worked out before it starts.

`fedmsr run --dry-run` prints this forecast; a real DP run checks it once before its first
round and warns (it does not refuse: each round's charges are still checked against every
cap by the ledger when they are reserved, and a device that cannot afford a round is left
out of it, so the forecast is advice, the ledger is enforcement).

The forecast charges a device every release the run could make of it, as the ledger
would (docs/privacy-accounting.md): per round, local DP-SGD's
``(q = batch / its clips, sigma, epochs * ceil(clips / batch) steps)`` and central
DP-FedAvg's ``(q_client, sigma_central, 1 step)``; per collection, the randomized release
of ``--collect-clips`` clips. It assumes the device takes part in every round (what a
device risks, not what it is expected to spend). The events are the ones the planning
code behind `fedmsr budget plan` builds (`privacy.accounting.budget.plan_events`), and
the figures are the same accountant's: the reported (PLD) epsilon, and the ledger's own
`would_exceed` for "passes its cap".

A device's clips are known here only for the synthetic fleet (``days * clips_per_day``):
a device of a footage manifest or a deployed device counts its own at check-in, so its
local DP-SGD figures are left unknown (None).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from fl_server.config import RunConfig
from fl_server.dp_modes import central_params, release_of
from privacy.accounting import DpEvent, EventKind, epsilon, would_exceed
from privacy.accounting.budget import plan_events
from privacy.wire.train import sample_rate, steps_per_epoch


@dataclass(frozen=True)
class LocalPlan:
    """Local DP-SGD on a device holding `clips` clips: one round's sample rate and steps."""

    clips: int
    batch_size: int
    sample_rate: float
    steps_per_round: int

    @property
    def amplified(self) -> bool:
        """False at q = 1: every step sees every clip, no subsampling amplification."""
        return self.sample_rate < 1.0


@dataclass(frozen=True)
class DeviceForecast:
    """One device's planned charges for the whole run, against its cap."""

    name: str
    local: LocalPlan | None       # None: no DP-SGD, or clips unknown (counted at check-in)
    clips_known: bool
    epsilon: float | None         # this run alone (reported, PLD); None: not computable here
    spent: float                  # already charged (reported, PLD)
    epsilon_after: float | None   # spent composed with this run
    cap: float | None             # the device's cap, else the run's --epsilon-cap
    delta: float                  # what the figures are reported at
    passes_cap: bool              # the ledger's own test: spent + this run > cap

    @property
    def remaining(self) -> float | None:
        """cap - spent (epsilons do not add, so this is a guide; `passes_cap` decides)."""
        return None if self.cap is None else max(self.cap - self.spent, 0.0)


@dataclass(frozen=True)
class Forecast:
    """The run's planned charges per device (empty without DP)."""

    devices: tuple[DeviceForecast, ...]
    rounds: int
    collections: int

    @property
    def without_amplification(self) -> tuple[DeviceForecast, ...]:
        """Devices whose DP-SGD samples at q = 1."""
        return tuple(d for d in self.devices if d.local is not None and not d.local.amplified)

    @property
    def over_cap(self) -> tuple[DeviceForecast, ...]:
        return tuple(d for d in self.devices if d.passes_cap)


def synthetic_clips(cfg: RunConfig, deployed: bool = False) -> int | None:
    """Clips a device trains on when the server can know it: the synthetic fleet's
    training days; None for footage or deployed devices (counted at check-in)."""
    return None if cfg.dataset or deployed else cfg.days * cfg.clips_per_day


def local_plan(cfg: RunConfig, clips: int) -> LocalPlan:
    """Local DP-SGD on `clips` clips, as the trainer samples it (privacy.wire.train)."""
    return LocalPlan(clips, cfg.batch_size, sample_rate(clips, cfg.batch_size),
                     cfg.local_epochs * steps_per_epoch(clips, cfg.batch_size))


def planned_events(cfg: RunConfig, clips: int | None) -> tuple[DpEvent, ...] | None:
    """Every release the run could charge one device holding `clips` clips (None: local
    DP-SGD with unknown clips, so no total can be given)."""
    events: list[DpEvent] = []
    if cfg.dp_sgd:
        if clips is None:
            return None
        plan = local_plan(cfg, clips)
        events += plan_events(cfg.rounds, plan.sample_rate, cfg.noise_multiplier,
                              plan.steps_per_round, EventKind.LOCAL_DP_SGD)
    central = central_params(cfg)
    if central is not None:
        once = central.event()
        events += plan_events(cfg.rounds, once.sample_rate, once.noise_multiplier, 1,
                              EventKind.CENTRAL_DP_FEDAVG)
    release = release_of(cfg)
    collections = cfg.rounds // cfg.collect_every if cfg.collect_every else 0
    if release is not None and collections:
        events += [release.event(cfg.collect_clips)] * collections
    return tuple(events)


def charges_budgets(cfg: RunConfig) -> bool:
    """Whether the run charges any device's budget (a DP mode, or randomized release)."""
    return cfg.dp_mode != "none" or release_of(cfg) is not None


@dataclass(frozen=True)
class _Account:
    """What the ledger holds of a device (or nothing, without a registry)."""

    name: str
    history: tuple[DpEvent, ...]
    spent: float
    cap: float | None
    delta: float


def forecast(cfg: RunConfig, *, deployed: bool = False, exact: bool = True) -> Forecast:
    """Each device's planned charges. `cfg.device_indices` are the registry's devices
    (their ledgers and caps read, nothing written); None: the whole synthetic fleet, with
    no spend and the run's cap. `deployed`: real devices on a SuperLink (their clips
    unknown). `exact=False` skips the composed PLD figure of devices with a history (the
    verdict `passes_cap` is always computed, by the ledger's own test)."""
    collections = cfg.rounds // cfg.collect_every if cfg.collect_every else 0
    if not charges_budgets(cfg):
        return Forecast((), cfg.rounds, collections)
    clips = synthetic_clips(cfg, deployed)
    events = planned_events(cfg, clips)
    out = []
    for account in _accounts(cfg):
        run_eps = after = None
        passes = False
        if events is not None:
            run_eps = _epsilon(events, account.delta)
            if exact or not account.history:
                after = (_epsilon(account.history + events, account.delta) if account.history
                         else run_eps)
            if account.cap is not None:
                passes = would_exceed(list(account.history), list(events), account.cap,
                                      account.delta)
        local = local_plan(cfg, clips) if cfg.dp_sgd and clips is not None else None
        out.append(DeviceForecast(account.name, local, clips is not None, run_eps,
                                  account.spent, after, account.cap, account.delta, passes))
    return Forecast(tuple(out), cfg.rounds, collections)


@lru_cache(maxsize=64)
def _epsilon(events: tuple[DpEvent, ...], delta: float) -> float:
    """Reported epsilon, once per distinct history (most devices share one)."""
    return epsilon(events, delta)


def _accounts(cfg: RunConfig) -> Sequence[_Account]:
    if cfg.device_indices is None:
        return [_Account(f"device-{i}", (), 0.0, cfg.epsilon_cap, cfg.delta)
                for i in range(cfg.devices)]
    from fl_server import privacy_ledger
    from fl_server.registry.db import resolve_url
    from fl_server.registry.devices import device_ids_for_indices

    url = resolve_url()
    ids = device_ids_for_indices(url, cfg.device_indices)
    states = {s.device_id: s for s in privacy_ledger.budget_states(url, cfg.delta,
                                                                    ids.values())}
    out = []
    for index in cfg.device_indices:
        s = states[ids[index]]
        cap = s.epsilon_cap if s.epsilon_cap is not None else cfg.epsilon_cap
        out.append(_Account(s.name, tuple(e.event for e in s.events), s.epsilon, cap, s.delta))
    return out
