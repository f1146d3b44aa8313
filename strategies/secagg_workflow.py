"""Secure aggregation of one training round as ordinary Flower messages (server side).

Drives `SecAggServer` through the five stages with `strategies.messaging.send_and_collect`
(fast polling, a deadline per stage; whoever has not answered by then has dropped):

  query.secagg_advertise -> query.secagg_share -> train.secagg_masked
    -> query.secagg_consistency (every survivor signs the survivor set) -> query.secagg_unmask

Replaces "send train messages + FedAvg" in a round: the devices train in the masked stage
and upload delta = (their new weights - the global weights), clipped to [-clip, clip],
fixed-point encoded and weighted by their number of examples; the server learns only the
weighted mean delta and adds it to the global model. Central DP noise, if any, goes on
after this (on the unmasked mean); device-side DP-SGD happened before masking, so the
budget accounting is unchanged. Participants are identified by device index (what the
registry issues identities for); the graph seed is public and derived from the round.

The threshold follows the collusion bound C (`max_colluding`): t = floor((k + C) / 2) + 1
unless set explicitly, and the consistency check needs more than (n + C) / 2 signatures,
so C colluding enrolled devices and the server together still learn only the sum.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from privacy.secagg import codec
from privacy.secagg.encoding import EncodingSpec
from privacy.secagg.errors import ProtocolAbort, SecAggError
from privacy.secagg.graph import default_neighbours, threshold_for
from privacy.secagg.messages import RoundSetup
from privacy.wire.keys import SECAGG_ADVERTISE as ADVERTISE
from privacy.wire.keys import SECAGG_CONSISTENCY as CONSISTENCY
from privacy.wire.keys import SECAGG_KEY, SECAGG_SIM_STATE_KEY
from privacy.wire.keys import SECAGG_MASKED as MASKED
from privacy.wire.keys import SECAGG_SHARE as SHARE
from privacy.wire.keys import SECAGG_UNMASK as UNMASK
from strategies.messaging import send_and_collect
from strategies.secagg_server import AggregateResult, SecAggServer

#: Key exchange and unmasking are small and fast; training gets the round's timeout.
QUICK_STAGE_TIMEOUT_S = 120.0


#: (sent masked-stage messages, their replies, the round's setup) -> the replies to keep.
MaskedScreen = Callable[[Sequence[Message], list[Message], RoundSetup], list[Message]]


@dataclass(frozen=True)
class SecAggParams:
    """neighbours/threshold 0 = the defaults (2*ceil(log2 n), floor((k + C)/2) + 1)."""

    neighbours: int = 0
    threshold: int = 0
    clip: float = 1.0
    mod_bits: int = 32
    max_weight: int = 1
    enrollment_seed: int = 0
    round_context: bytes = b""
    #: Where devices find their enrollment keys and the registry identities in a
    #: registry-backed simulation ("bundles-dir", "identities-file"); empty: the
    #: deterministic simulated enrollment (or the node's own --node-config files).
    credentials: tuple[tuple[str, str], ...] = ()
    #: C: enrolled devices that may collude with the server (chooses t and the quorum).
    max_colluding: int = 0
    #: L2 bound each device clips its update to; the decoded mean is checked against it
    #: (0: no bound, no check).
    norm_bound: float = 0.0
    #: Simulation only: the run's per-device state root (where a simulated device without
    #: a bundle records the rounds it sent a masked input for).
    sim_state_root: str = ""


@dataclass(frozen=True)
class SecureRound:
    """What the federation loop needs: contributors' replies (metrics, DP events, no
    update), the new global arrays, and timings."""

    replies: list[Message]
    arrays: ArrayRecord
    metrics: dict[str, float]
    result: AggregateResult
    train_s: float
    aggregate_s: float
    #: Wall time of each protocol stage (metrics: `secagg_<stage>` phases).
    phases_s: dict[str, float]
    #: How far fixed-point encoding can move one device's update, in L2 (sqrt(d) x half
    #: a quantisation step): central DP widens its sensitivity by this much.
    rounding_l2: float = 0.0


def round_setup(params: SecAggParams, participants: Sequence[int],
                vector_length: int) -> RoundSetup:
    n = len(participants)
    if n < 2:
        raise ProtocolAbort(f"secure aggregation needs at least 2 devices, {n} sampled")
    k = params.neighbours or default_neighbours(n)
    k = min(k, n - 1)
    t = params.threshold or threshold_for(k, params.max_colluding)
    seed = hashlib.sha256(b"fedmsr-secagg-graph/" + params.round_context).digest()
    spec = EncodingSpec(params.clip, params.mod_bits, params.max_weight, n, params.norm_bound)
    return RoundSetup(params.round_context, tuple(sorted(participants)), k, t, seed, spec,
                      vector_length, params.max_colluding)


def secure_train_round(grid: Any, train_messages: Sequence[Message], devices: dict[int, int],
                       global_arrays: dict[str, np.ndarray], params: SecAggParams,
                       train_timeout_s: float,
                       stage_timeout_s: float = QUICK_STAGE_TIMEOUT_S,
                       screen_masked: MaskedScreen | None = None) -> SecureRound:
    """Run one securely aggregated training round; raises ProtocolAbort with no sum.

    `screen_masked(sent, replies, setup)` (update validation) returns the masked-input
    replies to keep; a dropped one counts as a dropout, its masks recovered as usual.
    """
    node_of = {devices[m.metadata.dst_node_id]: m.metadata.dst_node_id for m in train_messages}
    train_of = {m.metadata.dst_node_id: m for m in train_messages}
    setup = round_setup(params, sorted(node_of), int(codec.flatten(global_arrays).size))
    server = SecAggServer(setup)
    started = time.perf_counter()
    setup_flat = {**codec.setup_to_flat(setup), "enrollment-seed": params.enrollment_seed,
                  **dict(params.credentials),
                  **({SECAGG_SIM_STATE_KEY: params.sim_state_root}
                     if params.sim_state_root else {})}

    def exchange(message_type: str, payloads: dict[int, dict[str, Any]], timeout: float,
                 base: Callable[[int], RecordDict] | None = None,
                 screen: MaskedScreen | None = None) -> dict[int, Message]:
        out = []
        for device, payload in payloads.items():
            content = base(device) if base else RecordDict()
            content[SECAGG_KEY] = ConfigRecord(payload)
            out.append(Message(content=content, message_type=message_type,
                               dst_node_id=node_of[device]))
        by_device: dict[int, Message] = {}
        node_to_device = {node: d for d, node in node_of.items()}
        replies = send_and_collect(grid, out, timeout)
        for reply in replies if screen is None else screen(out, replies, setup):
            sender = node_to_device.get(reply.metadata.src_node_id)
            if sender is not None and not reply.has_error() and SECAGG_KEY in reply.content:
                by_device[sender] = reply
        return by_device

    phases: dict[str, float] = {}
    adverts = exchange(ADVERTISE, {d: setup_flat for d in node_of}, stage_timeout_s)
    relayed = server.collect_keys(_parsed(adverts, codec.advertise_from_flat))
    phases["setup"] = time.perf_counter() - started
    shared = exchange(SHARE, {d: codec.neighbour_keys_to_flat(m) for d, m in relayed.items()},
                      stage_timeout_s)
    delivered = server.collect_shares(_parsed(shared, codec.share_keys_from_flat))
    phases["share_keys"] = time.perf_counter() - started - phases["setup"]

    def train_content(device: int) -> RecordDict:
        original = train_of[node_of[device]].content
        return RecordDict({name: original[name] for name in original})

    train_started = time.perf_counter()
    masked = exchange(MASKED, {d: codec.delivery_to_flat(m) for d, m in delivered.items()},
                      train_timeout_s, base=train_content, screen=screen_masked)
    train_s = time.perf_counter() - train_started
    announced = server.collect_masked(
        _parsed(masked, lambda f: codec.masked_from_flat(f, setup.encoding)))
    phases["collect_masked"] = time.perf_counter() - train_started
    consistency_started = time.perf_counter()
    signed = exchange(CONSISTENCY, {d: codec.consistency_request_to_flat(q)
                                    for d, q in announced.items()}, stage_timeout_s)
    requests = server.collect_signatures(_parsed(signed, codec.consistency_signature_from_flat))
    phases["consistency"] = time.perf_counter() - consistency_started
    unmask_started = time.perf_counter()
    answers = exchange(UNMASK, {d: codec.unmask_request_to_flat(q) for d, q in requests.items()},
                       stage_timeout_s)
    result = server.finish(_parsed(answers, codec.unmask_reply_from_flat))
    phases["unmask"] = time.perf_counter() - unmask_started
    mean_delta = codec.unflatten(result.mean, {k: np.asarray(v, dtype=np.float64)
                                               for k, v in global_arrays.items()})
    new = {k: (np.asarray(global_arrays[k], dtype=np.float64) + mean_delta[k])
           .astype(np.asarray(global_arrays[k]).dtype) for k in global_arrays}
    record = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in new.items()})
    contributors = set(result.contributors)
    replies = [masked[d] for d in sorted(masked) if d in contributors]
    total_s = time.perf_counter() - started
    rounding_l2 = float(np.sqrt(setup.vector_length)) * setup.encoding.quantisation_bound
    return SecureRound(replies, record, {}, result, train_s, total_s - train_s, phases,
                       rounding_l2)


def _parsed(replies: dict[int, Message], parse: Callable[[dict[str, Any]], Any]) -> list[Any]:
    """Each reply as a protocol message; a malformed one, or one in which a node speaks for
    another device than its own, counts as a dropout (it cannot derail the server)."""
    out = []
    for device, reply in sorted(replies.items()):
        try:
            message = parse(dict(cast(ConfigRecord, reply.content[SECAGG_KEY])))
        except (KeyError, TypeError, ValueError, SecAggError):
            continue
        if message.sender == device:
            out.append(message)
    return out
