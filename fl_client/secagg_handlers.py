"""The device side of secure aggregation as Flower message handlers.

Five stages, five message types (the server workflow is `strategies/secagg_workflow.py`):

  query.secagg_advertise  RoundSetup          -> signed X25519 public keys
  query.secagg_share      neighbours' keys    -> encrypted Shamir shares (+ rejected ids)
  train.secagg_masked     arrays, plan, shares -> local training, then the masked update
                                                  (delta to the global model, clipped,
                                                  fixed-point, weighted by #examples)
  query.secagg_consistency survivor set U3    -> the device's signature over it
  query.secagg_unmask     U3 + signatures     -> the shares the signed U3 allows

Plain functions, registered by `fl_client.client_app`; the masked stage runs the same
local round as a plain train message (`fl_client.local_round`). The ClientApp is
otherwise stateless; the protocol's per-round secrets live in the node's own
`context.state` between stages (`SecAggClient.to_bytes`: replaced when the next round's
setup arrives; kept after unmasking so that a re-sent request meets the same guard). What the masked-input
reply carries besides the masked vector is only what is fixed by the plan or hardware
(steps, sample rate, seconds) and the DP event for the budget ledger: no per-device loss,
no number of examples (the weight travels inside the masked vector).

Enrollment keys: in simulation (`partition-id` in the node config) they come from the
deterministic simulated enrollment (`privacy.secagg.simulated_enrollment`, seeded by the
run seed in the setup). On a real device, `enrollment-key-file` (PEM or OpenSSH private
key from the enrollment bundle) and `identities-file` (JSON {device index: public key},
the registry-issued identities) in the node config, or its `device-key`. A real device
without either refuses (`MissingCredentials`): keys derived from a seed the server sends
would let the server sign as every device.

One masked input per (run, round), ever: the device records each round it sent one for in
its state dir (`fl_client.masked_inputs`) before the reply leaves, and refuses a second
masked-input request for the same round, across restarts. A server re-running a round
over a different cohort would otherwise learn one device's update by difference.

Node config: `secagg-min-survivors` (default 3, at least 2) is the smallest survivor set
the device reveals shares for, and the smallest round it joins.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from fl_client.masked_inputs import MaskedInputLog, round_keys
from fl_client.node import device_index, device_state_dir, enrollment_key
from fl_client.release import reported_metrics
from fl_client.secagg_client import DEFAULT_MIN_SURVIVORS, SecAggClient
from privacy.secagg import codec, simulated_enrollment
from privacy.secagg.keys import load_private_key
from privacy.wire.arrays import arrays_of
from privacy.wire.dp_event import dp_event_to_record
from privacy.wire.keys import (
    ARRAYS_KEY,
    CONFIG_KEY,
    DEVICE_KEY,
    DISCRIMINATOR_KEY,
    DP_EVENT_KEY,
    METRICS_KEY,
    SECAGG_CREDENTIAL_KEYS,
    SECAGG_KEY,
    SECAGG_SIM_STATE_KEY,
)

if TYPE_CHECKING:  # the local round is torch code: the key-exchange stages never load it
    from fl_client.local_round import LocalRound

#: Where the node keeps this round's protocol state between stages (`context.state`).
STATE_KEY = "secagg-state"


class MissingCredentials(PermissionError):
    """A device outside simulation has no enrollment key of its own for secure aggregation."""


class NoStateDir(PermissionError):
    """A device has nowhere to record the rounds it sent a masked input for."""


def min_survivors(context: Context) -> int:
    """The node's own minimum surviving cohort (`secagg-min-survivors`), default 3."""
    value = context.node_config.get("secagg-min-survivors", DEFAULT_MIN_SURVIVORS)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"node config secagg-min-survivors must be an integer, got {value!r}"
                         ) from None


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
    found = enrollment_key(context, str(saved.get("bundles-dir", "")), device)
    if found is not None:
        if "device-key" in node and "identities-file" not in node:
            raise PermissionError(
                "secure aggregation needs the registry's identities on the device: start it "
                "with --node-config identities-file=PATH (`fedmsr fleet identities --out PATH`)")
        table = node.get("identities-file") or saved.get("identities-file")
        if not table:
            raise ValueError("the secure-aggregation setup names no identities file")
        return load_private_key(Path(found[1]).read_bytes()), _identities(str(table))
    if "partition-id" not in node:
        raise MissingCredentials(
            "secure aggregation on a real device needs its own enrollment key: start the "
            "SuperNode with --node-config 'device-key=PATH device-id=N identities-file=PATH' "
            "(or enrollment-key-file=PATH identities-file=PATH)")
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
    return dict(context.state.config_records[STATE_KEY])


def _load(context: Context) -> SecAggClient:
    saved = _saved(context)
    key, identities = _credentials(context, saved, [int(p) for p in saved["participants"]])
    return SecAggClient.from_bytes(bytes(saved["client"]), key, identities,
                                   min_survivors(context))


def _save(context: Context, client: SecAggClient) -> None:
    context.state[STATE_KEY] = ConfigRecord({**_saved(context), "client": client.to_bytes()})


