"""The devices' own evaluation of a new global model on their held-out days.

Only weighted means of scalars come back (rate, activity accuracy); the representations
stay on the devices. Skipped in DP runs: these scalars are un-noised functions of private
clips (and a DP device declines the message anyway).
"""

from __future__ import annotations

import numpy as np
from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fl_server.round_plan import Plan
from privacy.wire.arrays import record_of
from privacy.wire.keys import ACTIVITY_CLIPS_KEY, ARRAYS_KEY, CONFIG_KEY, METRICS_KEY
from privacy.wire.records import metric_float, metric_record
from strategies.messaging import send_and_collect
from strategies.seeded_fedavg import SeededFedAvg


def federated_evaluate(grid: Grid, plan: Plan, strategy: SeededFedAvg, server_round: int,
                       arrays: dict[str, np.ndarray], node_ids: list[int]) -> dict[str, float]:
    """The weighted means the devices report (empty when none was asked or none answered)."""
    if not node_ids:
        return {}
    content = RecordDict({ARRAYS_KEY: record_of(arrays),
                          CONFIG_KEY: plan.instructions(server_round)})
    messages = [Message(content=content, message_type=MessageType.EVALUATE, dst_node_id=node)
                for node in node_ids]
    replies = send_and_collect(grid, messages, plan.waits.reply_s)
    metrics = strategy.aggregate_evaluate(server_round, replies)
    out = {} if metrics is None else {k: metric_float(metrics, k) for k in metrics}
    out.pop(ACTIVITY_CLIPS_KEY, None)
    # A device without the utility label reports no accuracy: the mean is over the devices
    # that do, weighted by their labelled clips (a mean over every reply's clips would count
    # the unlabelled devices as wrong).
    accuracy = labelled_mean(replies)
    if accuracy is None:
        out.pop("activity_acc", None)
    else:
        out["activity_acc"] = accuracy
    return out



def labelled_mean(replies: list[Message]) -> float | None:
    """The activity accuracy over every labelled clip the answering devices hold."""
    total = correct = 0.0
    for reply in replies:
        if reply.has_error() or METRICS_KEY not in reply.content:
            continue
        try:
            record = metric_record(reply.content, METRICS_KEY)
            if "activity_acc" not in record or ACTIVITY_CLIPS_KEY not in record:
                continue
            clips, acc = metric_float(record, ACTIVITY_CLIPS_KEY), metric_float(record, "activity_acc")
        except (KeyError, TypeError, ValueError):
            continue  # a malformed reply counts for nothing
        if clips > 0 and 0.0 <= acc <= 1.0:
            total, correct = total + clips, correct + clips * acc
    return correct / total if total else None
