"""The round history: one typed record per finished round.

The server writes a `RoundRecord` once per round, stage by stage (the probes, the
training outcome, the budget, secure aggregation, a representation collection), and
everything downstream reads it by attribute: `history.json` / `history.csv`, the
checkpoint, the metrics observer (`monitoring.observer`), the registry observer and the
CLI. It lives in the wire contract because monitoring may import only `privacy`.

On disk a record is one flat JSON object (`to_json`); the keys are the attribute names,
and the parts that exist only in some runs (DP budgets, central DP, a collection round)
are written only when present. `from_json` reads what `to_json` wrote, and keeps keys it
does not know (a newer writer's) so that a resume never drops them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class DeviceDpEvent:
    """A DP-SGD event one device reported for the round (charged by the budget ledger)."""

    device: int
    sample_rate: float
    noise_multiplier: float
    steps: int


@dataclass(frozen=True)
class CentralDpRecord:
    """Central DP-FedAvg in this round: population, draw, fixed denominator, noise std."""

    population: int
    drawn: int
    denominator: float | None
    noise_std: float


@dataclass(frozen=True)
class BudgetRecord:
    """What the round did to privacy budgets (all zero / empty in a run without DP)."""

    #: Devices that report MORE spend than the server recorded (should never happen).
    ledger_disagreements: int = 0
    #: Devices that report less (expected: reservations they never ran).
    ledger_device_reported_less: int = 0
    #: Device indices whose own ledger declined the round.
    budget_declined: tuple[int, ...] = ()
    #: Registry-backed DP runs only: devices the ledger reserved for, and those it refused.
    budget_reserved: int | None = None
    budget_refused: tuple[str, ...] | None = None
    central_dp: CentralDpRecord | None = None


@dataclass(frozen=True)
class SecAggRecord:
    """Secure aggregation in this round (absent without it)."""

    #: Devices lost after sharing keys, or excluded by the protocol's checks.
    dropouts: int = 0
    #: Wall time of each protocol stage: setup, share_keys, collect_masked, unmask.
    phases_s: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class LeakageCrossed:
    """The attacks whose accumulation gain reached the run's alert level in a collection
    (none: the collection was not flagged), each with its gain max_k PL(k) - PL(1)."""

    alert: float
    attacks: Mapping[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"alert": self.alert, "attacks": dict(self.attacks)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LeakageCrossed:
        return cls(float(data["alert"]),
                   {str(k): float(v) for k, v in dict(data.get("attacks") or {}).items()})


@dataclass(frozen=True)
class ReleaseEpsilon:
    """The fleet's accumulated randomized-release epsilon after a collection with a
    randomized release: PLD at `delta` over each device's releases (every run), max and
    mean over the run's devices (those never released count 0). Fleet figures only."""

    max: float
    mean: float
    delta: float
    devices: int

    def to_json(self) -> dict[str, Any]:
        return {"max": self.max, "mean": self.mean, "delta": self.delta,
                "devices": self.devices}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReleaseEpsilon:
        return cls(float(data["max"]), float(data["mean"]), float(data["delta"]),
                   int(data["devices"]))


