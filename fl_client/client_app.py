"""The device's Flower ClientApp: check-in, local VIB training, local evaluation.

Stateless by design: every instruction arrives in the message (see `messages.py`) and the
device's clips are regenerated deterministically from the fleet spec (or, on a real
device, read from its own storage). Raw frames never leave this function: replies carry
model arrays, scalar metrics and the DP event the training incurred, and, when the server
asks (`query.upload`), one fixed-size batch of privatized representations.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import secrets
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fl_client.device_budget import (
    checkin_answer,
    ledger_dir,
    plan_of,
    released_arrays,
    releases_private_metrics,
    reserve_for_training,
    training_secret,
)
from fl_client.info_ledger import InfoLedger
from fl_client.messages import (
    ARRAYS_KEY,
    BATCH_KEY,
    CHECKIN_ACTION,
    CONFIG_KEY,
    DEVICE_KEY,
    DP_EVENT_KEY,
    METRICS_KEY,
    UPLOAD_ACTION,
    UPLOAD_KEY,
    WEIGHT_KEY,
    Instructions,
    dp_event_to_record,
    round_echo,
)
from fl_client.synthetic import ClipBatch, FleetSpec, device_clips, device_profile, stack_clips
from fl_client.trainer import train_local
from fl_client.uploads import UploadRefused, UploadRequest, answer_upload, synthetic_capture
from privacy.encoder import build_model, encode, load_numpy_state
from privacy.vib import kl_bits

app = ClientApp()


def device_index(context: Context) -> int:
    """The device this SuperNode is: `device-index` on real nodes, `partition-id` in simulation."""
    node_config = context.node_config
    for key in ("device-index", "partition-id"):
        if key in node_config:
            return int(node_config[key])
    raise ValueError("node config has neither 'device-index' nor 'partition-id'; "
                     "start the SuperNode with --node-config 'device-index=N'")


@lru_cache(maxsize=8)
def local_clips(spec: FleetSpec, device: int, days: range) -> ClipBatch:
    """The device's own footage for `days` (cached: a simulated device is asked every round)."""
    if not 0 <= device < spec.num_devices:
        raise ValueError(f"device index {device} is outside the fleet of {spec.num_devices}")
    return stack_clips(device_clips(spec, device, days=list(days)))


def round_seed(base_seed: int, server_round: int, device: int) -> int:
    """A per-(round, device) seed: resumed rounds redo exactly what they would have done."""
    return int(np.random.SeedSequence([base_seed, server_round, device]).generate_state(1)[0])


def arrays_of(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: array.numpy() for name, array in record.items()}


def record_of(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in arrays.items()})


@app.query(CHECKIN_ACTION)
def checkin(msg: Message, context: Context) -> Message:
    """Answer the server's roll call: who this device is and how much footage it holds.

    A node whose device index is outside the planned fleet (e.g. a federation with more
    SuperNodes than devices) answers `in-fleet = false` and is left out, not failed.
    """
    instructions = Instructions.from_record(msg.content[CONFIG_KEY])
    device = device_index(context)
    in_fleet = 0 <= device < instructions.fleet.num_devices
    answer = ConfigRecord({"device": device, "in-fleet": in_fleet})
    if in_fleet and CHALLENGE_KEY in msg.content:
        answer.update(sign_challenge(msg.content[CHALLENGE_KEY], context, device))
    if in_fleet:
        clips = local_clips(instructions.fleet, device, instructions.days("train"))
        answer["profile"] = device_profile(instructions.fleet, device)
        answer["num-clips"] = int(clips.x.shape[0])
    if in_fleet and (budget := plan_of(msg)) is not None:  # DP run: own ledger, or decline
        answer.update(checkin_answer(budget, context, device, device_state_dir(
            context, budget.sim_bundles_dir, device), instructions, int(answer["num-clips"])))
    return Message(RecordDict({DEVICE_KEY: answer}), reply_to=msg)


#: The server's check-in challenge (registry-backed runs): nonce, run id, and in simulation
#: where the simulated enrollment's bundles are.
CHALLENGE_KEY = "challenge"


def checkin_statement(nonce: str, run_id: str, node_id: int) -> bytes:
    """What a device signs at check-in: binds its enrollment key to this round's nonce, this
    run and the Flower node it really is (a reply relayed by another node fails)."""
    return f"fedmsr-checkin/v1\n{nonce}\n{run_id}\n{node_id}".encode()


