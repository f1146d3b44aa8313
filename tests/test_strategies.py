"""Seeded sampling and the fast collector (a fake grid stands in for Flower's here only)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from strategies.messaging import PollSchedule, send_and_collect
from strategies.seeded_fedavg import SeededFedAvg


def test_sampling_is_seeded_and_state_restores() -> None:
    a, b = SeededFedAvg(seed=5, fraction_train=0.5), SeededFedAvg(seed=5, fraction_train=0.5)
    nodes = list(range(100, 120))
    assert [a.sample(nodes) for _ in range(3)] == [b.sample(nodes) for _ in range(3)]
    saved = a.state()
    expected = [a.sample(nodes) for _ in range(3)]
    c = SeededFedAvg(seed=999, fraction_train=0.5)
    c.load_state(saved)
    assert [c.sample(nodes) for _ in range(3)] == expected
    assert SeededFedAvg(seed=6, fraction_train=0.5).sample(nodes) != SeededFedAvg(
        seed=5, fraction_train=0.5).sample(nodes)


def test_sample_size_honours_fraction_and_minimum() -> None:
    strategy = SeededFedAvg(seed=0, fraction_train=0.25, min_train_nodes=3)
    assert len(strategy.sample(list(range(8)))) == 3
    assert len(SeededFedAvg(seed=0, fraction_train=0.5).sample(list(range(9)))) == 5
    picked = strategy.sample([7, 3, 9])
    assert sorted(picked) == picked and set(picked) <= {3, 7, 9}


def test_train_messages_go_to_the_sampled_candidates_only(task_identity) -> None:
    strategy = SeededFedAvg(seed=1, fraction_train=1.0, min_train_nodes=1)
    nodes = strategy.sample([11, 12])
    messages = strategy.train_messages(4, ArrayRecord(), ConfigRecord(), nodes)
    assert sorted(m.metadata.dst_node_id for m in messages) == [11, 12]
    assert all(m.content["config"]["server-round"] == 4 for m in messages)


@dataclass
class FakeGrid:
    """Replies become visible `delay_s` after push; node 99 never answers; a message to
    node 98 is not stored (empty id, as Flower's SuperLink answers for an unregistered
    node)."""

    delay_s: float
    pushed_at: float = 0.0
    pulls: int = 0
    messages: dict[str, Message] = field(default_factory=dict)

    def push_messages(self, messages):
        self.pushed_at = time.monotonic()
        ids = []
        for i, msg in enumerate(messages):
            self.messages[str(i)] = msg
            ids.append("" if msg.metadata.dst_node_id == 98 else str(i))  # node 98: refused
        return ids

    def pull_messages(self, ids):
        self.pulls += 1
        if time.monotonic() - self.pushed_at < self.delay_s:
            return []
        out = []
        for mid in ids:
            msg = self.messages[mid]
            if msg.metadata.dst_node_id == 99:
                continue
            reply = Message(RecordDict(), message_type="train", dst_node_id=0)
            reply.metadata.__dict__["_reply_to_message_id"] = mid  # the fake's own id
            out.append(reply)
        return out


def _msgs(nodes):
    return [Message(RecordDict(), message_type="train", dst_node_id=n) for n in nodes]


def test_collect_returns_when_all_replied_and_drops_silent_nodes(task_identity) -> None:
    grid = FakeGrid(delay_s=0.05)
    replies = send_and_collect(grid, _msgs([1, 2, 3]), timeout_s=5.0)
    assert len(replies) == 3
    # Back-off bounds the poll count: far fewer pulls than a 1 ms busy loop would make.
    assert grid.pulls < 20
    grid = FakeGrid(delay_s=0.0)
    replies = send_and_collect(grid, _msgs([1, 99]), timeout_s=0.3,
                               schedule=PollSchedule(0.01, 0.05))
    assert [r.metadata.reply_to_message_id for r in replies] == ["0"]


def test_collect_does_not_wait_for_a_message_the_superlink_refused(task_identity) -> None:
    """A node unregistered between the node list and the push (a revoked device): its
    message gets an empty id, no reply can come, the round does not wait for it."""
    grid = FakeGrid(delay_s=0.05)
    started = time.monotonic()
    replies = send_and_collect(grid, _msgs([1, 98, 2]), timeout_s=30.0)
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["0", "2"]
    assert time.monotonic() - started < 5.0
