"""What a ClientApp process loads per message: a check-in answers without torch.

On a SuperNode every message runs in a fresh `flwr-clientapp` process; the check-in's
handler lives in a module that imports neither torch nor the encoder, and the app loads
each handler's module on its first message. Checked in a fresh interpreter, through
Flower's own `ClientApp.__call__` dispatch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import json, sys
from flwr.app import Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from fl_client.client_app import app
TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 7, 1
from privacy.encoder_config import EncoderConfig
from privacy.synthetic import FleetSpec
from privacy.wire.checkin import CheckinAnswer
from privacy.wire.instructions import Instructions
from privacy.wire.keys import ARRAYS_KEY, CONFIG_KEY, DEVICE_KEY, METRICS_KEY, WEIGHT_KEY
from privacy.wire.train import TrainConfig

heavy = ("torch", "opacus", "privacy.encoder", "fl_client.handlers", "fl_client.trainer")
loaded = {"app": [m for m in heavy if m in sys.modules]}
instructions = Instructions(server_round=1, fleet=FleetSpec(seed=3, num_devices=2, days=2,
                                                            clips_per_day=4),
                            model=EncoderConfig(), train=TrainConfig(epochs=1),
                            train_days=1)
context = Context(run_id=1, node_id=7, node_config={"partition-id": 1}, state=RecordDict(),
                  run_config={})
msg = Message(RecordDict({CONFIG_KEY: instructions.to_record()}), dst_node_id=7,
              message_type="query.checkin")
answer = CheckinAnswer.from_record(app(msg, context).content.config_records[DEVICE_KEY])
loaded["checkin"] = [m for m in heavy if m in sys.modules]

from privacy.encoder import build_model, state_to_numpy
from privacy.wire.arrays import record_of
arrays = record_of(state_to_numpy(build_model(instructions.model)))
train = Message(RecordDict({CONFIG_KEY: instructions.to_record(), ARRAYS_KEY: arrays}),
                dst_node_id=7, message_type="train")
reply = app(train, context)
loaded["train"] = [m for m in heavy if m in sys.modules]
print(json.dumps({"loaded": loaded, "device": answer.device, "clips": answer.num_clips,
                  "in_fleet": answer.in_fleet,
                  "trained_on": reply.content.metric_records[METRICS_KEY][WEIGHT_KEY]}))
"""


def test_a_check_in_loads_neither_torch_nor_the_training_handlers() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["loaded"]["app"] == [] and result["loaded"]["checkin"] == []
    # The check-in is a real answer: device 1 of the fleet, its 4 training clips (1 day).
    assert (result["device"], result["in_fleet"], result["clips"]) == (1, True, 4)
    # A train message through the same app loads the training code and trains on them.
    assert {"torch", "fl_client.handlers", "fl_client.trainer"} <= set(result["loaded"]["train"])
    assert result["trained_on"] == 4
