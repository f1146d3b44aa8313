"""A test-only ClientApp whose devices fail on purpose, and an engine that runs it.

Never used in production: it wraps `fl_client.handlers`, and only this module
reads its environment variables.

* ``FEDMSR_TEST_FAULTY="1:crash@1,2:hang@1,0:hold@2"`` -- device -> behaviour@round:
  ``crash`` raises in `train` before doing anything (Flower answers the server with an
  error reply); ``hang`` sits on the train message until the server has finished that
  round without it (its checkpoint exists), then answers -- a reply that arrives past the
  round timeout, into the next round; ``hold`` waits until the test creates
  ``RUN_DIR/test-release/D-R`` (a test-controlled "mid-round": the server has reserved and
  sent, this reply is pending), then trains honestly.
* ``FEDMSR_TEST_RUN_DIR=RUN_DIR`` -- every honest train reply's arrays and FedAvg weight
  are also saved to ``RUN_DIR/test-updates/round-R-device-D.npz`` so a test can recompute
  the aggregate from exactly what the surviving devices sent (DP-SGD noise included).

`python -m tests.faulty_devices RUN_DIR` is `python -m fl_server.engine RUN_DIR` (the run
in RUN_DIR/run.json, written by `prepare_new_run`, on Flower's simulation engine with the
production ServerApp) with these devices instead of the honest ones; exit code 0 only for
a completed run.
"""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

import fl_client.client_app
from fl_client import handlers as honest
from fl_client.checkin_handler import checkin
from fl_client.node import device_index
from privacy.wire.arrays import arrays_of
from privacy.wire.keys import ARRAYS_KEY, CHECKIN_ACTION, CONFIG_KEY, METRICS_KEY, WEIGHT_KEY

FAULTS_ENV = "FEDMSR_TEST_FAULTY"
RUN_DIR_ENV = "FEDMSR_TEST_RUN_DIR"
#: A hung or held device gives up waiting after this long (a broken test, not a pass).
MAX_WAIT_S = 900.0

app = ClientApp()
app.query(CHECKIN_ACTION)(checkin)
app.evaluate()(honest.evaluate)


def faults() -> dict[tuple[int, int], str]:
    """(device, round) -> behaviour, from FEDMSR_TEST_FAULTY."""
    out: dict[tuple[int, int], str] = {}
    for item in filter(None, os.environ.get(FAULTS_ENV, "").split(",")):
        device, _, rest = item.partition(":")
        kind, _, server_round = rest.partition("@")
        out[(int(device), int(server_round))] = kind
    return out


def run_dir() -> Path:
    return Path(os.environ[RUN_DIR_ENV])


def release_file(device: int, server_round: int) -> Path:
    return run_dir() / "test-release" / f"{device}-{server_round}"


def update_file(server_round: int, device: int) -> Path:
    return run_dir() / "test-updates" / f"round-{server_round}-device-{device}.npz"


@app.train()
def train(msg: Message, context: Context) -> Message:
    device = device_index(context)
    server_round = int(msg.content[CONFIG_KEY]["server-round"])
    kind = faults().get((device, server_round))
    if kind == "crash":
        raise RuntimeError(f"test: device {device} crashed in round {server_round}")
    if kind == "hang":
        _wait_for(run_dir() / "checkpoints" / f"round-{server_round:04d}.json")
    elif kind == "hold":
        _wait_for(release_file(device, server_round))
    reply = honest.train(msg, context)
    if RUN_DIR_ENV in os.environ:
        _record(reply, server_round, device)
    return reply


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + MAX_WAIT_S
    while not path.exists():
        if time.monotonic() > deadline:  # a broken test: fail the device, never train on
            raise TimeoutError(f"test: {path} did not appear within {MAX_WAIT_S:g} s")
        time.sleep(0.1)


def _record(reply: Message, server_round: int, device: int) -> None:
    arrays = arrays_of(reply.content[ARRAYS_KEY])
    weight = int(reply.content[METRICS_KEY][WEIGHT_KEY])
    buffer = io.BytesIO()
    np.savez(buffer, **arrays, __weight__=np.array(weight))
    path = update_file(server_round, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".tmp").write_bytes(buffer.getvalue())
    path.with_suffix(".tmp").rename(path)


def recorded_update(server_round: int, device: int) -> tuple[dict[str, np.ndarray], int]:
    """What `device` sent in `server_round` (arrays, weight), as recorded above."""
    with np.load(update_file(server_round, device)) as npz:
        arrays = {name: npz[name] for name in npz.files if name != "__weight__"}
        return arrays, int(npz["__weight__"])


def main(argv: list[str]) -> int:
    """`fl_server.engine` (the production engine process), with these devices: the
    engine takes its ClientApp from `fl_client.client_app.app` when it starts the run."""
    from fl_server import engine
    os.environ[RUN_DIR_ENV] = str(Path(argv[0]).resolve())  # before Ray starts its workers
    fl_client.client_app.app = app
    return engine.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
