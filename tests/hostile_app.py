"""A test-only ClientApp whose devices misbehave on purpose (never used in production).

It wraps the production handlers of `fl_client.handlers` and, for the devices named in
the `FEDMSR_TEST_HOSTILE` environment variable (`"1:nan,2:shape,5:replay"`), changes the
honest train reply in one way. Only this module reads that variable.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fl_client import handlers as honest
from fl_client.checkin_handler import checkin
from fl_client.node import device_index
from privacy.wire.keys import ARRAYS_KEY, CHECKIN_ACTION, DEVICE_KEY, METRICS_KEY, WEIGHT_KEY

ENV = "FEDMSR_TEST_HOSTILE"
REPLAY_STATE = "hostile-replay"

app = ClientApp()
app.query(CHECKIN_ACTION)(checkin)
app.evaluate()(honest.evaluate)


def behaviours() -> dict[int, str]:
    spec = os.environ.get(ENV, "")
    return {int(d): kind for d, kind in (item.split(":") for item in spec.split(",") if item)}


@app.train()
def train(msg: Message, context: Context) -> Message:
    reply = honest.train(msg, context)
    kind = behaviours().get(device_index(context))
    return reply if kind is None else CHANGES[kind](msg, reply, context)


def _first(reply: Message) -> tuple[ArrayRecord, str, np.ndarray]:
    record = reply.content[ARRAYS_KEY]
    name = sorted(record)[0]
    return record, name, record[name].numpy()


def nan(msg: Message, reply: Message, context: Context) -> Message:
    record, name, value = _first(reply)
    value = value.copy()
    value.flat[0] = np.nan
    record[name] = Array(value)
    return reply


def shape(msg: Message, reply: Message, context: Context) -> Message:
    record, name, value = _first(reply)
    record[name] = Array(np.concatenate([value.ravel(), value.ravel()[:1]]))
    return reply


def dtype(msg: Message, reply: Message, context: Context) -> Message:
    record, name, value = _first(reply)
    record[name] = Array(value.astype(np.float64))
    return reply


def huge(msg: Message, reply: Message, context: Context) -> Message:
    """The honest update scaled 10^4 times: finite, far past the norm bound."""
    sent = msg.content[ARRAYS_KEY]
    record = reply.content[ARRAYS_KEY]
    for name in list(record):
        base = sent[name].numpy()
        record[name] = Array((base + 1e4 * (record[name].numpy() - base)).astype(base.dtype))
    return reply


def impostor(msg: Message, reply: Message, context: Context) -> Message:
    """Claims to be device 0 (whose node checked in separately)."""
    reply.content[DEVICE_KEY]["device"] = 0
    return reply


def greedy(msg: Message, reply: Message, context: Context) -> Message:
    """Claims a million examples, to outweigh everybody in FedAvg."""
    reply.content[METRICS_KEY][WEIGHT_KEY] = 10**6
    return reply


def replay(msg: Message, reply: Message, context: Context) -> Message:
    """Honest in its first round; afterwards re-sends that first reply's content."""
    saved = {key: f"{REPLAY_STATE}-{key}" for key in (ARRAYS_KEY, METRICS_KEY, DEVICE_KEY)}
    if saved[DEVICE_KEY] not in context.state:
        for key, state_key in saved.items():
            context.state[state_key] = reply.content[key]
        return reply
    return Message(RecordDict({key: context.state[state_key]
                               for key, state_key in saved.items()}), reply_to=msg)


CHANGES: dict[str, Callable[[Message, Message, Context], Message]] = {
    "nan": nan, "shape": shape, "dtype": dtype, "huge": huge, "impostor": impostor,
    "greedy": greedy, "replay": replay,
}
