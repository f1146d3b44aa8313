"""The per-run constants every round's instructions are built from."""

from __future__ import annotations

from dataclasses import dataclass, replace

from flwr.app import ConfigRecord

from fl_server.config import RunConfig
from privacy.clips import ACTIVITIES
from privacy.encoder_config import EncoderConfig
from privacy.synthetic import FleetSpec
from privacy.wire.budget import BudgetPlan
from privacy.wire.instructions import Instructions
from privacy.wire.train import TrainConfig


@dataclass(frozen=True)
class ReplyWaits:
    """How long a round waits for what is not training: the fleet to connect, and the small
    replies (check-in, evaluation, upload). Training has its own deadline
    (`RunConfig.round_timeout_s`)."""

    fleet_s: float = 60.0
    reply_s: float = 120.0


@dataclass(frozen=True)
class Plan:
    """Fleet, model and training of a run, fixed at its start (the same every round).

    `update_clip` is central DP's device-side clip of the model update (0 = none) and
    `budget` what devices' own ledgers are told in a DP run (None without DP).
    """

    fleet: FleetSpec
    model: EncoderConfig
    train: TrainConfig
    train_days: int
    update_clip: float = 0.0
    budget: BudgetPlan | None = None
    dataset: str = ""
    utility_label: str = ""
    waits: ReplyWaits = ReplyWaits()

    @classmethod
    def from_config(cls, cfg: RunConfig, budget: BudgetPlan | None = None) -> Plan:
        """The fleet films `days` training days then `eval_days` held-out days."""
        return cls(
            train_days=cfg.days,
            fleet=FleetSpec(seed=cfg.seed, num_devices=cfg.devices, days=cfg.days + cfg.eval_days,
                            clips_per_day=cfg.clips_per_day, frames=cfg.frames,
                            image_size=cfg.image_size),
            model=EncoderConfig(image_size=cfg.image_size, frames=cfg.frames,
                                latent_dim=cfg.latent_dim, width=cfg.width,
                                num_activities=_num_classes(cfg)),
            train=TrainConfig(epochs=cfg.local_epochs, batch_size=cfg.batch_size,
                              lr=cfg.learning_rate, beta=cfg.beta, utility=cfg.utility,
                              dp_sgd=cfg.dp_sgd, noise_multiplier=cfg.noise_multiplier,
                              clip_norm=cfg.clip_norm, seed=cfg.seed,
                              invariance_weight=cfg.invariance_weight),
            update_clip=cfg.central_clip_norm if cfg.central_dp else 0.0,
            budget=budget,
            dataset=cfg.dataset,
            utility_label=cfg.utility_label,
            waits=ReplyWaits(cfg.fleet_wait_s, cfg.reply_timeout_s),
        )

    def instructions(self, server_round: int, invariance: bool = False) -> ConfigRecord:
        """The round's instructions record (with the `budget.*` keys in a DP run).

        `invariance`: the message carries the server's device discriminator, so the run's
        invariance weight applies; without one (no collection yet, and every message that
        is not a train message) the weight sent is 0."""
        train = self.train if invariance else replace(self.train, invariance_weight=0.0)
        record = Instructions(server_round, self.fleet, self.model, train,
                              self.train_days, self.update_clip, self.dataset,
                              self.utility_label).to_record()
        if self.budget is not None:
            record.update(self.budget.to_flat())
        return record


def _num_classes(cfg: RunConfig) -> int:
    """The utility head's classes: the synthetic fleet's activities, or the values of the
    dataset's utility label (its vocabulary, which every device reads from the same
    manifest; a self-supervised run keeps an unused two-class head)."""
    if not cfg.dataset:
        return len(ACTIVITIES)
    if not cfg.utility_label:
        return 2
    from privacy.footage_manifest import read_manifest

    return len(read_manifest(cfg.dataset).vocabulary.columns[cfg.utility_label])
