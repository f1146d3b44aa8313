"""Every train reply is checked before it can touch the model; a bad one is dropped, with why.

A fleet is large, flaky and partly hostile, and one NaN, one mis-shaped array or one update
a million times too large is enough to wreck a FedAvg model (or crash the aggregation
and lose the round for everybody). So each reply to a round's train messages passes, in
order, the checks below; the first one it fails names its *reason* (a small fixed set:
it is a Prometheus label) and a one-line detail, and the reply is left out of the round.

=============  ===========================================================================
reason         the reply is dropped when ...
=============  ===========================================================================
wrong_run      its Flower run id, or the run id it echoes, is not this run's
stale_round    it answers no train message of this round, answers one twice, or echoes
               another round or another round nonce (an earlier round's update replayed)
identity       it comes from another node than the one the train message went to, from a
               node that did not check in, or claims another device than that node's
malformed      records other than the expected ones, array names not the global model's,
               an unparsable DP event, array bytes that do not decode to their header
shape          an array's shape differs from the global model's
dtype          an array's dtype differs from the global model's
non_finite     an array holds NaN or +-Inf
norm_bound     ``||w_i - w_global||_2`` (all arrays, float64) exceeds ``max_update_norm``
metrics        a metric of the wrong type or out of range: ``num-examples`` not an int in
               ``1..max_examples`` (the plan's clips per device), a non-finite value,
               ``train_seconds`` outside ``[0, round timeout]``, a negative count, ...
=============  ===========================================================================

Freshness works on two levels. Flower's metadata: a reply must answer one of the message
ids this round sent (so a reply to an earlier round's message, re-delivered, is refused).
Content: the server stamps each round's train config with the run id and a fresh random
nonce (:class:`RoundTicket`) and the device echoes them with the round number
(``privacy.wire.instructions.round_echo``), so an earlier round's reply *content* re-sent under a
new message is refused too.

Under secure aggregation the server never sees an individual update, only masked vectors:
it checks the metadata, identity, echo, metrics and the masked vector's length and dtype
(``secure_vector``); finiteness and the norm bound cannot be checked there and must be
enforced on the device (SecAgg+ clips each coordinate of the delta before encoding; see
docs/robustness.md).
"""

from __future__ import annotations

import math
import secrets
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord

from privacy.checks import is_finite, is_int
from privacy.wire.dp_event import dp_event_from_record
from privacy.wire.keys import (
    ARRAYS_KEY,
    DEVICE_KEY,
    DP_EVENT_KEY,
    METRICS_KEY,
    SECAGG_KEY,
    WEIGHT_KEY,
)
from privacy.wire.records import config_bytes, config_str

if TYPE_CHECKING:
    from privacy.secagg.messages import RoundSetup

_Record = TypeVar("_Record", ArrayRecord, ConfigRecord, MetricRecord)

#: Every rejection reason, in the order the checks run (Prometheus label values).
REASONS = ("wrong_run", "stale_round", "identity", "malformed", "shape", "dtype",
           "non_finite", "norm_bound", "metrics", "revoked")
#: A generous but finite default for ``RunConfig.max_update_norm``: an honest local round
#: of the default encoder (217,960 parameters, Adam, lr 2e-3) moves it by 0.9-1.4 in L2.
DEFAULT_MAX_UPDATE_NORM = 100.0


class Rejected(Exception):
    """Raised inside the checks: the reply is dropped for `reason` (one of REASONS)."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class RoundTicket:
    """What a round's train replies must echo: run id, round number, a fresh nonce."""

    run_id: str
    server_round: int
    nonce: str = field(default_factory=lambda: secrets.token_hex(16))

    def stamp(self, config: ConfigRecord) -> ConfigRecord:
        """`config` with the run id and nonce added (the round number is already in it)."""
        config["run-id"] = self.run_id
        config["round-nonce"] = self.nonce
        config["server-round"] = self.server_round
        return config

    def check_echo(self, device_record: ConfigRecord) -> None:
        if device_record.get("run-id") != self.run_id:
            raise Rejected("wrong_run", f"echoes run {device_record.get('run-id')!r}, "
                                        f"this is run {self.run_id!r}")
        if device_record.get("server-round") != self.server_round:
            raise Rejected("stale_round", f"echoes round {device_record.get('server-round')!r},"
                                          f" this is round {self.server_round}")
        if device_record.get("round-nonce") != self.nonce:
            raise Rejected("stale_round", "echoes another round's nonce (a replayed update)")