def _flat(msg: Message) -> dict[str, Any]:
    return dict(msg.content.config_records[SECAGG_KEY])


def _reply(msg: Message, flat: dict[str, Any], **extra: Any) -> Message:
    return Message(RecordDict({SECAGG_KEY: ConfigRecord(flat), **extra}), reply_to=msg)


def advertise(msg: Message, context: Context) -> Message:
    flat = _flat(msg)
    setup = codec.setup_from_flat(flat)
    saved: dict[str, Any] = {"enrollment-seed": int(flat["enrollment-seed"]),
                             "participants": list(setup.participants),
                             **{k: str(flat[k]) for k in SECAGG_CREDENTIAL_KEYS if k in flat},
                             **({SECAGG_SIM_STATE_KEY: str(flat[SECAGG_SIM_STATE_KEY])}
                                if SECAGG_SIM_STATE_KEY in flat else {})}
    key, identities = _credentials(context, saved, list(setup.participants))
    # A round already contributed to (a server's redo) is refused before any key exchange.
    MaskedInputLog(_state_dir(context, saved)).refuse_repeat(round_keys({}, setup.round_context))
    client = SecAggClient(device_index(context), key, identities, min_survivors(context))
    keys = client.advertise(setup)
    context.state[STATE_KEY] = ConfigRecord({**saved, "client": client.to_bytes()})
    return _reply(msg, codec.advertise_to_flat(keys))


def share(msg: Message, context: Context) -> Message:
    client = _load(context)
    reply = client.share_keys(codec.neighbour_keys_from_flat(_flat(msg)))
    _save(context, client)
    return _reply(msg, codec.share_keys_to_flat(reply))


#: A device's local round (`fl_client.local_round.run_local_round`, or a bench's stand-in).
#: Its last argument: the message's optional device-discriminator record.
LocalRoundFn = Callable[[ConfigRecord, dict[str, np.ndarray], Context, ArrayRecord | None],
                        "LocalRound"]


def masked_train(msg: Message, context: Context) -> Message:
    """Train as usual (`fl_client.local_round`), then upload only the masked update."""
    from fl_client.local_round import run_local_round  # noqa: PLC0415 - torch, on use

    return masked_round(msg, context, run_local_round)


def masked_round(msg: Message, context: Context, local_round: LocalRoundFn) -> Message:
    """Run `local_round`, then upload only its masked, encoded update (the delta to the
    global model; the weight travels inside the masked vector) and the metrics the plan
    or the hardware fixes. A node without this round's protocol state, or given a
    malformed delivery, trains nothing."""
    client = _load(context)
    config = msg.content.config_records[CONFIG_KEY]
    sent = MaskedInputLog(_state_dir(context, _saved(context)))
    keys = round_keys(config, client.setup.round_context)
    sent.refuse_repeat(keys)  # before any training: a repeated round gets nothing
    delivery = codec.delivery_from_flat(_flat(msg))
    global_arrays = arrays_of(msg.content.array_records[ARRAYS_KEY])
    result = local_round(config, global_arrays, context,
                         msg.content.array_records.get(DISCRIMINATOR_KEY))
    delta = codec.flatten(result.arrays) - codec.flatten(global_arrays)
    masked = client.masked_input(delivery, delta, result.weight)
    sent.record(keys)  # durable before the masked input leaves the device
    _save(context, client)
    extra: dict[str, Any] = {
        METRICS_KEY: MetricRecord(dict(reported_metrics(result.metrics, dp_sgd=True))),
        DEVICE_KEY: ConfigRecord({"device": result.device, **result.echo}),
    }
    if result.dp_event is not None:
        extra[DP_EVENT_KEY] = dp_event_to_record(result.dp_event)
    return _reply(msg, codec.masked_to_flat(masked), **extra)


def _state_dir(context: Context, saved: Mapping[str, Any]) -> Path:
    """The device's own state dir (next to its ledgers); a simulated device without one
    uses the run's per-device directory the setup names (as its DP ledger does)."""
    device = device_index(context)
    own = device_state_dir(context, str(saved.get("bundles-dir", "")), device)
    if own is not None:
        return own
    if "partition-id" in context.node_config and saved.get(SECAGG_SIM_STATE_KEY):
        return Path(str(saved[SECAGG_SIM_STATE_KEY])) / str(device)
    raise NoStateDir("secure aggregation needs the device's state directory (to send at most "
                     "one masked input per round): start the SuperNode with --node-config "
                     "'state-dir=DIR'")


def consistency(msg: Message, context: Context) -> Message:
    """Sign the survivor set the server announces (once per round)."""
    client = _load(context)
    reply = client.sign_survivors(codec.consistency_request_from_flat(_flat(msg)))
    _save(context, client)
    return _reply(msg, codec.consistency_signature_to_flat(reply))


def unmask(msg: Message, context: Context) -> Message:
    client = _load(context)
    reply = client.unmask(codec.unmask_request_from_flat(_flat(msg)))
    _save(context, client)
    return _reply(msg, codec.unmask_reply_to_flat(reply))
