"""The device's answers to the server's messages: train, evaluate, upload.

Each handler is a plain function ``(Message, Context) -> Message`` that parses the
message into its typed parts (`privacy.wire`), asks the module that does the work, and
turns the typed result into the reply; `fl_client.client_app` registers them. Stateless
by design: every instruction arrives in the message and the device's clips come from its
footage source. Raw frames never leave these functions: replies carry model arrays,
scalar metrics and the DP event the training incurred, and, when the server asks
(`query.upload`), one fixed-size batch of privatized representations.
"""

from __future__ import annotations

import secrets

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from fl_client.device_ledger import DeviceLedger, DeviceLedgerError
from fl_client.info_ledger import InfoLedger
from fl_client.ledger_location import device_ledger
from fl_client.local_clips import own_clips, own_source, utility_labels
from fl_client.recorded_footage import NoFootage
from fl_client.local_round import LocalRound, run_local_round
from fl_client.node import (
    device_index,
    device_state_dir,
    own_info_cap,
    shuffler_pin,
)
from fl_client.release import releases_private_metrics
from fl_client.uploads import UploadRefused, answer_upload
from privacy.encoder import build_model, encode, load_numpy_state
from privacy.vib import kl_bits
from privacy.wire.arrays import arrays_of, record_of
from privacy.wire.budget import BudgetPlan
from privacy.wire.dp_event import dp_event_to_record
from privacy.wire.instructions import Instructions
from privacy.wire.keys import (
    ACTIVITY_CLIPS_KEY,
    ARRAYS_KEY,
    BATCH_KEY,
    CONFIG_KEY,
    DEVICE_KEY,
    DISCRIMINATOR_KEY,
    DP_EVENT_KEY,
    METRICS_KEY,
    UPLOAD_KEY,
    WEIGHT_KEY,
)
from privacy.wire.upload import UploadRequest


def train_reply(msg: Message, result: LocalRound) -> Message:
    """The plain train reply: the released arrays, metrics with the weight, the echo."""
    content = RecordDict({
        ARRAYS_KEY: record_of(result.arrays),
        METRICS_KEY: MetricRecord({**result.metrics, WEIGHT_KEY: result.weight}),
        DEVICE_KEY: ConfigRecord({"device": result.device, **result.echo}),
    })
    if result.dp_event is not None:
        content[DP_EVENT_KEY] = dp_event_to_record(result.dp_event)
    return Message(content, reply_to=msg)


def train(msg: Message, context: Context) -> Message:
    """Train the encoder on this device's clips, starting from the global weights."""
    return train_reply(msg, run_local_round(msg.content.config_records[CONFIG_KEY],
                                            arrays_of(msg.content.array_records[ARRAYS_KEY]), context,
                                            msg.content.array_records.get(DISCRIMINATOR_KEY)))


def evaluate(msg: Message, context: Context) -> Message:
    """The global encoder on this device's held-out footage: rate and activity accuracy.

    Only aggregate scalars go back; the representations themselves stay on the device.
    A DP-SGD device declines: these scalars are computed on its private clips without
    noise (the server does not ask it in DP runs; this is the device's own guard).
    """
    instructions = Instructions.from_record(msg.content.config_records[CONFIG_KEY])
    if releases_private_metrics(instructions):
        raise PermissionError("a DP device (DP-SGD or central DP) does not release un-noised "
                              "evaluation metrics")
    source = own_source(instructions, context)
    batch = own_clips(instructions, context, "eval")
    if batch.x.shape[0] == 0:
        raise NoFootage("no held-out clips to evaluate on")
    model = build_model(instructions.model)
    load_numpy_state(model, arrays_of(msg.content.array_records[ARRAYS_KEY]))
    mu, logvar = encode(model, batch.x)
    with torch.no_grad():
        predicted = model.activity_head(torch.from_numpy(mu)).argmax(dim=1).numpy()
    metrics = MetricRecord({
        "kl_bits": float(np.mean(kl_bits(mu, logvar))),
        WEIGHT_KEY: int(batch.x.shape[0]),
    })
    labels = utility_labels(instructions, source, batch)
    if labels is not None and (labelled := labels >= 0).any():  # a device without the
        # label reports no accuracy; real footage may hold clips without it
        metrics["activity_acc"] = float(np.mean(predicted[labelled] == labels[labelled]))
        metrics[ACTIVITY_CLIPS_KEY] = int(labelled.sum())
    return Message(RecordDict({METRICS_KEY: metrics}), reply_to=msg)


def _release_ledger(request: UploadRequest, msg: Message, context: Context,
                    device: int) -> DeviceLedger | None:
    """The device's DP ledger when the request asks for a randomized release (else None)."""
    if not request.randomized:
        return None
    budget = BudgetPlan.from_flat(msg.content.config_records[CONFIG_KEY])
    if budget is None:
        raise UploadRefused("randomized release asked without budget instructions (run id, "
                            "delta): refusing to upload")
    try:
        return device_ledger(context, budget, device,
                             device_state_dir(context, budget.sim_bundles_dir, device))
    except DeviceLedgerError as exc:
        raise UploadRefused(str(exc)) from None


def upload(msg: Message, context: Context) -> Message:
    """Answer the server's request for privatized representations (`fl_client.uploads`).

    Only the fixed-size batch goes back: quantised samples of z, capture times and clip
    ids, padded with dummies to the requested count. The device charges its information
    ledger first and sends nothing that would pass its cap; a randomized release is
    reserved on its DP ledger before that (`fl_client.uploads.reserve_release`).
    """
    instructions = Instructions.from_record(msg.content.config_records[CONFIG_KEY])
    request = UploadRequest.from_record(msg.content.config_records[UPLOAD_KEY])
    device = device_index(context)
    state = device_state_dir(context, request.bundles_dir, device)
    if state is None:
        raise UploadRefused("no state directory for the information ledger (node config "
                            "'state-dir', or an enrollment bundle): refusing to upload")
    try:
        pin = shuffler_pin(context, request.bundles_dir, device) if request.unlinkable else None
    except ValueError as exc:
        raise UploadRefused(f"shuffler pin: {exc}") from None
    capture = own_source(instructions, context).capture(request.collection, request.clips)
    blob = answer_upload(request, instructions.model, arrays_of(msg.content.array_records[ARRAYS_KEY]),
                         capture, InfoLedger.at(state), own_info_cap(context),
                         np.random.default_rng(secrets.randbits(128)),
                         _release_ledger(request, msg, context, device), pin)
    return Message(RecordDict({BATCH_KEY: ConfigRecord({BATCH_KEY: blob})}), reply_to=msg)
