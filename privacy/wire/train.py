"""The training half of a round's instructions: what a device's local round does.

`TrainConfig` travels in every train message (`privacy.wire.instructions`); the device's
trainer (`fl_client.trainer`) runs it and the server plans budgets from it
(`privacy.wire.budget.planned_local_event`). It is plain data and imports no ML
framework, so a check-in answer or a budget plan costs no torch import.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from privacy.checks import is_finite, is_int

#: The encoder's utility objectives (privacy.vib): supervised activity head, per-clip
#: self-supervised view invariance, or both.
UTILITIES = ("supervised", "ssl", "both")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
    batch_size: int = 16
    lr: float = 2e-3
    beta: float = 0.01  # VIB weight
    utility: str = "supervised"  # one of UTILITIES
    dp_sgd: bool = False
    noise_multiplier: float = 1.0
    clip_norm: float = 1.0
    seed: int = 0
    #: Weight of the identity-invariance penalty against the device discriminator the
    #: server ships with the global model (privacy.identity_adversary); 0 = off. A round
    #: with a weight > 0 must come with a discriminator.
    invariance_weight: float = 0.0

    def __post_init__(self) -> None:
        validate_train_config(self)


def validate_train_config(cfg: TrainConfig) -> None:
    """ValueError naming the first bad field of ``cfg``."""
    if not is_int(cfg.epochs) or cfg.epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {cfg.epochs!r}")
    if not is_int(cfg.batch_size) or cfg.batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {cfg.batch_size!r}")
    if not is_finite(cfg.lr) or cfg.lr <= 0:
        raise ValueError(f"lr must be a finite number > 0, got {cfg.lr!r}")
    if not is_finite(cfg.beta) or cfg.beta < 0:
        raise ValueError(f"beta must be a finite number >= 0, got {cfg.beta!r}")
    if cfg.utility not in UTILITIES:
        raise ValueError(f"utility must be one of {UTILITIES}, got {cfg.utility!r}")
    if not isinstance(cfg.dp_sgd, (bool, np.bool_)):
        raise ValueError(f"dp_sgd must be a bool, got {cfg.dp_sgd!r}")  # noqa: TRY004
    if not is_finite(cfg.noise_multiplier):
        raise ValueError(f"noise_multiplier must be a finite number, got {cfg.noise_multiplier!r}")
    if not is_finite(cfg.clip_norm):
        raise ValueError(f"clip_norm must be a finite number, got {cfg.clip_norm!r}")
    if cfg.dp_sgd and cfg.noise_multiplier <= 0:
        raise ValueError(
            f"noise_multiplier must be > 0 with dp_sgd (sigma=0 gives no privacy), "
            f"got {cfg.noise_multiplier!r}"
        )
    if cfg.dp_sgd and cfg.clip_norm <= 0:
        raise ValueError(f"clip_norm must be > 0 with dp_sgd, got {cfg.clip_norm!r}")
    if not is_finite(cfg.invariance_weight) or cfg.invariance_weight < 0:
        raise ValueError(f"invariance_weight must be a finite number >= 0, got {cfg.invariance_weight!r}")
    if not is_int(cfg.seed) or cfg.seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {cfg.seed!r}")


def sample_rate(num_examples: int, batch_size: int) -> float:
    """Poisson sampling rate: ``batch_size / N``, capped at 1 (no amplification)."""
    return min(1.0, batch_size / num_examples)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    return math.ceil(num_examples / batch_size)
