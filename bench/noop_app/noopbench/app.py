"""A Flower app whose ClientApp answers at once: what is left of a round is the transport.

The ServerApp times the same no-op round with Flower's `Grid.send_and_receive` and with
fedmsr's `send_and_collect`, alternating, and writes the times as JSON to `out`.
"""

from __future__ import annotations

import json
import time

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from strategies.messaging import send_and_collect, wait_for_nodes

client = ClientApp()
server = ServerApp()


@client.train()
def _noop(msg: Message, context: Context) -> Message:  # noqa: ARG001
    return Message(RecordDict({"m": MetricRecord({"ok": 1})}), reply_to=msg)


@server.main()
def _main(grid: Grid, context: Context) -> None:
    nodes = wait_for_nodes(grid, int(context.run_config["nodes"]), 120)

    def msgs() -> list[Message]:
        return [Message(RecordDict(), message_type="train", dst_node_id=n) for n in nodes]

    send_and_collect(grid, msgs(), 120)  # warm up
    times: dict[str, list[float]] = {"flower": [], "fedmsr": []}
    for _ in range(int(context.run_config["repeats"])):
        for name, collect in (("flower", lambda: list(grid.send_and_receive(msgs(), timeout=120))),
                              ("fedmsr", lambda: send_and_collect(grid, msgs(), 120))):
            start = time.perf_counter()
            replies = collect()
            times[name].append(time.perf_counter() - start)
            assert len(replies) == len(nodes)
    with open(str(context.run_config["out"]), "w") as handle:
        json.dump(times, handle)
