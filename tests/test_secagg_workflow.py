"""The SecAgg+ server workflow against the real ClientApp, through an in-process grid.

The grid here is a stand-in for Flower's (this is a unit test of the workflow): it hands
each pushed message to `fl_client.client_app.app` with that node's own persistent
`Context`, exactly as a SuperNode would, and can make chosen nodes silent at a chosen
stage (a dropout). The devices really train; the reference is the plaintext FedAvg of the
same devices' updates, computed by calling the same train handler directly.
"""

from __future__ import annotations

import dataclasses
import tempfile
from functools import lru_cache

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict

from fl_client.client_app import app
from fl_client.handlers import train as train_handler
from fl_server.config import RunConfig
from fl_server.federation import Plan
from privacy.encoder import build_model, state_to_numpy
from privacy.secagg.errors import ProtocolAbort
from privacy.wire.arrays import arrays_of, record_of
from privacy.wire.keys import ARRAYS_KEY, CONFIG_KEY, METRICS_KEY, WEIGHT_KEY
from strategies.secagg_workflow import (
    ADVERTISE,
    MASKED,
    SHARE,
    UNMASK,
    SecAggParams,
    round_setup,
    secure_train_round,
)

CFG = RunConfig(devices=5, clips_per_day=4, days=2, seed=5, secure_aggregation=True)
PLAN = Plan.from_config(CFG)
NODES = {100 + d: d for d in range(CFG.devices)}  # node id -> device index


class LoopbackGrid:
    """Delivers messages to the ClientApp in-process; `silent[type]` nodes never answer."""

    def __init__(self, silent: dict[str, set[int]] | None = None,
                 impostor: tuple[str, int, int] | None = None) -> None:
        self.silent = silent or {}
        self.impostor = impostor  # (stage, node, device it claims to be)
        self.contexts = {node: Context(run_id=1, node_id=node,
                                       node_config={"partition-id": device},
                                       state=RecordDict(), run_config={})
                         for node, device in NODES.items()}
        self.replies: dict[str, Message | None] = {}
        self.types: list[str] = []

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            mid = str(len(self.replies))
            msg.metadata.__dict__["_message_id"] = mid  # as Flower's grids do on push
            node, kind = msg.metadata.dst_node_id, msg.metadata.message_type
            self.types.append(kind)
            reply = None
            if node not in self.silent.get(kind, set()):
                reply = app(msg, self.contexts[node])
                reply.metadata.__dict__["_reply_to_message_id"] = mid
                reply.metadata.__dict__["_src_node_id"] = node
                if self.impostor and self.impostor[:2] == (kind, node):
                    reply.content["secagg"]["sender"] = self.impostor[2]
            self.replies[mid] = reply
            ids.append(mid)
        return ids

    def pull_messages(self, ids):
        return [self.replies[m] for m in ids if self.replies[m] is not None]


def train_messages(arrays) -> list[Message]:
    content = RecordDict({ARRAYS_KEY: record_of(arrays), CONFIG_KEY: PLAN.instructions(1)})
    return [Message(content=content, message_type="train", dst_node_id=n) for n in NODES]


@lru_cache(maxsize=1)
def plain_updates():
    """Each device's trained arrays and weight, via the plain train handler."""
    initial = state_to_numpy(build_model(PLAN.model, seed=CFG.seed))
    out = {}
    grid = LoopbackGrid()
    for msg in train_messages(initial):
        reply = train_handler(msg, grid.contexts[msg.metadata.dst_node_id])
        out[NODES[msg.metadata.dst_node_id]] = (arrays_of(reply.content[ARRAYS_KEY]),
                                                int(reply.content[METRICS_KEY][WEIGHT_KEY]))
    return initial, out


def fedavg(devices) -> dict[str, np.ndarray]:
    initial, updates = plain_updates()
    total = sum(updates[d][1] for d in devices)
    return {k: sum(updates[d][1] * updates[d][0][k].astype(np.float64) for d in devices) / total
            for k in initial}


def params() -> SecAggParams:
    return SecAggParams(clip=CFG.secagg_clip, mod_bits=CFG.secagg_mod_bits,
                        max_weight=CFG.clips_per_day * CFG.days, enrollment_seed=CFG.seed,
                        round_context=b"test/round-1",
                        # a fresh state root: each run is a first contribution to its round
                        sim_state_root=tempfile.mkdtemp(prefix="secagg-state-"))


def run(grid: LoopbackGrid):
    initial, _ = plain_updates()
    return secure_train_round(grid, train_messages(initial), NODES, initial, params(),
                              train_timeout_s=5.0, stage_timeout_s=5.0)


