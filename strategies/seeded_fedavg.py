"""FedAvg with seeded, checkpointable client sampling over the devices that checked in.

Flower's `FedAvg.configure_train` samples from every connected node with the process-wide
`random` module, so two runs with the same seed sample differently and a resumed run
cannot redo the sampling it would have done. This subclass keeps its own
`random.Random(seed)`, samples only among the candidates it is given (the devices the
server admitted at check-in),
and exposes its RNG state so a checkpoint can restore it exactly.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

from privacy.wire.round_record import CentralDpRecord


class SeededFedAvg(FedAvg):
    """FedAvg whose sampling is a pure function of (seed, candidates, round history)."""

    def __init__(self, *, seed: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._rng = random.Random(seed)

    def sample(self, candidates: Sequence[int]) -> list[int]:
        """Draw `max(ceil(fraction * n), min_train_nodes)` distinct candidates (sorted input)."""
        pool = sorted(candidates)
        size = min(len(pool), max(math.ceil(len(pool) * self.fraction_train), self.min_train_nodes))
        return sorted(self._rng.sample(pool, size))

    def train_messages(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                       node_ids: Sequence[int]) -> list[Message]:
        """The round's train messages to `node_ids` (already sampled)."""
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return list(self._construct_messages(record, list(node_ids), MessageType.TRAIN))

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Flower's entry point: sample among the grid's nodes with our own RNG. fedmsr's
        round samples among the devices it admitted (`sample`, then `train_messages`)."""
        candidates = list(grid.get_node_ids())
        node_ids = self.sample(candidates)
        log(INFO, "configure_train: sampled %s of %s devices", len(node_ids), len(candidates))
        return self.train_messages(server_round, arrays, config, node_ids)

    def aggregate_secure(self, mean: np.ndarray, total_weight: int,
                         model: ArrayRecord, rounding_l2: float = 0.0) -> ArrayRecord:
        """The release of a securely aggregated round: the server learned only the weighted
        mean update (`mean`, over `total_weight`) and `model` = global + mean. FedAvg
        publishes `model` as it is; a DP strategy overrides this to noise the sum."""
        del mean, total_weight, rounding_l2
        return model

    def round_figures(self) -> CentralDpRecord | None:
        """The round's central DP figures for its history record (none without central DP)."""
        return None

    def state(self) -> dict[str, Any]:
        """JSON-able sampling state for checkpoints."""
        version, internal, gauss = self._rng.getstate()
        return {"rng": [version, list(internal), gauss]}

    def load_state(self, state: dict[str, Any]) -> None:
        version, internal, gauss = state["rng"]
        self._rng.setstate((version, tuple(internal), gauss))