@dataclass(frozen=True)
class ValidationPolicy:
    """The bounds a reply's update and metrics must respect (from the run's config)."""

    max_update_norm: float = DEFAULT_MAX_UPDATE_NORM
    #: Most examples a device can train on: the plan's clips per day x training days.
    max_examples: int = 1
    #: A device cannot have trained for longer than the server has waited for its reply:
    #: the time since the instructions left (the caller sets it when it screens).
    max_train_seconds: float = math.inf


@dataclass(frozen=True)
class SecureVector:
    """Length and dtype every masked vector of a SecAgg+ round must have."""

    length: int
    dtype: np.dtype


@dataclass(frozen=True)
class Rejection:
    """One dropped reply, for the round's history record."""

    node_id: int
    device: int | None
    reason: str
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node_id, "device": self.device, "reason": self.reason,
                "detail": self.detail}


@dataclass
class Screening:
    """The outcome of validating one round's replies."""

    accepted: list[Message] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    #: Replies whose sender, round and DP event are established (accepted, or dropped only
    #: for their content): the device did release an update to the server, so its DP event
    #: still counts in the budget ledger (never under-count).
    released: list[Message] = field(default_factory=list)
    #: True once a plain (not secure-aggregation) round's replies were screened.
    plain: bool = False

    def absorb(self, other: Screening) -> None:
        """Take over `other`'s outcome (the round's record object is created up front)."""
        self.accepted, self.rejected = other.accepted, other.rejected
        self.released, self.plain = other.released, other.plain

    def withdraw(self, reasons: Mapping[int, str], devices: Mapping[int, int]) -> list[Message]:
        """Drop the accepted replies of the nodes in `reasons` (node id -> detail) as
        `revoked`: valid updates whose device lost its standing after it checked in. They
        stay in `released` (the server received them: their DP events count). Returns the
        replies still accepted."""
        kept = []
        for reply in self.accepted:
            node = reply.metadata.src_node_id
            if node in reasons:
                self.rejected.append(Rejection(node, devices.get(node), "revoked",
                                               reasons[node]))
            else:
                kept.append(reply)
        self.accepted = kept
        return list(kept)

    def released_with(self, contributors: Sequence[Message]) -> list[Message]:
        """The replies whose DP events count. Plain round: every released update, even a
        dropped one (the server saw it). SecAgg+: the contributors only, since a masked
        vector left out of the sum is never unmasked and reveals nothing."""
        return list(self.released) if self.plain else list(contributors)

    def counts(self) -> dict[str, int]:
        """{reason: count}, reasons in check order, zero counts left out."""
        found = Counter(r.reason for r in self.rejected)
        return {reason: found[reason] for reason in REASONS if found[reason]}

    def rejected_devices(self) -> tuple[dict[str, Any], ...]:
        """Each rejection (device, node, reason, detail) for the round's history record."""
        return tuple(r.to_dict() for r in sorted(
            self.rejected, key=lambda r: (r.device is None, r.device, r.node_id)))

    def summary(self) -> str:
        """E.g. ' (3 rejected: non_finite 1, shape 2)', or '' when none was."""
        if not self.rejected:
            return ""
        parts = ", ".join(f"{reason} {n}" for reason, n in self.counts().items())
        return f" ({len(self.rejected)} rejected: {parts})"


