"""The device's Flower ClientApp: which function answers which message.

This module only composes: it creates the `ClientApp` (`fl_client.client_app:app` in
pyproject.toml) and registers plain ``(Message, Context) -> Message`` functions that live
in modules which never import this one: the roll call (`fl_client.checkin_handler`), the
round's other handlers (`fl_client.handlers`: train, evaluate, upload) and the four
stages of secure aggregation (`fl_client.secagg_handlers`). Plain and masked training run
the same local round (`fl_client.local_round`).

Each handler's module is imported when its first message arrives, not when the app
loads: on a SuperNode every message runs in a fresh ClientApp process, and a check-in,
which needs neither torch nor the encoder, then answers without loading them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from privacy.wire.keys import (
    CHECKIN_ACTION,
    SECAGG_ADVERTISE_ACTION,
    SECAGG_CONSISTENCY_ACTION,
    SECAGG_MASKED_ACTION,
    SECAGG_SHARE_ACTION,
    SECAGG_UNMASK_ACTION,
    UPLOAD_ACTION,
)

Handler = Callable[[Message, Context], Message]


def on_demand(module: str, name: str) -> Handler:
    """`module.name`, imported when the first message for it arrives."""

    def handler(msg: Message, context: Context) -> Message:
        answer: Handler = getattr(importlib.import_module(module), name)
        return answer(msg, context)

    handler.__name__ = handler.__qualname__ = name
    handler.__doc__ = f"`{module}.{name}`, imported on its first message."
    return handler


app = ClientApp()

app.query(CHECKIN_ACTION)(on_demand("fl_client.checkin_handler", "checkin"))
app.train()(on_demand("fl_client.handlers", "train"))
app.evaluate()(on_demand("fl_client.handlers", "evaluate"))
app.query(UPLOAD_ACTION)(on_demand("fl_client.handlers", "upload"))

app.query(SECAGG_ADVERTISE_ACTION)(on_demand("fl_client.secagg_handlers", "advertise"))
app.query(SECAGG_SHARE_ACTION)(on_demand("fl_client.secagg_handlers", "share"))
app.train(SECAGG_MASKED_ACTION)(on_demand("fl_client.secagg_handlers", "masked_train"))
app.query(SECAGG_CONSISTENCY_ACTION)(on_demand("fl_client.secagg_handlers", "consistency"))
app.query(SECAGG_UNMASK_ACTION)(on_demand("fl_client.secagg_handlers", "unmask"))