@dataclass(frozen=True)
class RoundRecord:
    """One finished round (see the module docstring for how it is written and read)."""

    round: int
    # Server-side probes on the held-out set (privacy.evaluation).
    loss: float
    kl_bits: float
    utility_acc: float
    identity_acc: float
    utility_chance: float
    identity_chance: float
    # Device-reported (None under DP, where devices keep these to themselves).
    train_loss: float | None
    train_kl_bits: float | None
    device_kl_bits: float | None
    device_activity_acc: float | None
    # Who took part.
    sampled: int
    responded: int
    failed: int
    rejected: Mapping[str, int]
    #: One entry per rejected reply: device, node, reason, detail.
    rejected_devices: tuple[Mapping[str, Any], ...]
    devices: tuple[int, ...]
    dp_events: tuple[DeviceDpEvent, ...]
    #: Why no model came out of the round (secure aggregation aborted), else None.
    aborted: str | None
    # Model-array payload bytes, both directions (plus upload traffic in collection rounds).
    bytes_sent: int
    bytes_received: int
    # Timings (seconds).
    checkin_s: float
    train_phase_s: float
    aggregate_s: float
    client_train_s_sum: float
    client_train_s_max: float
    eval_s: float
    wall_s: float
    budget: BudgetRecord = BudgetRecord()
    secagg: SecAggRecord | None = None
    #: A representation-collection round's figures (`fl_server.collection`), else empty.
    collection: Mapping[str, Any] = field(default_factory=dict)
    #: Keys this build does not know, kept from the file it was read from.
    extra: Mapping[str, Any] = field(default_factory=dict)

    def with_collection(self, figures: Mapping[str, Any], bytes_sent: int,
                        bytes_received: int) -> RoundRecord:
        """This record after a collection: its figures, and its traffic added."""
        return dataclasses.replace(self, collection={**self.collection, **figures},
                                   bytes_sent=self.bytes_sent + bytes_sent,
                                   bytes_received=self.bytes_received + bytes_received)

    # -- a collection round's figures, typed --------------------------------------------

    @property
    def leakage_crossed(self) -> LeakageCrossed | None:
        """Which attacks crossed the alert level (None: no leakage curve this round)."""
        data = self.collection.get("leakage_crossed")
        return LeakageCrossed.from_json(data) if data else None

    @property
    def release_epsilon(self) -> ReleaseEpsilon | None:
        """The fleet's release epsilon (None: no randomized release this round)."""
        data = self.collection.get("release_epsilon")
        return ReleaseEpsilon.from_json(data) if data else None

    @property
    def linkage_auc(self) -> tuple[int, float] | None:
        """(largest k, cross-day linkage AUC at that k), None: not measured this round."""
        curve = (self.collection.get("leakage") or {}).get("linkage_auc") or {}
        if not curve:
            return None
        k = max(curve, key=int)
        return int(k), float(curve[k])

    # -- on disk ------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The flat JSON object of history.json and the checkpoint."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name in _NESTED:
                continue
            value = getattr(self, f.name)
            if f.name == "dp_events":
                value = [dataclasses.asdict(e) for e in value]
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[f.name] = value
        budget = self.budget
        out["ledger_disagreements"] = budget.ledger_disagreements
        out["ledger_device_reported_less"] = budget.ledger_device_reported_less
        out["budget_declined"] = list(budget.budget_declined)
        if budget.budget_reserved is not None:
            out["budget_reserved"] = budget.budget_reserved
        if budget.budget_refused is not None:
            out["budget_refused"] = list(budget.budget_refused)
        if budget.central_dp is not None:
            out["central_dp"] = dataclasses.asdict(budget.central_dp)
        out["secagg_dropouts"] = self.secagg.dropouts if self.secagg else 0
        if self.secagg is not None:
            out["secagg_phases_s"] = dict(self.secagg.phases_s)
        out.update(self.collection)
        out.update({k: v for k, v in self.extra.items() if k not in out})
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RoundRecord:
        """Read a record `to_json` wrote; ValueError naming a missing key."""
        known = {f.name for f in dataclasses.fields(cls)} - _NESTED
        missing = sorted(k for k in _REQUIRED if k not in data)
        if missing:
            raise ValueError(f"round record is missing {', '.join(missing)}")
        kwargs: dict[str, Any] = {k: data[k] for k in known if k in data}
        kwargs["rejected"] = dict(data.get("rejected", {}))
        kwargs["rejected_devices"] = tuple(data.get("rejected_devices", ()))
        kwargs["devices"] = tuple(int(d) for d in data["devices"])
        kwargs["dp_events"] = tuple(DeviceDpEvent(**e) for e in data.get("dp_events") or ())
        for optional in ("aborted", "train_loss", "train_kl_bits", "device_kl_bits",
                         "device_activity_acc"):
            kwargs.setdefault(optional, None)
        kwargs.setdefault("bytes_sent", 0)
        kwargs.setdefault("bytes_received", 0)
        central = data.get("central_dp")
        kwargs["budget"] = BudgetRecord(
            ledger_disagreements=int(data.get("ledger_disagreements", 0)),
            ledger_device_reported_less=int(data.get("ledger_device_reported_less", 0)),
            budget_declined=tuple(data.get("budget_declined", ())),
            budget_reserved=data.get("budget_reserved"),
            budget_refused=None if data.get("budget_refused") is None
            else tuple(data["budget_refused"]),
            central_dp=None if central is None else CentralDpRecord(**central))
        if "secagg_phases_s" in data:
            kwargs["secagg"] = SecAggRecord(int(data.get("secagg_dropouts", 0)),
                                            dict(data["secagg_phases_s"]))
        kwargs["collection"] = {k: data[k] for k in COLLECTION_KEYS if k in data}
        handled = known | _BUDGET_KEYS | {"secagg_dropouts", "secagg_phases_s"} \
            | set(COLLECTION_KEYS)
        kwargs["extra"] = {k: v for k, v in data.items() if k not in handled}
        return cls(**kwargs)


#: Keys a collection round adds (`fl_server.collection`).
COLLECTION_KEYS = ("collection", "information_bits", "information_flagged", "leakage",
                   "leakage_skipped", "leakage_gain", "leakage_flagged", "leakage_crossed",
                   "leakage_chance", "release_epsilon", "collect_s", "unlinkable", "invariance")
_NESTED = frozenset({"budget", "secagg", "collection", "extra"})
_BUDGET_KEYS = frozenset({"ledger_disagreements", "ledger_device_reported_less",
                          "budget_declined", "budget_reserved", "budget_refused", "central_dp"})
_REQUIRED = ("round", "loss", "kl_bits", "utility_acc", "identity_acc", "utility_chance",
             "identity_chance", "sampled", "responded", "failed", "devices", "checkin_s", "train_phase_s", "aggregate_s",
             "client_train_s_sum", "client_train_s_max", "eval_s", "wall_s")
