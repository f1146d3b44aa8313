"""Send a batch of messages and collect the replies without sleeping on a fixed clock.

Flower's `Grid.send_and_receive` polls the HTTP grid every 3 s (and the in-memory grid
every 0.1 s), so a round whose replies are all back in 0.4 s still waits for the next
tick. Here the poll interval starts at a few milliseconds and backs off geometrically
while nothing arrives, resetting whenever a reply lands: a fast round costs a few cheap
polls, a slow one costs at most one poll every `max_interval_s`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from flwr.app import Message
from flwr.serverapp import Grid


@dataclass(frozen=True)
class PollSchedule:
    """Geometric back-off between pulls."""

    first_interval_s: float = 0.005
    max_interval_s: float = 0.25
    factor: float = 1.5

    def next(self, interval_s: float) -> float:
        return min(self.max_interval_s, interval_s * self.factor)


def send_and_collect(
    grid: Grid,
    messages: Iterable[Message],
    timeout_s: float,
    schedule: PollSchedule = PollSchedule(),
) -> list[Message]:
    """Push `messages`, return every reply that arrives within `timeout_s`.

    Messages that get no reply in time are simply absent from the result: the caller
    decides whether the round can go on with the rest (dropouts are normal in a fleet).
    A message the SuperLink did not store (Flower 1.42 answers its push with an empty id
    when the destination node is unknown or was unregistered, e.g. a device revoked a
    moment ago) can never be answered, so it is not waited for.
    """
    pending = {mid for mid in grid.push_messages(list(messages)) if mid}
    replies: list[Message] = []
    deadline = time.monotonic() + timeout_s
    interval = schedule.first_interval_s
    while pending:
        arrived = list(grid.pull_messages(pending))
        for reply in arrived:
            pending.discard(reply.metadata.reply_to_message_id)
        replies.extend(arrived)
        if not pending:
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        interval = schedule.first_interval_s if arrived else schedule.next(interval)
        time.sleep(min(interval, remaining))
    return replies


def wait_for_nodes(grid: Grid, wanted: int, timeout_s: float,
                   schedule: PollSchedule = PollSchedule()) -> list[int]:
    """Node ids once `wanted` nodes are connected, or whoever is there at the deadline.

    In simulation the virtual SuperNodes register a moment after the ServerApp starts; in
    deployment devices come and go, so the caller checks the count against its minimum.
    """
    deadline = time.monotonic() + timeout_s
    interval = schedule.first_interval_s
    while len(nodes := list(grid.get_node_ids())) < wanted and time.monotonic() < deadline:
        time.sleep(interval)
        interval = schedule.next(interval)
    return nodes
