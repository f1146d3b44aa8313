"""Robust aggregation: Flower's FedMedian, FedTrimmedAvg, Krum, MultiKrum and Bulyan, seeded.

`fedmsr run --aggregation fedavg|median|trimmed-mean|krum|multikrum|bulyan`. Each option
is Flower 1.42's own strategy (`flwr.serverapp.strategy`) with fedmsr's seeded,
checkpointable sampling (`SeededFedAvg`) in front: the aggregation arithmetic is
Flower's, not a re-implementation. What this module adds around it:

* **Flower's aggregators consume their input** (FedMedian and Bulyan pop the arrays out
  of the replies); they get shallow copies, so the round can still count the bytes it
  received and read the replies afterwards.
* **Metric keys**: Flower refuses to aggregate replies whose metric records have
  different keys and would lose the whole round to one odd reply; the copies carry only
  the metric keys every accepted reply has.
* **Enough updates, or no model**: each rule tolerates `f` Byzantine devices
  (`--byzantine`) only with enough updates: median 2f+1, trimmed mean as many as makes
  ``floor(beta * n) >= f``, Krum and Multi-Krum 2f+3, Bulyan 4f+3. With fewer accepted
  updates the round fails with :class:`TooFewUpdates` rather than silently averaging.
* **Multi-Krum** keeps the n - f best-scored updates (Flower's default would keep one).
* **Dtypes**: the aggregate is cast back to the replies' dtypes, so the global model
  keeps its dtypes round after round (the update validator demands them).

Replies arrive in device order (the federation sorts them), which makes every rule here
deterministic: a seed gives a bit-identical model. Interaction with secure aggregation
and DP: `fl_server.config` refuses anything but fedavg with secure aggregation (only the
sum is revealed) and with central DP (outside its sensitivity analysis); see
docs/robustness.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, cast

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import Bulyan, FedMedian, FedTrimmedAvg, Krum, MultiKrum

from strategies.seeded_fedavg import SeededFedAvg

AGGREGATIONS = ("fedavg", "median", "trimmed-mean", "krum", "multikrum", "bulyan")
DEFAULT_TRIM_FRACTION = 0.2


class TooFewUpdates(RuntimeError):
    """A robust rule cannot tolerate its `f` Byzantine devices with this few updates."""


def required_updates(aggregation: str, byzantine: int, trim_fraction: float) -> int:
    """The fewest accepted updates with which `aggregation` tolerates `byzantine` devices."""
    f = byzantine
    if aggregation == "fedavg":
        return 1
    if aggregation == "median":
        return 2 * f + 1
    if aggregation == "trimmed-mean":
        if f == 0:
            return 1
        if not 0 < trim_fraction < 0.5:
            raise ValueError(f"trim fraction must be in (0, 0.5), got {trim_fraction}")
        n = math.ceil(f / trim_fraction)
        while math.floor(trim_fraction * n) < f:  # guard against float rounding
            n += 1
        return max(n, 2 * f + 1)
    if aggregation in ("krum", "multikrum"):
        return 2 * f + 3
    if aggregation == "bulyan":
        return 4 * f + 3
    raise ValueError(f"unknown aggregation {aggregation!r}; one of {', '.join(AGGREGATIONS)}")


class _Robust:
    """Mixin placed before a Flower strategy: copies, common metric keys, a minimum count."""

    aggregation = "fedavg"
    byzantine = 0
    trim_fraction = DEFAULT_TRIM_FRACTION

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = [r for r in replies if not r.has_error()]
        if not replies:
            return None, None
        needed = required_updates(self.aggregation, self.byzantine, self.trim_fraction)
        if len(replies) < needed:
            raise TooFewUpdates(
                f"round {server_round}: {self.aggregation} tolerating {self.byzantine} "
                f"Byzantine device(s) needs at least {needed} accepted updates, got "
                f"{len(replies)}")
        self._before(len(replies))
        dtypes = {name: np.dtype(array.dtype) for name, array in _array_record(replies[0]).items()}
        arrays, metrics = super().aggregate_train(  # type: ignore[misc]
            server_round, _copies(replies))
        if arrays is None:
            return None, metrics
        return ArrayRecord({name: array if np.dtype(array.dtype) == dtypes[name] else Array(
            np.ascontiguousarray(array.numpy().astype(dtypes[name])))
            for name, array in arrays.items()}), metrics

    def _before(self, n: int) -> None:
        """Per-round set-up from the number of updates (Multi-Krum's selection size)."""


class RobustFedAvg(_Robust, SeededFedAvg):
    """Plain weighted FedAvg (Flower's), behind the same copies and checks."""


class RobustMedian(_Robust, SeededFedAvg, FedMedian):
    aggregation = "median"


class RobustTrimmedMean(_Robust, SeededFedAvg, FedTrimmedAvg):
    aggregation = "trimmed-mean"


class RobustKrum(_Robust, SeededFedAvg, Krum):
    aggregation = "krum"


class RobustMultiKrum(_Robust, SeededFedAvg, MultiKrum):
    aggregation = "multikrum"

    def _before(self, n: int) -> None:
        self.num_nodes_to_select = max(1, n - self.num_malicious_nodes)


class RobustBulyan(_Robust, SeededFedAvg, Bulyan):
    aggregation = "bulyan"


_CLASSES: dict[str, type[SeededFedAvg]] = {
    "fedavg": RobustFedAvg, "median": RobustMedian, "trimmed-mean": RobustTrimmedMean,
    "krum": RobustKrum, "multikrum": RobustMultiKrum, "bulyan": RobustBulyan,
}


def robust_strategy(aggregation: str, *, seed: int, byzantine: int = 0,
                    trim_fraction: float = DEFAULT_TRIM_FRACTION, **kwargs: Any) -> SeededFedAvg:
    """The seeded strategy for `aggregation`; `kwargs` go to Flower's FedAvg constructor."""
    if aggregation not in _CLASSES:
        raise ValueError(f"unknown aggregation {aggregation!r}; one of {', '.join(AGGREGATIONS)}")
    extra: dict[str, Any] = {}
    if aggregation == "trimmed-mean":
        extra["beta"] = trim_fraction
    if aggregation in ("krum", "multikrum", "bulyan"):
        extra["num_malicious_nodes"] = byzantine
    strategy = _CLASSES[aggregation](seed=seed, **kwargs, **extra)
    robust = cast(_Robust, strategy)
    robust.byzantine, robust.trim_fraction = byzantine, trim_fraction
    return strategy


def _array_record(reply: Message) -> ArrayRecord:
    return next(iter(reply.content.array_records.values()))


def _copies(replies: list[Message]) -> list[Message]:
    """Fresh messages with copies of each reply's records (Flower's aggregators consume
    theirs), metric records cut to the keys every reply has."""
    common = set.intersection(*(set(_metric_record(r)) for r in replies))
    out = []
    for reply in replies:
        content = RecordDict()
        for key, record in reply.content.array_records.items():
            content[key] = ArrayRecord(dict(record.items()))
        for key, metrics in reply.content.metric_records.items():
            content[key] = MetricRecord({k: v for k, v in metrics.items() if k in common})
        out.append(Message(content=content, dst_node_id=reply.metadata.src_node_id,
                           message_type=MessageType.TRAIN))
    return out


def _metric_record(reply: Message) -> MetricRecord:
    return next(iter(reply.content.metric_records.values()))
