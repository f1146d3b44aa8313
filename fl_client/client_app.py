"""The device's Flower ClientApp: which function answers which message.

This module only composes: it creates the `ClientApp` (`fl_client.client_app:app` in
pyproject.toml) and registers plain ``(Message, Context) -> Message`` functions that live
in modules which never import this one: the round's handlers (`fl_client.handlers`:
check-in, train, evaluate, upload) and the four stages of secure aggregation
(`fl_client.secagg_handlers`). Plain and masked training run the same local round
(`fl_client.local_round`).
"""

from __future__ import annotations

from flwr.clientapp import ClientApp

from fl_client import handlers, secagg_handlers
from privacy.wire.keys import (
    CHECKIN_ACTION,
    SECAGG_ADVERTISE_ACTION,
    SECAGG_CONSISTENCY_ACTION,
    SECAGG_MASKED_ACTION,
    SECAGG_SHARE_ACTION,
    SECAGG_UNMASK_ACTION,
    UPLOAD_ACTION,
)

app = ClientApp()

app.query(CHECKIN_ACTION)(handlers.checkin)
app.train()(handlers.train)
app.evaluate()(handlers.evaluate)
app.query(UPLOAD_ACTION)(handlers.upload)

app.query(SECAGG_ADVERTISE_ACTION)(secagg_handlers.advertise)
app.query(SECAGG_SHARE_ACTION)(secagg_handlers.share)
app.train(SECAGG_MASKED_ACTION)(secagg_handlers.masked_train)
app.query(SECAGG_CONSISTENCY_ACTION)(secagg_handlers.consistency)
app.query(SECAGG_UNMASK_ACTION)(secagg_handlers.unmask)
