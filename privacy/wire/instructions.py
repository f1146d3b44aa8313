"""A round's instructions to a device, as one ConfigRecord.

Every instruction the ClientApp acts on travels in the message's ConfigRecord
(`keys.CONFIG_KEY`): the ClientApp keeps no state between messages, which is what lets a
run resume on any SuperNode after a crash. A device rebuilds and validates them with
`Instructions.from_record`; a missing key is an error, never a silent default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flwr.app import ArrayRecord, ConfigRecord

from privacy.encoder_config import EncoderConfig
from privacy.synthetic import FleetSpec
from privacy.wire.arrays import arrays_of, record_of
from privacy.wire.keys import DISCRIMINATOR_KEY, ECHO_KEYS
from privacy.wire.records import config_float, config_int, config_str
from privacy.wire.train import TrainConfig

if TYPE_CHECKING:  # the discriminator is torch code: a check-in never loads it
    from privacy.identity_adversary import Discriminator


@dataclass(frozen=True)
class Instructions:
    """One round's instructions to a device: which round, which data, how to train."""

    server_round: int
    fleet: FleetSpec
    model: EncoderConfig
    train: TrainConfig
    #: The device trains on days [0, train_days); later days of `fleet` are evaluation days.
    train_days: int
    #: Central DP-FedAvg: clip the model update (new - global, all arrays) to this L2 norm
    #: on the device before it leaves (fl_client/device_budget.py); 0 = no clipping.
    update_clip: float = 0.0
    #: A simulation over a footage manifest: its path (the device plays the manifest device
    #: at its index; a real device never lets the server choose its footage). "" = the
    #: synthetic fleet.
    dataset: str = ""
    #: The manifest label column supervised training uses ("" with `dataset`: self-supervised).
    utility_label: str = ""

    def to_record(self) -> ConfigRecord:
        flat: dict[str, Any] = {"server-round": self.server_round, "train-days": self.train_days,
                                "update-clip": float(self.update_clip),
                                "dataset": self.dataset, "utility-label": self.utility_label}
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
            server_round = config_int(record, "server-round")
            train_days = config_int(record, "train-days")
            update_clip = config_float(record, "update-clip")
            dataset = config_str(record, "dataset")
            utility_label = config_str(record, "utility-label")
        except (KeyError, ValueError) as exc:
            raise ValueError(f"malformed instructions from the server: {exc}") from exc
        try:
            instructions = cls(
                server_round=server_round,
                fleet=FleetSpec(**parts["fleet"]),
                model=EncoderConfig(**parts["model"]),
                train=TrainConfig(**parts["train"]),
                train_days=train_days,
                update_clip=update_clip,
                dataset=dataset,
                utility_label=utility_label,
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed instructions from the server: {exc}") from exc
        if not 0 < instructions.train_days < instructions.fleet.days:
            raise ValueError(f"malformed instructions from the server: train-days "
                             f"{instructions.train_days} must be in 1..{instructions.fleet.days - 1}")
        if not 0 <= instructions.update_clip < float("inf"):
            raise ValueError(f"malformed instructions from the server: update-clip "
                             f"{instructions.update_clip} must be a finite number >= 0")
        return instructions

    def days(self, split: str) -> range:
        """Training days, or the held-out days after them."""
        if split == "train":
            return range(self.train_days)
        return range(self.train_days, self.fleet.days)


def round_echo(config: ConfigRecord) -> dict[str, Any]:
    """What a train reply echoes of the train message's config (whichever keys it has)."""
    return {key: config[key] for key in ECHO_KEYS if key in config}


def discriminator_record(discriminator: Discriminator) -> ArrayRecord:
    """The frozen device discriminator as the train message's optional ArrayRecord."""
    return record_of(discriminator.to_arrays())


def discriminator_of(record: ArrayRecord | None, train: TrainConfig) -> Discriminator | None:
    """The train message's discriminator (its optional `DISCRIMINATOR_KEY` record, None if
    absent): required when ``train.invariance_weight > 0``, refused otherwise (a record the
    instructions do not use makes the message malformed)."""
    if train.invariance_weight == 0:
        if record is not None:
            raise ValueError(f"malformed instructions from the server: a {DISCRIMINATOR_KEY} "
                             "record with train.invariance_weight 0")
        return None
    if record is None:
        raise ValueError(f"malformed instructions from the server: train.invariance_weight "
                         f"{train.invariance_weight:g} without a {DISCRIMINATOR_KEY} record")
    if not isinstance(record, ArrayRecord):
        raise ValueError(f"malformed instructions from the server: {DISCRIMINATOR_KEY} must be "  # noqa: TRY004
                         f"an ArrayRecord, got {type(record).__name__}")
    from privacy.identity_adversary import Discriminator  # noqa: PLC0415 - torch, on use

    try:
        return Discriminator.from_arrays(arrays_of(record))
    except ValueError as exc:
        raise ValueError(f"malformed instructions from the server: {exc}") from exc
