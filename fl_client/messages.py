"""What the server and a device say to each other, as plain data.

The device side owns the format (a device build must not need the server), so the
server imports these builders from here. Every instruction the ClientApp acts on travels
in the message's ConfigRecord: the ClientApp keeps no state between messages, which is
what lets a run resume on any SuperNode after a crash.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from flwr.app import ConfigRecord

from fl_client.synthetic import FleetSpec
from fl_client.trainer import TrainConfig
from privacy.dp_event import PoissonGaussianEvent
from privacy.encoder import EncoderConfig

CHECKIN_ACTION = "checkin"
ARRAYS_KEY = "arrays"
CONFIG_KEY = "config"
METRICS_KEY = "metrics"
DP_EVENT_KEY = "dp_event"
DEVICE_KEY = "device"
WEIGHT_KEY = "num-examples"


@dataclass(frozen=True)
class Instructions:
    """One round's instructions to a device: which round, which data, how to train."""

    server_round: int
    fleet: FleetSpec
    model: EncoderConfig
    train: TrainConfig
    #: The device trains on days [0, train_days); later days of `fleet` are evaluation days.
    train_days: int

    def to_record(self) -> ConfigRecord:
        flat: dict[str, Any] = {"server-round": self.server_round, "train-days": self.train_days}
        for prefix, part in (("fleet", self.fleet), ("model", self.model), ("train", self.train)):
            for key, value in dataclasses.asdict(part).items():
                flat[f"{prefix}.{key}"] = value
        return ConfigRecord(flat)

    @classmethod
    def from_record(cls, record: ConfigRecord) -> Instructions:
        """Rebuild and validate; a missing or mistyped key raises ValueError naming it."""
        parts: dict[str, dict[str, Any]] = {"fleet": {}, "model": {}, "train": {}}
        for key, value in record.items():
            prefix, _, name = key.partition(".")
            if prefix in parts:
                parts[prefix][name] = value
        # Every field must be sent: a missing one must not silently take a default.
        for prefix, kind in (("fleet", FleetSpec), ("model", EncoderConfig), ("train", TrainConfig)):
            missing = sorted({f.name for f in dataclasses.fields(kind)} - set(parts[prefix]))
            if missing:
                raise ValueError(f"malformed instructions from the server: missing "
                                 f"{', '.join(f'{prefix}.{m}' for m in missing)}")
        try:
            instructions = cls(
                server_round=int(record["server-round"]),
                fleet=FleetSpec(**parts["fleet"]),
                model=EncoderConfig(**parts["model"]),
                train=TrainConfig(**parts["train"]),
                train_days=int(record["train-days"]),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed instructions from the server: {exc}") from exc
        if not 0 < instructions.train_days < instructions.fleet.days:
            raise ValueError(f"malformed instructions from the server: train-days "
                             f"{instructions.train_days} must be in 1..{instructions.fleet.days - 1}")
        return instructions

    def days(self, split: str) -> range:
        """Training days, or the held-out days after them."""
        if split == "train":
            return range(self.train_days)
        return range(self.train_days, self.fleet.days)


def dp_event_to_record(event: PoissonGaussianEvent) -> ConfigRecord:
    return ConfigRecord(event.to_dict())


def dp_event_from_record(record: ConfigRecord) -> PoissonGaussianEvent:
    return PoissonGaussianEvent.from_dict(dict(record))