class UpdateValidator:
    """Checks one round's train replies against what the round sent and the global model.

    `sent` are the train messages as pushed (their message ids set by the grid);
    `devices` maps each checked-in node id to its device index. Give `global_arrays` for
    a plain round, or `secure_vector` for a SecAgg+ round.
    """

    def __init__(self, ticket: RoundTicket, policy: ValidationPolicy, sent: Sequence[Message],
                 devices: Mapping[int, int], global_arrays: Mapping[str, np.ndarray] | None = None,
                 secure_vector: SecureVector | None = None) -> None:
        if (global_arrays is None) == (secure_vector is None):
            raise ValueError("give exactly one of global_arrays (plain) or secure_vector")
        self.ticket, self.policy, self.devices = ticket, policy, devices
        self.sent = {m.metadata.message_id: m for m in sent}
        self.run_ids = {m.metadata.run_id for m in sent}
        self.global_arrays = global_arrays
        self.secure_vector = secure_vector
        self._answered: set[str] = set()

    def screen(self, replies: Iterable[Message]) -> Screening:
        """Split replies (in the given order) into accepted and rejected; error replies,
        which carry no update, are neither (the round counts them as failures)."""
        out = Screening()
        for reply in replies:
            if reply.has_error():
                continue
            try:
                self._check_sender(reply)
                out.released.append(reply)
                self._check_update(reply)
            except Rejected as exc:
                out.rejected.append(Rejection(reply.metadata.src_node_id,
                                              self.devices.get(reply.metadata.src_node_id),
                                              exc.reason, exc.detail))
            else:
                out.accepted.append(reply)
        return out

    # -- who sent it, for which round ---------------------------------------------------

    def _check_sender(self, reply: Message) -> None:
        meta = reply.metadata
        if meta.run_id not in self.run_ids:
            raise Rejected("wrong_run", f"Flower run {meta.run_id}, this round's is "
                                        f"{sorted(self.run_ids)}")
        sent = self.sent.get(meta.reply_to_message_id)
        if sent is None:
            raise Rejected("stale_round", "answers no train message of this round")
        if meta.reply_to_message_id in self._answered:
            raise Rejected("stale_round", "a second reply to one train message")
        self._answered.add(meta.reply_to_message_id)
        if meta.src_node_id != sent.metadata.dst_node_id:
            raise Rejected("identity", f"node {meta.src_node_id} answers the message sent to "
                                       f"node {sent.metadata.dst_node_id}")
        if meta.src_node_id not in self.devices:
            raise Rejected("identity", f"node {meta.src_node_id} did not check in this round")
        record = _record(reply, DEVICE_KEY, ConfigRecord, "identity")
        if record.get("device") != self.devices[meta.src_node_id]:
            raise Rejected("identity", f"claims device {record.get('device')!r}; node "
                                       f"{meta.src_node_id} checked in as device "
                                       f"{self.devices[meta.src_node_id]}")
        self.ticket.check_echo(record)
        if DP_EVENT_KEY in reply.content:
            try:
                dp_event_from_record(_record(reply, DP_EVENT_KEY, ConfigRecord, "malformed"))
            except (KeyError, TypeError, ValueError) as exc:
                raise Rejected("malformed", f"unparsable DP event ({exc})") from None

    # -- what it carries ------------------------------------------------------------------

    def _check_update(self, reply: Message) -> None:
        content = reply.content
        expected_configs = {DEVICE_KEY, DP_EVENT_KEY}
        if self.secure_vector is not None:
            expected_configs.add(SECAGG_KEY)
        _expect_keys("config records", set(content.config_records), expected_configs,
                     required={DEVICE_KEY} | ({SECAGG_KEY} if self.secure_vector else set()))
        _expect_keys("metric records", set(content.metric_records), {METRICS_KEY},
                     required={METRICS_KEY})
        if self.global_arrays is not None:
            _expect_keys("array records", set(content.array_records), {ARRAYS_KEY},
                         required={ARRAYS_KEY})
            arrays = self._decoded_arrays(_record(reply, ARRAYS_KEY, ArrayRecord, "malformed"))
            self._check_values(arrays)
        else:
            _expect_keys("array records", set(content.array_records), set(), required=set())
            self._check_masked(_record(reply, SECAGG_KEY, ConfigRecord, "malformed"))
        self._check_metrics(_record(reply, METRICS_KEY, MetricRecord, "malformed"))

    def _decoded_arrays(self, record: ArrayRecord) -> dict[str, np.ndarray]:
        assert self.global_arrays is not None
        names, expected = set(record), set(self.global_arrays)
        if names != expected:
            missing, extra = sorted(expected - names), sorted(names - expected)
            raise Rejected("malformed", f"array names differ from the global model's "
                                        f"(missing {missing[:3]}, unexpected {extra[:3]})")
        decoded = {}
        for name in sorted(names):
            want, array = np.asarray(self.global_arrays[name]), record[name]
            if tuple(array.shape) != want.shape:
                raise Rejected("shape", f"{name} has shape {tuple(array.shape)}, "
                                        f"the global model's is {want.shape}")
            if str(array.dtype) != str(want.dtype):
                raise Rejected("dtype", f"{name} has dtype {array.dtype}, "
                                        f"the global model's is {want.dtype}")
            try:
                value = array.numpy()
            except (TypeError, ValueError, OSError, EOFError) as exc:
                raise Rejected("malformed", f"{name} does not decode ({exc})") from None
            if value.shape != want.shape or value.dtype != want.dtype:
                raise Rejected("malformed", f"{name} decodes to {value.dtype}{value.shape}, "
                                            f"its header says {array.dtype}{tuple(array.shape)}")
            decoded[name] = value
        return decoded

    def _check_values(self, arrays: Mapping[str, np.ndarray]) -> None:
        assert self.global_arrays is not None
        for name, value in arrays.items():
            if np.issubdtype(value.dtype, np.inexact) and not np.all(np.isfinite(value)):
                bad = int(np.count_nonzero(~np.isfinite(value)))
                raise Rejected("non_finite", f"{name} holds {bad} NaN/Inf value(s)")
        norm = update_norm(self.global_arrays, arrays)
        if not norm <= self.policy.max_update_norm:
            raise Rejected("norm_bound", f"update norm {norm:.4g} exceeds the bound "
                                         f"{self.policy.max_update_norm:g}")

    def _check_masked(self, record: ConfigRecord) -> None:
        assert self.secure_vector is not None
        spec = self.secure_vector
        try:
            dtype = np.dtype(config_str(record, "dtype"))
            vector = config_bytes(record, "vector")
        except (KeyError, TypeError, ValueError) as exc:
            raise Rejected("malformed", f"masked input without a valid vector ({exc})") from None
        if dtype.newbyteorder("=") != spec.dtype.newbyteorder("="):
            raise Rejected("dtype", f"masked vector has dtype {dtype}, expected {spec.dtype}")
        if len(vector) != spec.length * spec.dtype.itemsize:
            raise Rejected("shape", f"masked vector has {len(vector) // max(dtype.itemsize, 1)} "
                                    f"elements, expected {spec.length}")

    def _check_metrics(self, metrics: MetricRecord) -> None:
        required = {"train_seconds"} | ({WEIGHT_KEY} if self.secure_vector is None else set())
        missing = sorted(required - set(metrics))
        if missing:
            raise Rejected("metrics", f"missing {', '.join(missing)}")
        for name, value in metrics.items():
            _check_metric(name, value, self.policy)


