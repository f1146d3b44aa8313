"""Who this SuperNode is: its device index, enrollment key, state directory and own caps.

Everything here is read from the node's own configuration (`context.node_config`, set by
whoever starts the SuperNode) or, in a registry-backed simulation, from the bundles of the
simulated enrollment; never from the server's messages alone, so a server cannot make a
device sign as another or keep its ledgers somewhere else. The handlers ask these
questions every message, since the ClientApp keeps no state of its own.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
from flwr.app import Context

from privacy.checks import is_int
from privacy.shuffle.pin import PIN_FILE, ShufflerPin
from privacy.wire.checkin import Challenge, CheckinAnswer, checkin_statement

log = logging.getLogger("fedmsr.node")


def device_index(context: Context) -> int:
    """The device this SuperNode is: `device-index` on real nodes, `partition-id` in simulation."""
    node_config = context.node_config
    for key in ("device-index", "partition-id"):
        if key in node_config:
            return int(node_config[key])
    raise ValueError("node config has neither 'device-index' nor 'partition-id'; "
                     "start the SuperNode with --node-config 'device-index=N'")


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
    """Data index -> (device id, key path) of the bundles under `bundles_dir` (simulation).

    A bundle whose device.json cannot be read or lacks an integer device id or index is
    skipped with a warning naming it: one bad bundle must not fail every device's check-in.
    """
    found: dict[int, tuple[int, str]] = {}
    for info_path in sorted(Path(bundles_dir).glob("*/device.json")):
        key = info_path.parent / "device.key"
        try:
            info = json.loads(info_path.read_text())
            index, device_id = info["device_index"], info["device_id"]
            if not (is_int(index) and is_int(device_id) and index >= 0):
                raise ValueError(f"device_index {index!r} / device_id {device_id!r} are not "
                                 "non-negative integers")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("skipping bundle %s: %s", info_path.parent,
                        f"missing {exc.args[0]!r}" if isinstance(exc, KeyError) else exc)
            continue
        if key.exists():
            found[int(index)] = (int(device_id), str(key))
    return found


def sign_challenge(challenge: Challenge, context: Context,
                   answer: CheckinAnswer) -> CheckinAnswer:
    """`answer` with the device's registry id and its ECDSA-SHA384 signature, by the
    enrollment key, over `checkin_statement` (challenge, node and every field of the
    answer); unchanged without a key (the server then admits the node only in a run
    without a registry)."""
    found = enrollment_key(context, challenge.bundles_dir, answer.device)
    if found is None:
        return answer
    device_id, key_path = found
    key = load_ssh_private_key(Path(key_path).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{key_path} is not an ECDSA enrollment key")
    unsigned = replace(answer, device_id=device_id, signature="")
    statement = checkin_statement(challenge.nonce, challenge.run_id, int(context.node_id),
                                  unsigned)
    return replace(unsigned, signature=key.sign(statement, ec.ECDSA(hashes.SHA384())).hex())


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


def shuffler_pin(context: Context, bundles_dir: str, device: int) -> ShufflerPin | None:
    """The shuffler this device seals to (`privacy.shuffle.pin`): node config `shuffler-key`
    (hex; optional `min-time-granularity-days`, `min-crowd`) on a real node, else the
    enrollment bundle's shuffler.json (simulation); None when neither provisions one.
    ValueError (one line) for a pin that is there but malformed."""
    config = context.node_config
    if "shuffler-key" in config:
        try:
            key = bytes.fromhex(str(config["shuffler-key"]))
        except ValueError:
            raise ValueError("node config 'shuffler-key' is not hex") from None
        return ShufflerPin(key, int(config.get("min-time-granularity-days", 1)),
                           int(config.get("min-crowd", 2)))
    found = enrollment_key(context, bundles_dir, device)
    if found is None:
        return None
    path = Path(found[1]).parent / PIN_FILE
    if not path.exists():
        return None
    try:
        return ShufflerPin.from_json(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None
