"""The training stage of a round: send the train messages, validate, aggregate.

Two implementations of one interface, chosen per round:

* `PlainAggregator`: every device's update reaches the server, is validated
  (`strategies.update_validation`) and aggregated by the strategy (FedAvg, a robust rule,
  or central DP-FedAvg);
* `SecureAggregator`: SecAgg+ (`strategies.secagg_workflow`); the server only ever sees
  the weighted mean update, and the strategy releases it (`aggregate_secure`: as it is,
  or noised under central DP). Any secure-aggregation error (too few devices left, a
  failed consistency check, a sum that does not decode or breaks the clipping bound)
  releases nothing: the round keeps the model and the run goes on.

Both return a `TrainOutcome`; the federation loop needs nothing else from either.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from flwr.app import ArrayRecord, Message
from flwr.serverapp import Grid

from fl_server.fault_points import fault_point, killing_after_push
from privacy.secagg.errors import SecAggError
from privacy.secagg.messages import RoundSetup
from privacy.wire.round_record import SecAggRecord
from strategies.messaging import send_and_collect
from strategies.secagg_workflow import SecAggParams, secure_train_round
from strategies.seeded_fedavg import SeededFedAvg

#: (sent train messages, their replies, the round's SecAgg setup or None) -> accepted replies.
Screen = Callable[[Sequence[Message], list[Message], RoundSetup | None], list[Message]]


@dataclass(frozen=True)
class TrainOutcome:
    """What the training stage produced."""

    #: The new global model, or None when there is none (see `aborted`, or too few replies).
    arrays: ArrayRecord | None
    #: Replies that count: accepted updates (plain), contributors (secure). Error replies
    #: of a plain round are included (they count as failed).
    replies: list[Message]
    #: The strategy's aggregated training metrics (None when it aggregated nothing).
    metrics: Mapping[str, Any] | None
    train_s: float
    aggregate_s: float
    secagg: SecAggRecord | None = None
    #: Why secure aggregation released nothing this round, else None.
    aborted: str | None = None


class Aggregator(Protocol):
    def train(self, grid: Grid, server_round: int, messages: Sequence[Message],
              devices: Mapping[int, int], arrays: dict[str, np.ndarray]) -> TrainOutcome:
        """Run the round's training on `messages` (to nodes of `devices`: node -> index)."""
        ...


class PlainAggregator:
    """Updates in the clear: collect, validate, aggregate in device order."""

    def __init__(self, strategy: SeededFedAvg, screen: Screen, timeout_s: float) -> None:
        self.strategy, self.screen, self.timeout_s = strategy, screen, timeout_s

    def train(self, grid: Grid, server_round: int, messages: Sequence[Message],
              devices: Mapping[int, int], arrays: dict[str, np.ndarray]) -> TrainOutcome:
        started = time.perf_counter()
        # Aggregate in device order, not arrival order: floating-point sums then do not
        # depend on which device finished first, so a seed gives the same model every run.
        replies = sorted(send_and_collect(killing_after_push(grid, server_round), messages,
                                          self.timeout_s),
                         key=lambda r: devices.get(r.metadata.src_node_id, -1))
        train_s = time.perf_counter() - started
        replies = self.screen(messages, replies, None)
        fault_point("aggregate", server_round)
        new, metrics = self.strategy.aggregate_train(server_round, replies)
        return TrainOutcome(new, replies, metrics, train_s,
                            time.perf_counter() - started - train_s)


class AbortedAggregator:
    """A secure round that cannot run (a draw too small to hide anything): nothing is sent,
    nothing released, the model stays. Never a plaintext fallback."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def train(self, grid: Grid, server_round: int, messages: Sequence[Message],
              devices: Mapping[int, int], arrays: dict[str, np.ndarray]) -> TrainOutcome:
        return TrainOutcome(None, [], {}, 0.0, 0.0, SecAggRecord(), aborted=self.reason)


class SecureAggregator:
    """SecAgg+: the devices train in its masked stage; the server learns the mean only."""

    def __init__(self, strategy: SeededFedAvg, params: SecAggParams, screen: Screen,
                 timeout_s: float, stage_timeout_s: float) -> None:
        self.strategy, self.params, self.screen = strategy, params, screen
        self.timeout_s, self.stage_timeout_s = timeout_s, stage_timeout_s

    def train(self, grid: Grid, server_round: int, messages: Sequence[Message],
              devices: Mapping[int, int], arrays: dict[str, np.ndarray]) -> TrainOutcome:
        started = time.perf_counter()
        try:
            secure = secure_train_round(
                grid, messages, dict(devices), arrays, self.params, self.timeout_s,
                self.stage_timeout_s,
                screen_masked=lambda sent, got, setup: self.screen(sent, got, setup))
        except SecAggError as exc:  # an abort, a refusal, a hostile input that does not
            # decode: no sum at all, this round keeps its model; the run goes on
            return TrainOutcome(None, [], {}, time.perf_counter() - started, 0.0,
                                SecAggRecord(), aborted=str(exc))
        result = secure.result
        new = self.strategy.aggregate_secure(result.mean, result.total_weight, secure.arrays,
                                             secure.rounding_l2)
        return TrainOutcome(
            new, secure.replies, secure.metrics, secure.train_s, secure.aggregate_s,
            SecAggRecord(len(result.dropped_after_sharing) + len(result.excluded),
                         secure.phases_s))