def assert_close_to_fedavg(secure, devices) -> None:
    expected = fedavg(devices)
    bound = round_setup(params(), sorted(NODES.values()), 1).encoding.quantisation_bound
    got = arrays_of(secure.arrays)
    for k, value in expected.items():
        tol = bound + 2 * np.finfo(np.float32).eps * np.abs(value)
        assert np.all(np.abs(got[k] - value) <= tol), k


@pytest.mark.parametrize("stage, silent, contributors", [
    (None, set(), {0, 1, 2, 3, 4}),
    (MASKED, {102}, {0, 1, 3, 4}),  # trained-and-dropped: its pairwise masks reconstructed
    (UNMASK, {103}, {0, 1, 2, 3, 4}),  # sent its input, then dropped: still counted
    (ADVERTISE, {104}, {0, 1, 2, 3}),
])
def test_secure_round_equals_fedavg_of_contributors(task_identity, stage, silent,
                                                    contributors) -> None:
    grid = LoopbackGrid({stage: silent} if stage else {})
    secure = run(grid)
    assert set(secure.result.contributors) == contributors
    assert [NODES[r.metadata.src_node_id] for r in secure.replies] == sorted(contributors)
    for reply in secure.replies:  # nothing but the masked vector carries the update
        assert ARRAYS_KEY not in reply.content and WEIGHT_KEY not in reply.content[METRICS_KEY]
    assert_close_to_fedavg(secure, contributors)
    assert {ADVERTISE, SHARE, MASKED, UNMASK} <= set(grid.types)


def test_a_node_speaking_for_another_device_is_dropped(task_identity) -> None:
    secure = run(LoopbackGrid(impostor=(SHARE, 101, 2)))
    assert set(secure.result.contributors) == {0, 2, 3, 4}
    assert_close_to_fedavg(secure, {0, 2, 3, 4})


def test_too_many_silent_devices_abort_with_no_model(task_identity) -> None:
    grid = LoopbackGrid({SHARE: {100, 101, 102}})
    with pytest.raises(ProtocolAbort, match="threshold"):
        run(grid)
    assert MASKED not in grid.types  # nobody was asked to train and upload


def test_client_state_survives_between_messages(task_identity) -> None:
    """Each stage is a fresh handler call; the device's secrets persist in context.state."""
    grid = LoopbackGrid()
    run(grid)
    assert all("secagg-state" in c.state for c in grid.contexts.values())


def test_setup_parameters(task_identity) -> None:
    setup = round_setup(dataclasses.replace(params(), neighbours=2), list(range(5)), 10)
    assert (setup.neighbours, setup.threshold) == (2, 2)
    with pytest.raises(ProtocolAbort, match="at least 2"):
        round_setup(params(), [0], 10)


class FlakyFleetGrid(LoopbackGrid):
    """The whole fleet, as a Flower grid: node ids, and nodes silent at a stage only the
    first time that stage runs (round 1 aborts, round 2 is healthy)."""

    def get_node_ids(self):
        return list(NODES)

    def push_messages(self, messages):
        messages = list(messages)
        ids = super().push_messages(messages)
        for kind in {m.metadata.message_type for m in messages}:
            self.silent.pop(kind, None)
        return ids


def test_an_aborted_round_leaves_the_model_and_the_next_round_proceeds(
        task_identity, tmp_path) -> None:
    from fl_server.checkpoint import checkpoint_dir, latest_checkpoint, load_checkpoint
    from fl_server.federation import run_federation
    from fl_server.run_status import read_status
    from tests.helpers import history, round_outcome

    # round_timeout_s also caps each SecAgg stage's wait: the silent nodes cost 3 s, not 120.
    cfg = dataclasses.replace(CFG, rounds=2, runs_dir=str(tmp_path), run_id="abort",
                              secagg_neighbours=4, secagg_threshold=3, min_train_devices=2,
                              round_timeout_s=3.0).validate()
    run_federation(FlakyFleetGrid({SHARE: {100, 101, 102}}), cfg)
    first, second = history(cfg.run_dir())
    assert "threshold" in first["aborted"] and first["devices"] == [] \
        and first["responded"] == 0
    assert second["aborted"] is None and second["devices"] == [0, 1, 2, 3, 4], \
        round_outcome(second)
    initial, _ = plain_updates()
    after_abort = load_checkpoint(checkpoint_dir(cfg.run_dir()) / "round-0001.json")
    assert all(np.array_equal(after_abort.arrays[k], initial[k]) for k in initial)
    final = latest_checkpoint(cfg.run_dir())
    assert final is not None and final.server_round == 2
    assert any(not np.array_equal(final.arrays[k], initial[k]) for k in initial)
    status = read_status(cfg.run_dir())
    assert status is not None and status.status == "completed"