#: Range checks of the metrics a device reports (`fl_client.trainer`); any other metric
#: must be a finite number (aggregators average the keys all accepted replies share).
_NON_NEGATIVE = ("kl_bits", "steps", "examples_seen", "empty_steps")


def _check_metric(name: str, value: Any, policy: ValidationPolicy) -> None:
    if name == WEIGHT_KEY:
        if not is_int(value) or not 1 <= value <= policy.max_examples:
            raise Rejected("metrics", f"{WEIGHT_KEY} {value!r} is not an integer in "
                                      f"1..{policy.max_examples}")
        return
    if not is_finite(value):
        raise Rejected("metrics", f"{name} {value!r} is not a finite number")
    if name in _NON_NEGATIVE and value < 0:
        raise Rejected("metrics", f"{name} {value!r} is negative")
    if name == "sample_rate" and not 0 < value <= 1:
        raise Rejected("metrics", f"sample_rate {value!r} is not in (0, 1]")
    if name == "train_seconds" and not 0 <= value <= policy.max_train_seconds:
        raise Rejected("metrics", f"train_seconds {value!r} is not in "
                                  f"[0, {policy.max_train_seconds:g}]")


def screen_round(screening: Screening, ticket: RoundTicket, policy: ValidationPolicy,
                 sent: Sequence[Message], replies: Iterable[Message], devices: Mapping[int, int],
                 global_arrays: Mapping[str, np.ndarray] | None = None,
                 secure_setup: RoundSetup | None = None) -> list[Message]:
    """Validate one round's train replies into `screening`; return the accepted ones.

    Plain rounds give `global_arrays`; SecAgg+ rounds give the round's `secure_setup`,
    from which the masked vectors' length and dtype follow.
    """
    vector = None if secure_setup is None else SecureVector(
        secure_setup.encoding.encoded_length(int(secure_setup.vector_length)),
        np.dtype(secure_setup.encoding.dtype))
    outcome = UpdateValidator(ticket, policy, sent, devices, global_arrays, vector).screen(replies)
    outcome.plain = secure_setup is None
    screening.absorb(outcome)
    return list(outcome.accepted)


def update_norm(global_arrays: Mapping[str, np.ndarray], arrays: Mapping[str, np.ndarray]) -> float:
    """L2 norm of (arrays - global_arrays) over every array, in float64."""
    total = 0.0
    for name, base in global_arrays.items():
        delta = np.asarray(arrays[name], dtype=np.float64) - np.asarray(base, dtype=np.float64)
        total += float(np.dot(delta.ravel(), delta.ravel()))
    return math.sqrt(total)


def _record(reply: Message, key: str, kind: type[_Record], reason: str) -> _Record:
    """`reply.content[key]` if it is a `kind` record, else Rejected(reason)."""
    record = reply.content.get(key)
    if not isinstance(record, kind):
        raise Rejected(reason, f"no {kind.__name__} {key!r} in the reply")
    return record


def _expect_keys(what: str, found: set[str], allowed: set[str], required: set[str]) -> None:
    """Exactly the records a device sends: Flower's aggregators give up on a whole round
    when one reply has an extra or missing record, so such a reply must not reach them."""
    if not required <= found or not found <= allowed:
        optional = sorted(allowed - required)
        raise Rejected("malformed", f"{what} {sorted(found)}, expected {sorted(required)}"
                                    + (f" (+ optional {optional})" if optional else ""))
