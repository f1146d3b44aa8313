"""The device side of secure aggregation as Flower message handlers.

Four stages, four message types (the server workflow is `strategies/secagg_workflow.py`):

  query.secagg_advertise  RoundSetup          -> signed X25519 public keys
  query.secagg_share      neighbours' keys    -> encrypted Shamir shares (+ rejected ids)
  train.secagg_masked     arrays, plan, shares -> local training, then the masked update
                                                  (delta to the global model, clipped,
                                                  fixed-point, weighted by #examples)
  query.secagg_unmask     survivors/dropped   -> the shares the guard allows

The ClientApp is otherwise stateless; the protocol's per-round secrets live in the node's
own `context.state` between stages (replaced when the next round's setup arrives;
kept after unmasking so that a re-sent request meets the same guard). What the masked-input
reply carries besides the masked vector is only what is fixed by the plan or hardware
(steps, sample rate, seconds) and the DP event for the budget ledger: no per-device loss,
no number of examples (the weight travels inside the masked vector).

Enrollment keys: in simulation (`partition-id` in the node config) they come from the
deterministic simulated enrollment (`privacy.secagg.simulated_enrollment`, seeded by the
run seed in the setup). On a real device, `enrollment-key-file` (PEM or OpenSSH private
key from the enrollment bundle) and `identities-file` (JSON {device index: public key},
the registry-issued identities) in the node config.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from fl_client import client_app
from fl_client.client_app import app, arrays_of, device_index, reported_metrics
from fl_client.messages import ARRAYS_KEY, DEVICE_KEY, DP_EVENT_KEY, METRICS_KEY, WEIGHT_KEY
from fl_client.secagg_client import SecAggClient
from privacy.secagg import codec, simulated_enrollment
from privacy.secagg.keys import load_private_key

SECAGG_KEY = "secagg"
STATE_KEY = "secagg-state"
ADVERTISE_ACTION = "secagg_advertise"
SHARE_ACTION = "secagg_share"
MASKED_ACTION = "secagg_masked"
UNMASK_ACTION = "secagg_unmask"
#: Setup fields naming where a registry-backed simulation keeps keys and identities.
CREDENTIAL_KEYS = ("bundles-dir", "identities-file")


def _credentials(context: Context, saved: Mapping[str, Any], participants: list[int]):
    """(own enrollment private key, registry identities) for this node.

    Three sources, most real first: a node's `enrollment-key-file` + `identities-file`; the
    registry enrollment key a node signs its check-in with (`device-key` on a SuperNode,
    whose identities must then come from its own `identities-file`, never from the server;
    or, in a registry-backed simulation, the bundle and the run's identities table the
    setup names); otherwise the deterministic simulated enrollment of the run seed.
    """
    node = context.node_config
    device = device_index(context)
    if "enrollment-key-file" in node:
        key = load_private_key(Path(str(node["enrollment-key-file"])).read_bytes())
        return key, _identities(str(node["identities-file"]))
    found = client_app.enrollment_key(context, str(saved.get("bundles-dir", "")), device)
    if found is not None:
        if "device-key" in node and "identities-file" not in node:
            raise PermissionError(
                "secure aggregation needs the registry's identities on the device: start it "
                "with --node-config identities-file=PATH (`fedmsr fleet identities --out PATH`)")
        table = node.get("identities-file") or saved.get("identities-file")
        if not table:
            raise ValueError("the secure-aggregation setup names no identities file")
        return load_private_key(Path(found[1]).read_bytes()), _identities(str(table))
    seed = int(saved["enrollment-seed"])
    return (simulated_enrollment.device_key(seed, device),
            simulated_enrollment.identities(seed, participants))


def _identities(path: str) -> dict[int, str]:
    stat = Path(path).stat()
    return dict(_read_identities(path, stat.st_mtime_ns, stat.st_size))


@lru_cache(maxsize=8)  # re-read when the file changes (the server rewrites it per round)
def _read_identities(path: str, mtime_ns: int, size: int) -> tuple[tuple[int, str], ...]:
    del mtime_ns, size  # cache key only
    table = json.loads(Path(path).read_text())
    return tuple((int(d), str(key)) for d, key in table.items())


def _saved(context: Context) -> dict[str, Any]:
    return dict(cast(ConfigRecord, context.state[STATE_KEY]))


def _load(context: Context) -> SecAggClient:
    saved = _saved(context)
    key, identities = _credentials(context, saved, [int(p) for p in saved["participants"]])
    return SecAggClient.from_bytes(bytes(saved["client"]), key, identities)


def _save(context: Context, client: SecAggClient) -> None:
    context.state[STATE_KEY] = ConfigRecord({**_saved(context), "client": client.to_bytes()})


def _flat(msg: Message) -> dict[str, Any]:
    return dict(cast(ConfigRecord, msg.content[SECAGG_KEY]))


def _reply(msg: Message, flat: dict[str, Any], **extra: Any) -> Message:
    return Message(RecordDict({SECAGG_KEY: ConfigRecord(flat), **extra}), reply_to=msg)


@app.query(ADVERTISE_ACTION)
def advertise(msg: Message, context: Context) -> Message:
    flat = _flat(msg)
    setup = codec.setup_from_flat(flat)
    saved = {"enrollment-seed": int(flat["enrollment-seed"]),
             "participants": list(setup.participants),
             **{k: str(flat[k]) for k in CREDENTIAL_KEYS if k in flat}}
    key, identities = _credentials(context, saved, list(setup.participants))
    client = SecAggClient(device_index(context), key, identities)
    keys = client.advertise(setup)
    context.state[STATE_KEY] = ConfigRecord({**saved, "client": client.to_bytes()})
    return _reply(msg, codec.advertise_to_flat(keys))


@app.query(SHARE_ACTION)
def share(msg: Message, context: Context) -> Message:
    client = _load(context)
    reply = client.share_keys(codec.neighbour_keys_from_flat(_flat(msg)))
    _save(context, client)
    return _reply(msg, codec.share_keys_to_flat(reply))


@app.train(MASKED_ACTION)
def masked_train(msg: Message, context: Context) -> Message:
    """Train as usual, then upload only the masked, encoded update."""
    client = _load(context)
    delivery = codec.delivery_from_flat(_flat(msg))
    trained = client_app.train(msg, context)
    delta = (codec.flatten(arrays_of(cast(ArrayRecord, trained.content[ARRAYS_KEY])))
             - codec.flatten(arrays_of(cast(ArrayRecord, msg.content[ARRAYS_KEY]))))
    metrics = {k: float(cast(float, v))
               for k, v in cast(MetricRecord, trained.content[METRICS_KEY]).items()}
    masked = client.masked_input(delivery, delta, int(metrics[WEIGHT_KEY]))
    _save(context, client)
    extra: dict[str, Any] = {
        METRICS_KEY: MetricRecord(dict(reported_metrics(metrics, dp_sgd=True))),
        DEVICE_KEY: trained.content[DEVICE_KEY],
    }
    if DP_EVENT_KEY in trained.content:
        extra[DP_EVENT_KEY] = trained.content[DP_EVENT_KEY]
    return _reply(msg, codec.masked_to_flat(masked), **extra)


@app.query(UNMASK_ACTION)
def unmask(msg: Message, context: Context) -> Message:
    client = _load(context)
    reply = client.unmask(codec.unmask_request_from_flat(_flat(msg)))
    _save(context, client)
    return _reply(msg, codec.unmask_reply_to_flat(reply))
