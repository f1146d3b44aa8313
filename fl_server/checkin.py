"""The roll call before a round (and before a collection): who is there, and who they are.

A `query.checkin` message goes to every connected node; each answers with a
`privacy.wire.checkin.CheckinAnswer`. Without a registry every in-fleet answer is taken
at its word; with one (`CheckinGate`), the query carries a fresh nonce and only nodes that
sign it with the enrollment key of an eligible device are admitted.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from fl_server.registry.identity import CheckinGate
from fl_server.round_plan import Plan
from privacy.wire.checkin import CheckinAnswer
from privacy.wire.keys import CHALLENGE_KEY, CHECKIN, CONFIG_KEY, DEVICE_KEY
from strategies.messaging import send_and_collect, wait_for_nodes

log = logging.getLogger("fedmsr.checkin")


@dataclass(frozen=True)
class Roster:
    """The admitted nodes of a roll call: node id -> device index, and every answer."""

    devices: Mapping[int, int]
    answers: Mapping[int, CheckinAnswer]

    def __len__(self) -> int:
        return len(self.devices)


def checkin(grid: Grid, plan: Plan, server_round: int,
            gate: CheckinGate | None = None) -> Roster:
    """Roll call: every in-fleet answer, and the nodes admitted (see the module docstring).

    A malformed answer is left out (and logged), never a failed round.
    """
    waits = plan.waits
    nodes = wait_for_nodes(grid, plan.fleet.num_devices, waits.fleet_s) if gate is None \
        else gate.wait_for_devices(grid, waits.fleet_s)
    content = RecordDict({CONFIG_KEY: plan.instructions(server_round)})
    if gate is not None:
        content[CHALLENGE_KEY] = gate.challenge().to_record()
    messages = [Message(content=content, message_type=CHECKIN, dst_node_id=node_id)
                for node_id in nodes]
    answers: dict[int, CheckinAnswer] = {}
    for reply in send_and_collect(grid, messages, waits.reply_s):
        if reply.has_error() or DEVICE_KEY not in reply.content:
            continue
        node = reply.metadata.src_node_id
        try:
            answer = CheckinAnswer.from_record(reply.content[DEVICE_KEY])
        except ValueError as exc:
            log.warning("round %d: node %d: %s", server_round, node, exc)
            continue
        if answer.in_fleet:
            answers[node] = answer
    if gate is not None:
        return Roster(gate.admit(answers), answers)
    return Roster({node: answer.device for node, answer in answers.items()}, answers)
