"""The budget part of the contract: the plan the server sends in a DP run, and what a
device's own ledger says back.

In a DP run every message's instructions carry the `BudgetPlan` as `budget.*` keys; a
device's check-in answer carries its own ledger's total (`LedgerReport`) and, if its
ledger refuses the round, the reason under `DECLINED_KEY`. `planned_local_event` is the
one rule both sides use for what a local DP-SGD round costs, so the server reserves
exactly the event the device's trainer will report.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from privacy.accounting import DpEvent, EventKind
from privacy.accounting.events import check_delta
from privacy.checks import is_int, is_number
from privacy.wire.train import TrainConfig, sample_rate, steps_per_epoch

#: Prefix of the budget keys in a message's instructions record (DP runs only).
PREFIX = "budget."
#: A check-in answer's key when the device's own ledger says no to the round.
DECLINED_KEY = "budget-declined"


@dataclass(frozen=True)
class BudgetPlan:
    """What the server tells devices about a DP run's accounting (`budget.*` instructions).

    ``central_sample_rate`` / ``central_noise_multiplier`` are 0 without central DP;
    ``sim_*`` only matter to simulated devices (where their ledgers live, what cap a
    ledger is provisioned with); a real device's configuration always wins.
    """

    run_id: str
    delta: float
    central_sample_rate: float = 0.0
    central_noise_multiplier: float = 0.0
    sim_state_root: str = ""
    sim_bundles_dir: str = ""
    sim_caps: Mapping[int, float] = field(default_factory=dict)
    sim_default_cap: float = 0.0

    def central_event(self) -> DpEvent | None:
        if self.central_sample_rate <= 0:
            return None
        return DpEvent(self.central_sample_rate, self.central_noise_multiplier, 1,
                       EventKind.CENTRAL_DP_FEDAVG)

    def to_flat(self) -> dict[str, Any]:
        """`budget.*` keys, sent inside every message's instructions record."""
        flat = {"run-id": self.run_id, "delta": float(self.delta),
                "central-sample-rate": float(self.central_sample_rate),
                "central-noise-multiplier": float(self.central_noise_multiplier),
                "sim-state-root": self.sim_state_root, "sim-bundles-dir": self.sim_bundles_dir,
                "sim-caps": json.dumps({str(k): float(v) for k, v in self.sim_caps.items()}),
                "sim-default-cap": float(self.sim_default_cap)}
        return {f"{PREFIX}{key}": value for key, value in flat.items()}

    @classmethod
    def from_flat(cls, record: Mapping[str, Any]) -> BudgetPlan | None:
        """The plan in an instructions record; None when it has none (a run without DP)."""
        if f"{PREFIX}run-id" not in record:
            return None
        r = {k[len(PREFIX):]: v for k, v in record.items() if k.startswith(PREFIX)}
        try:
            return cls(run_id=str(r["run-id"]), delta=float(r["delta"]),
                       central_sample_rate=float(r["central-sample-rate"]),
                       central_noise_multiplier=float(r["central-noise-multiplier"]),
                       sim_state_root=str(r["sim-state-root"]),
                       sim_bundles_dir=str(r["sim-bundles-dir"]),
                       sim_caps={int(k): float(v) for k, v in json.loads(str(r["sim-caps"])).items()},
                       sim_default_cap=float(r["sim-default-cap"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed budget instructions from the server: {exc}") from exc


@dataclass(frozen=True)
class LedgerReport:
    """What a device reports at check-in: its own total, at its own delta."""

    epsilon: float
    delta: float
    events: int

    def __post_init__(self) -> None:
        if not is_number(self.epsilon) or math.isnan(self.epsilon) or self.epsilon < 0:
            raise ValueError(f"ledger_epsilon must be a number >= 0, got {self.epsilon!r}")
        object.__setattr__(self, "epsilon", float(self.epsilon))
        object.__setattr__(self, "delta", check_delta(self.delta))
        n: object = self.events  # typed int, but read from a peer's record: may be 3.0
        if isinstance(n, float) and n.is_integer():
            n = int(n)
        if not is_int(n) or n < 0:
            raise ValueError(f"ledger_events must be an int >= 0, got {self.events!r}")
        object.__setattr__(self, "events", int(n))

    def to_config(self) -> dict[str, float | int]:
        """Flat keys for a Flower ConfigRecord / MetricRecord."""
        return {"ledger_epsilon": self.epsilon, "ledger_delta": self.delta,
                "ledger_events": self.events}

    #: The record keys of a report (all three or none travel).
    KEYS = ("ledger_epsilon", "ledger_delta", "ledger_events")

    @classmethod
    def present_in(cls, record: Mapping[str, Any]) -> bool:
        """Whether `record` carries a report, even a partial one (which `from_config` then
        refuses, naming what is missing, rather than reading as "no report")."""
        return any(k in record for k in cls.KEYS)

    @classmethod
    def from_config(cls, record: Mapping[str, Any]) -> LedgerReport:
        missing = [k for k in cls.KEYS if k not in record]
        if missing:
            raise ValueError(f"device ledger report is missing {', '.join(missing)}")
        return cls(epsilon=record["ledger_epsilon"], delta=record["ledger_delta"],
                   events=record["ledger_events"])


def planned_local_event(train: TrainConfig, num_examples: int) -> DpEvent | None:
    """The DP-SGD event `fl_client.trainer.train_local` will report for `num_examples`
    clips (None without DP-SGD): every epoch's ceil(N / B) Poisson steps, empty ones too."""
    if not train.dp_sgd:
        return None
    steps = train.epochs * steps_per_epoch(num_examples, train.batch_size)
    return DpEvent(sample_rate(num_examples, train.batch_size), float(train.noise_multiplier),
                   steps, EventKind.LOCAL_DP_SGD)