def sign_challenge(challenge: ConfigRecord, context: Context, device: int) -> ConfigRecord:
    """Device id + ECDSA-SHA384 signature with the enrollment key; empty without a key."""
    found = enrollment_key(context, str(challenge.get("bundles-dir", "")), device)
    if found is None:
        return ConfigRecord({})
    device_id, key_path = found
    key = load_ssh_private_key(Path(key_path).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{key_path} is not an ECDSA enrollment key")
    statement = checkin_statement(str(challenge["nonce"]), str(challenge["run-id"]),
                                  int(context.node_id))
    signature = key.sign(statement, ec.ECDSA(hashes.SHA384()))
    return ConfigRecord({"device-id": device_id, "signature": signature.hex()})


def enrollment_key(context: Context, bundles_dir: str, device: int) -> tuple[int, str] | None:
    """(device id, private key path): a real SuperNode's `--node-config device-id=.. device-key=..`,
    or in simulation the bundle of the simulated enrollment for this data index."""
    config = context.node_config
    if "device-key" in config and "device-id" in config:
        return int(config["device-id"]), str(config["device-key"])
    if bundles_dir:
        return simulated_bundles(bundles_dir).get(device)
    return None


@lru_cache(maxsize=4)
def simulated_bundles(bundles_dir: str) -> dict[int, tuple[int, str]]:
    """Data index -> (device id, key path) of the bundles under `bundles_dir` (simulation)."""
    found: dict[int, tuple[int, str]] = {}
    for info_path in sorted(Path(bundles_dir).glob("*/device.json")):
        try:
            info = json.loads(info_path.read_text())
        except (OSError, ValueError):
            continue
        key = info_path.parent / "device.key"
        if key.exists() and info.get("device_index") is not None:
            found[int(info["device_index"])] = (int(info["device_id"]), str(key))
    return found


#: What a DP-SGD device reports besides its update: quantities fixed by the public plan
#: (dataset size, steps) or by the hardware, never a function of its clips' content.
DP_SAFE_METRICS = ("steps", "train_seconds", "sample_rate")


def training_seed(instructions: Instructions, device: int, secret: bytes | None = None,
                  run_id: str = "", inputs_digest: bytes = b"") -> int:
    """The seed of this device's local round.

    Without DP it is derived from the run seed, round and device, so runs are exactly
    reproducible and a resumed round redoes what it would have done. With DP-SGD it must be
    a secret of the device: whoever knows the seed can regenerate the Gaussian noise (and
    the Poisson batches) and subtract it from the update.

    A device with a ledger keeps a training secret next to it and derives the seed as
    HMAC(secret, run, round, device, digest of the inputs). A round the server redoes after a
    crash (same run, round and global model) then reproduces the *same* release instead of a
    second, freshly noised one, so the ledgers' one event per (device, run, round) is exact,
    never an under-count; any other input gets independent noise (reusing noise on different
    inputs would let a difference cancel it). Without a ledger: the OS CSPRNG.
    """
    if not instructions.train.dp_sgd:
        return round_seed(instructions.train.seed, instructions.server_round, device)
    if secret is None:
        return secrets.randbits(63)
    label = f"fedmsr-dp-train/v1\n{run_id}\n{instructions.server_round}\n{device}\n".encode()
    mac = hmac.new(secret, label + inputs_digest, hashlib.sha256).digest()
    return int.from_bytes(mac[:8], "big") >> 1


def inputs_digest(global_arrays: dict[str, np.ndarray], instructions: Instructions) -> bytes:
    """SHA-256 of what a round's training starts from: the global arrays and the plan."""
    h = hashlib.sha256(json.dumps(dataclasses.asdict(instructions), sort_keys=True,
                                  default=str).encode())
    for name in sorted(global_arrays):
        value = np.ascontiguousarray(global_arrays[name])
        h.update(f"{name}:{value.dtype.str}:{value.shape}".encode())
        h.update(value.tobytes())
    return h.digest()


def reported_metrics(metrics: dict[str, float], dp_sgd: bool) -> dict[str, float]:
    """Training metrics to send: all of them without DP, only plan-determined ones with it.

    Loss and KL on the private clips are not covered by the DP-SGD guarantee (they are
    computed without noise), so a DP device keeps them to itself.
    """
    kept = {k: float(v) for k, v in metrics.items() if not dp_sgd or k in DP_SAFE_METRICS}
    return kept


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the encoder on this device's clips, starting from the global weights."""
    instructions = Instructions.from_record(msg.content[CONFIG_KEY])
    device = device_index(context)
    batch = local_clips(instructions.fleet, device, instructions.days("train"))
    global_arrays = arrays_of(msg.content[ARRAYS_KEY])
    secret, run_id = None, ""
    if (budget := plan_of(msg)) is not None:  # own ledger first: refuses past the device's cap
        state_dir = device_state_dir(context, budget.sim_bundles_dir, device)
        reserve_for_training(budget, context, device, state_dir, instructions,
                             int(batch.x.shape[0]))
        secret = training_secret(ledger_dir(context, budget, device, state_dir))
        run_id = budget.run_id
    seed = training_seed(instructions, device, secret, run_id,
                         inputs_digest(global_arrays, instructions) if secret else b"")
    train_cfg = dataclasses.replace(instructions.train, seed=seed)
    result = train_local(instructions.model, global_arrays,
                         batch.x, batch.labels["activity"], train_cfg)
    metrics: dict[str, float | int] = dict(reported_metrics(
        result.metrics, releases_private_metrics(instructions)))
    # Central DP-FedAvg is user-level: every device counts once (its #clips stays private).
    metrics[WEIGHT_KEY] = 1 if instructions.update_clip > 0 else int(result.num_examples)
    content = RecordDict({
        ARRAYS_KEY: record_of(released_arrays(instructions, global_arrays, result.arrays)),
        METRICS_KEY: MetricRecord(metrics),
        DEVICE_KEY: ConfigRecord({"device": device, **round_echo(msg.content[CONFIG_KEY])}),
    })
    if result.dp_event is not None:
        content[DP_EVENT_KEY] = dp_event_to_record(result.dp_event)
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """The global encoder on this device's held-out footage: rate and activity accuracy.

    Only aggregate scalars go back; the representations themselves stay on the device.
    A DP-SGD device declines: these scalars are computed on its private clips without
    noise (the server does not ask it in DP runs; this is the device's own guard).
    """
    instructions = Instructions.from_record(msg.content[CONFIG_KEY])
    if releases_private_metrics(instructions):
        raise PermissionError("a DP device (DP-SGD or central DP) does not release un-noised "
                              "evaluation metrics")
    device = device_index(context)
    batch = local_clips(instructions.fleet, device, instructions.days("eval"))
    model = build_model(instructions.model)
    load_numpy_state(model, arrays_of(msg.content[ARRAYS_KEY]))
    mu, logvar = encode(model, batch.x)
    with torch.no_grad():
        predicted = model.activity_head(torch.from_numpy(mu)).argmax(dim=1).numpy()
    metrics = MetricRecord({
        "kl_bits": float(np.mean(kl_bits(mu, logvar))),
        "activity_acc": float(np.mean(predicted == batch.labels["activity"])),
        WEIGHT_KEY: int(batch.x.shape[0]),
    })
    return Message(RecordDict({METRICS_KEY: metrics}), reply_to=msg)


@app.query(UPLOAD_ACTION)
def upload(msg: Message, context: Context) -> Message:
    """Answer the server's request for privatized representations (`fl_client.uploads`).

    Only the fixed-size batch goes back: quantised samples of z, capture times and clip
    ids, padded with dummies to the requested count. The device charges its information
    ledger first and sends nothing that would pass its cap.
    """
    instructions = Instructions.from_record(msg.content[CONFIG_KEY])
    request = UploadRequest.from_record(msg.content[UPLOAD_KEY])
    device = device_index(context)
    state = device_state_dir(context, request.bundles_dir, device)
    if state is None:
        raise UploadRefused("no state directory for the information ledger (node config "
                            "'state-dir', or an enrollment bundle): refusing to upload")
    capture = synthetic_capture(instructions.fleet, device, request.collection, request.clips)
    blob = answer_upload(request, instructions.model, arrays_of(msg.content[ARRAYS_KEY]),
                         capture, InfoLedger.at(state), own_info_cap(context),
                         np.random.default_rng(secrets.randbits(128)))
    return Message(RecordDict({BATCH_KEY: ConfigRecord({BATCH_KEY: blob})}), reply_to=msg)


def device_state_dir(context: Context, bundles_dir: str, device: int) -> Path | None:
    """Where the device keeps its ledgers: node config `state-dir`, else `state/` in its
    enrollment bundle, next to its key (in simulation: the simulated enrollment's bundle)."""
    if "state-dir" in context.node_config:
        return Path(str(context.node_config["state-dir"]))
    found = enrollment_key(context, bundles_dir, device)
    return None if found is None else Path(found[1]).parent / "state"


def own_info_cap(context: Context) -> float | None:
    """The device's own information cap in bits (node config `info-bits-cap`), if set."""
    value = context.node_config.get("info-bits-cap")
    return None if value is None else float(value)


import fl_client.secagg_handlers  # noqa: F401  (registers the secure-aggregation stages)
