"""Update validation: crafted train replies, one per way a device can be wrong or hostile.

Each hostile reply is an honest one with one thing changed, so the test also shows that
exactly that change is what gets it dropped (and the honest original passes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from fl_client import handlers
from fl_server.config import RunConfig
from fl_server.federation import Plan
from monitoring.metrics import REJECT_REASONS
from privacy.encoder import build_model, state_to_numpy
from privacy.wire.arrays import record_of
from privacy.wire.keys import ARRAYS_KEY, CONFIG_KEY, DEVICE_KEY, DP_EVENT_KEY, METRICS_KEY
from strategies.update_validation import (
    REASONS,
    Rejected,
    RoundTicket,
    Screening,
    SecureVector,
    ValidationPolicy,
    screen_round,
    update_norm,
)

GLOBAL = {"w": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
          "b": np.zeros(4, dtype=np.float32)}
DEVICES = {101: 0, 102: 1, 103: 2}  # node id -> device index (as checked in)
POLICY = ValidationPolicy(max_update_norm=10.0, max_examples=8, max_train_seconds=60.0)


@pytest.fixture
def round_(task_identity):
    """This round's ticket and its train messages as pushed (message ids set)."""
    ticket = RoundTicket("run-a", 2)
    sent = [_pushed(node, ticket) for node in DEVICES]
    return ticket, sent


def _pushed(node: int, ticket: RoundTicket) -> Message:
    msg = Message(RecordDict({CONFIG_KEY: ticket.stamp(ConfigRecord())}),
                  dst_node_id=node, message_type="train")
    msg.metadata.__dict__["_message_id"] = f"{ticket.nonce[:6]}-{node}"  # what the grid does
    return msg


def honest(sent: Message, delta: float = 0.01, weight: int = 8,
           device: int | None = None) -> Message:
    """The reply a correct device sends: w + delta, its metrics, its device id and echo."""
    arrays = {k: (v + np.float32(delta)).astype(v.dtype) for k, v in GLOBAL.items()}
    device = DEVICES[sent.metadata.dst_node_id] if device is None else device
    config = sent.content[CONFIG_KEY]
    return Message(RecordDict({
        ARRAYS_KEY: ArrayRecord({k: Array(v) for k, v in arrays.items()}),
        METRICS_KEY: MetricRecord({"loss": 1.5, "kl_bits": 3.0, "steps": 1.0,
                                   "train_seconds": 0.2, "num-examples": weight}),
        DEVICE_KEY: ConfigRecord({"device": device, "server-round": config["server-round"],
                                  "run-id": config["run-id"],
                                  "round-nonce": config["round-nonce"]}),
    }), reply_to=sent)


def screen(ticket: RoundTicket, sent: list[Message], replies: list[Message]) -> Screening:
    screening = Screening()
    screen_round(screening, ticket, POLICY, sent, replies, DEVICES, GLOBAL)
    return screening


def with_array(name: str, value: np.ndarray) -> Callable[[Message], None]:
    def change(reply: Message) -> None:
        reply.content[ARRAYS_KEY][name] = Array(value)
    return change


def with_metric(name: str, value) -> Callable[[Message], None]:
    def change(reply: Message) -> None:
        reply.content[METRICS_KEY][name] = value
    return change


def with_echo(name: str, value) -> Callable[[Message], None]:
    def change(reply: Message) -> None:
        reply.content[DEVICE_KEY][name] = value
    return change


def _nan(reply: Message) -> None:
    w = GLOBAL["w"].copy()
    w[1, 2] = np.nan
    reply.content[ARRAYS_KEY]["w"] = Array(w)


def _header_lies(reply: Message) -> None:
    """Header says float32 (3, 4); the bytes hold a (2, 6) array."""
    real = Array(np.zeros((2, 6), dtype=np.float32))
    reply.content[ARRAYS_KEY]["w"] = Array(dtype="float32", shape=(3, 4), stype=real.stype,
                                           data=real.data)


def _extra_record(reply: Message) -> None:
    reply.content["smuggled"] = ConfigRecord({"x": 1})


def _bad_dp_event(reply: Message) -> None:
    reply.content[DP_EVENT_KEY] = ConfigRecord({"sample_rate": "lots"})


def _drop_train_seconds(reply: Message) -> None:
    del reply.content[METRICS_KEY]["train_seconds"]


def _other_device(reply: Message) -> None:
    reply.content[DEVICE_KEY]["device"] = 2  # node 101 checked in as device 0


#: case -> (change, reason, the exact detail the round's record shows).
HOSTILE = {
    "nan": (_nan, "non_finite",
            'w holds 1 NaN/Inf value(s)'),
    "inf": (with_array("b", np.array([0, np.inf, 0, 0], dtype=np.float32)), "non_finite",
            'b holds 1 NaN/Inf value(s)'),
    "shape": (with_array("w", np.zeros((4, 3), dtype=np.float32)), "shape",
              "w has shape (4, 3), the global model's is (3, 4)"),
    "dtype": (with_array("w", GLOBAL["w"].astype(np.float64)), "dtype",
              "w has dtype float64, the global model's is float32"),
    "huge norm": (with_array("w", GLOBAL["w"] + np.float32(100)), "norm_bound",
                  'update norm 346.4 exceeds the bound 10'),
    "missing array": (lambda r: r.content[ARRAYS_KEY].pop("b"), "malformed",
                      "array names differ from the global model's (missing ['b'], "
                      "unexpected [])"),
    "extra array": (with_array("z", np.zeros(1, dtype=np.float32)), "malformed",
                    "array names differ from the global model's (missing [], "
                    "unexpected ['z'])"),
    "header lies": (_header_lies, "malformed",
                    'w decodes to float32(2, 6), its header says float32(3, 4)'),
    "extra record": (_extra_record, "malformed",
                     "config records ['device', 'smuggled'], expected ['device'] "
                     "(+ optional ['dp_event'])"),
    "bad dp event": (_bad_dp_event, "malformed",
                     "unparsable DP event (PoissonGaussianEvent is missing field(s): "
                     "noise_multiplier, steps)"),
    "inflated weight": (with_metric("num-examples", 10**9), "metrics",
                        'num-examples 1000000000 is not an integer in 1..8'),
    "float weight": (with_metric("num-examples", 8.0), "metrics",
                     'num-examples 8.0 is not an integer in 1..8'),
    "nan loss": (with_metric("loss", float("nan")), "metrics",
                 'loss nan is not a finite number'),
    "negative kl": (with_metric("kl_bits", -1.0), "metrics",
                    'kl_bits -1.0 is negative'),
    "slow clock": (with_metric("train_seconds", 1e6), "metrics",
                   'train_seconds 1000000.0 is not in [0, 60]'),
    "bad sample rate": (with_metric("sample_rate", 1.5), "metrics",
                        'sample_rate 1.5 is not in (0, 1]'),
    "list metric": (with_metric("loss", [1.0, 2.0]), "metrics",
                    'loss [1.0, 2.0] is not a finite number'),
    "no train_seconds": (_drop_train_seconds, "metrics",
                         'missing train_seconds'),
    "replayed round": (with_echo("server-round", 1), "stale_round",
                       'echoes round 1, this is round 2'),
    "replayed nonce": (with_echo("round-nonce", "0" * 32), "stale_round",
                       "echoes another round's nonce (a replayed update)"),
    "no echo": (lambda r: r.content[DEVICE_KEY].pop("round-nonce"), "stale_round",
                "echoes another round's nonce (a replayed update)"),
    "other run": (with_echo("run-id", "run-b"), "wrong_run",
                  "echoes run 'run-b', this is run 'run-a'"),
    "other device": (_other_device, "identity",
                     'claims device 2; node 101 checked in as device 0'),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_each_hostile_change_is_dropped_for_its_reason(round_, case) -> None:
    ticket, sent = round_
    change, reason, detail = HOSTILE[case]
    assert screen(ticket, sent, [honest(sent[0])]).accepted  # the original passes
    reply = honest(sent[0])
    change(reply)
    result = screen(ticket, sent, [reply])
    assert result.accepted == [] and len(result.rejected) == 1
    rejection = result.rejected[0]
    assert (rejection.reason, rejection.node_id, rejection.device) == (reason, 101, 0)
    assert rejection.detail == detail  # the whole line an operator reads
    assert result.counts() == {reason: 1}


def test_metadata_checks_replay_identity_and_run(round_) -> None:
    ticket, sent = round_
    earlier = RoundTicket("run-a", 1)
    old_message = _pushed(101, earlier)
    replayed = honest(old_message)  # a reply to round 1's message, delivered again
    relayed = honest(sent[0])
    relayed.metadata.__dict__["_src_node_id"] = 102  # node 102 answers node 101's message
    stranger_msg = Message(RecordDict({CONFIG_KEY: ticket.stamp(ConfigRecord())}),
                           dst_node_id=999, message_type="train")
    stranger_msg.metadata.__dict__["_message_id"] = "to-999"
    stranger = honest(stranger_msg, device=0)  # node 999 never checked in
    other_run = honest(sent[2])
    other_run.metadata.__dict__["_run_id"] = 77
    first, duplicate = honest(sent[1]), honest(sent[1])
    result = screen(ticket, [*sent, stranger_msg],
                    [replayed, relayed, stranger, other_run, first, duplicate])
    reasons = [(r.node_id, r.reason) for r in result.rejected]
    assert reasons == [(101, "stale_round"), (102, "identity"), (999, "identity"),
                       (103, "wrong_run"), (102, "stale_round")]
    assert "answers no train message of this round" in result.rejected[0].detail
    assert "answers the message sent to node 101" in result.rejected[1].detail
    assert "did not check in" in result.rejected[2].detail
    assert "a second reply" in result.rejected[4].detail
    assert result.accepted == [first]


def test_the_round_goes_on_with_the_rest_and_records_why(round_) -> None:
    ticket, sent = round_
    good = honest(sent[0])
    nan = honest(sent[1])
    _nan(nan)
    shape = honest(sent[2])
    with_array("w", np.zeros((1, 4), dtype=np.float32))(shape)
    errored = _error_reply(sent[2])  # no update at all: a failure, not a rejection
    result = screen(ticket, sent, [good, nan, shape, errored])
    assert result.accepted == [good]
    assert list(result.counts().items()) == [("shape", 1), ("non_finite", 1)]  # check order
    assert result.counts() == {"shape": 1, "non_finite": 1}
    assert [(d["device"], d["reason"]) for d in result.rejected_devices()] == [
        (1, "non_finite"), (2, "shape")]
    # Dropped for content, but the server saw them: their DP events still count.
    assert result.released_with([]) == [good, nan, shape]
    assert result.summary() == " (2 rejected: shape 1, non_finite 1)"


def _error_reply(sent: Message) -> Message:
    from flwr.app import Error

    return Message(Error(code=0, reason="device crashed"), reply_to=sent)


def test_identity_failures_are_not_released(round_) -> None:
    ticket, sent = round_
    liar = honest(sent[0])
    _other_device(liar)
    result = screen(ticket, sent, [liar])
    assert result.released_with([]) == []


def test_norm_is_the_l2_distance_over_all_arrays() -> None:
    moved = {"w": GLOBAL["w"] + np.float32(1.0), "b": GLOBAL["b"] + np.float32(2.0)}
    assert update_norm(GLOBAL, moved) == pytest.approx(np.sqrt(12 * 1.0 + 4 * 4.0))
    at_bound = {"w": GLOBAL["w"], "b": GLOBAL["b"] + np.float32(5.0)}  # norm exactly 10
    assert update_norm(GLOBAL, at_bound) == pytest.approx(10.0)


def test_reasons_are_prometheus_labels() -> None:
    assert set(REASONS) <= set(REJECT_REASONS)


def test_secure_rounds_check_what_a_masked_vector_shows(round_) -> None:
    """Under SecAgg+ the server sees masked vectors: length and dtype, metadata, metrics."""
    from strategies.secagg_workflow import SecAggParams, round_setup

    ticket, sent = round_
    setup = round_setup(SecAggParams(max_weight=8), sorted(DEVICES.values()), 15)
    spec = SecureVector(setup.encoding.encoded_length(15), np.dtype(setup.encoding.dtype))
    wrong = np.dtype(np.uint64) if spec.dtype != np.uint64 else np.dtype(np.uint32)

    def masked(msg: Message, vector: np.ndarray) -> Message:
        reply = honest(msg)
        content = RecordDict({
            "secagg": ConfigRecord({"sender": DEVICES[msg.metadata.dst_node_id],
                                    "dtype": vector.dtype.str, "vector": vector.tobytes()}),
            METRICS_KEY: MetricRecord({"steps": 1.0, "train_seconds": 0.3}),
            DEVICE_KEY: reply.content[DEVICE_KEY],
        })
        return Message(content, reply_to=msg)

    good = masked(sent[0], np.arange(spec.length, dtype=spec.dtype))
    short = masked(sent[1], np.arange(spec.length - 1, dtype=spec.dtype))
    wide = masked(sent[2], np.arange(spec.length, dtype=wrong))
    screening = Screening()
    kept = screen_round(screening, ticket, POLICY, sent, [good, short, wide], DEVICES,
                        secure_setup=setup)
    assert kept == [good]
    assert [(r.device, r.reason) for r in screening.rejected] == [(1, "shape"), (2, "dtype")]
    # Only contributors' DP events count under SecAgg+ (a dropped vector is never unmasked).
    assert screening.released_with([good]) == [good]
    arrays_sent = honest(sent[0])  # a plain update where a masked one belongs
    arrays_sent.content["secagg"] = good.content["secagg"]
    plain_in_secure = Screening()
    assert screen_round(plain_in_secure, ticket, POLICY, sent, [arrays_sent], DEVICES,
                        secure_setup=setup) == []
    assert [(r.reason, r.detail) for r in plain_in_secure.rejected] == [
        ("malformed", "array records ['arrays'], expected []")]


def test_a_real_device_reply_passes(task_identity) -> None:
    """The production ClientApp's train reply (one tiny local round) is accepted."""
    cfg = RunConfig(devices=2, clips_per_day=4, days=2, run_id="real").validate()
    plan = Plan.from_config(cfg)
    arrays = state_to_numpy(build_model(plan.model, seed=0))
    ticket = RoundTicket(cfg.run_id, 1)
    msg = Message(RecordDict({ARRAYS_KEY: record_of(arrays),
                              CONFIG_KEY: ticket.stamp(plan.instructions(1))}),
                  dst_node_id=7, message_type="train")
    msg.metadata.__dict__["_message_id"] = "m-7"
    context = Context(run_id=1, node_id=7, node_config={"partition-id": 1},
                      state=RecordDict(), run_config={})
    reply = handlers.train(msg, context)
    policy = dataclasses.replace(POLICY, max_examples=cfg.clips_per_day * cfg.days)
    screening = Screening()
    assert screen_round(screening, ticket, policy, [msg], [reply], {7: 1}, arrays) == [reply]
    assert screening.rejected == []


@pytest.mark.parametrize("node, reason", [(102, "shape"), (103, "stale_round")])
def test_secagg_screening_turns_a_bad_masked_reply_into_a_dropout(task_identity, node,
                                                                  reason) -> None:
    """Through the real SecAgg+ workflow and ClientApp: a truncated masked vector, or a
    masked reply echoing another round, is dropped before unmasking; its masks are
    recovered as for any dropout and the sum is exactly the other devices' FedAvg."""
    from strategies.secagg_workflow import MASKED, secure_train_round
    from tests.test_secagg_workflow import (
        NODES,
        PLAN,
        LoopbackGrid,
        assert_close_to_fedavg,
        params,
        plain_updates,
    )

    class Tampering(LoopbackGrid):
        def push_messages(self, messages):
            messages = list(messages)
            ids = super().push_messages(messages)
            for mid, msg in zip(ids, messages, strict=True):
                reply = self.replies[mid]
                if msg.metadata.message_type != MASKED or reply is None:
                    continue
                if msg.metadata.dst_node_id == node == 102:
                    vector = bytes(reply.content["secagg"]["vector"])
                    reply.content["secagg"]["vector"] = vector[:-8]
                if msg.metadata.dst_node_id == node == 103:
                    reply.content[DEVICE_KEY]["server-round"] = 0
            return ids

    initial, _ = plain_updates()
    ticket = RoundTicket("run-s", 1)
    content = RecordDict({ARRAYS_KEY: record_of(initial),
                          CONFIG_KEY: ticket.stamp(PLAN.instructions(1))})
    messages = [Message(content=content, message_type="train", dst_node_id=n) for n in NODES]
    screening = Screening()
    secure = secure_train_round(
        Tampering(), messages, NODES, initial, params(), 5.0, 5.0,
        screen_masked=lambda sent, got, setup: screen_round(
            screening, ticket, POLICY, sent, got, NODES, secure_setup=setup))
    assert {r.device: r.reason for r in screening.rejected} == {NODES[node]: reason}
    rest = set(NODES.values()) - {NODES[node]}
    assert set(secure.result.contributors) == rest
    assert_close_to_fedavg(secure, rest)


def test_more_hostile_replies_are_named_whole(round_) -> None:
    """Array bytes that are not an array, four missing arrays (three are named), a missing
    or extra metric record: each dropped with the line an operator reads."""
    ticket, sent = round_

    def rejected(change: Callable[[Message], None]) -> tuple[str, str]:
        reply = honest(sent[0])
        change(reply)
        [r] = screen(ticket, sent, [reply]).rejected
        return r.reason, r.detail

    def garbage(reply: Message) -> None:
        reply.content[ARRAYS_KEY]["w"] = Array(dtype="float32", shape=(3, 4),
                                               stype="numpy.ndarray", data=b"not an array")

    reason, detail = rejected(garbage)
    assert reason == "malformed" and detail.startswith("w does not decode (")

    def no_metrics(reply: Message) -> None:
        del reply.content[METRICS_KEY]

    assert rejected(no_metrics) == ("malformed", "metric records [], expected ['metrics']")

    def extra_metrics(reply: Message) -> None:
        reply.content["more"] = MetricRecord({"x": 1.0})

    assert rejected(extra_metrics) == (
        "malformed", "metric records ['metrics', 'more'], expected ['metrics']")

    def many_unexpected(reply: Message) -> None:
        for i in range(5):
            reply.content[ARRAYS_KEY][f"z{i}"] = Array(np.zeros(1, np.float32))

    assert rejected(many_unexpected) == (  # the first three named, as for missing ones
        "malformed", "array names differ from the global model's (missing [], "
                     "unexpected ['z0', 'z1', 'z2'])")

    def extra_arrays(reply: Message) -> None:
        reply.content["more"] = ArrayRecord({"x": Array(np.zeros(1, np.float32))})

    assert rejected(extra_arrays) == (
        "malformed", "array records ['arrays', 'more'], expected ['arrays']")

    wide = {f"a{i}": np.zeros(1, np.float32) for i in range(5)}
    screening = Screening()
    reply = honest(sent[0])
    screen_round(screening, ticket, POLICY, sent, [reply], DEVICES, {**GLOBAL, **wide})
    assert screening.rejected[0].detail == (
        "array names differ from the global model's (missing ['a0', 'a1', 'a2'], "
        "unexpected [])")
    assert str(Rejected("metrics", "x is wrong")) == "metrics: x is wrong"


def test_an_update_exactly_on_the_norm_bound_passes(round_) -> None:
    ticket, sent = round_
    reply = honest(sent[0], delta=0.0)
    with_array("b", GLOBAL["b"] + np.float32(5.0))(reply)  # sqrt(4 * 25) = 10 = the bound
    assert screen(ticket, sent, [reply]).accepted == [reply]
    with_array("b", GLOBAL["b"] + np.float32(5.0001))(reply)
    assert [r.reason for r in screen(ticket, sent, [reply]).rejected] == ["norm_bound"]


def test_a_missing_run_echo_is_the_wrong_run(round_) -> None:
    ticket, sent = round_
    reply = honest(sent[0])
    del reply.content[DEVICE_KEY]["run-id"]
    [r] = screen(ticket, sent, [reply]).rejected
    assert (r.reason, r.detail) == ("wrong_run", "echoes run None, this is run 'run-a'")


def test_revocation_withdraws_accepted_updates_and_records_why(round_) -> None:
    """Screening.withdraw: the revoked node's valid update leaves the accepted list as
    `revoked` (with the registry's reason) but stays released (its DP event counts); the
    rest are kept in order. The records sort by device, nodes without one last."""
    ticket, sent = round_
    replies = [honest(m) for m in sent]
    result = screen(ticket, sent, replies)
    kept = result.withdraw({102: "revoked by the operator at 12:00"}, DEVICES)
    assert kept == [replies[0], replies[2]] == result.accepted
    assert result.released_with([]) == replies
    assert result.rejected_devices() == ({"node": 102, "device": 1, "reason": "revoked",
                                          "detail": "revoked by the operator at 12:00"},)
    result.withdraw({103: "gone"}, {})  # a node the mapping does not know: no device
    assert [(d["node"], d["device"]) for d in result.rejected_devices()] == [(102, 1),
                                                                           (103, None)]
    assert result.summary() == " (2 rejected: revoked 2)"
    assert Screening().summary() == ""


def test_masked_replies_are_named_whole(round_) -> None:
    from strategies.secagg_workflow import SecAggParams, round_setup

    ticket, sent = round_
    setup = round_setup(SecAggParams(max_weight=8), sorted(DEVICES.values()), 15)
    dtype = np.dtype(setup.encoding.dtype)
    length = setup.encoding.encoded_length(15)

    def masked(secagg: ConfigRecord | None) -> tuple[str, str]:
        reply = honest(sent[0])
        content = RecordDict({METRICS_KEY: MetricRecord({"steps": 1.0, "train_seconds": 0.3}),
                              DEVICE_KEY: reply.content[DEVICE_KEY]})
        if secagg is not None:
            content["secagg"] = secagg
        screening = Screening()
        screen_round(screening, ticket, POLICY, sent, [Message(content, reply_to=sent[0])],
                     DEVICES, secure_setup=setup)
        [r] = screening.rejected
        return r.reason, r.detail

    assert masked(None) == ("malformed", "config records ['device'], expected ['device', "
                                         "'secagg'] (+ optional ['dp_event'])")
    reason, detail = masked(ConfigRecord({"sender": 0, "dtype": dtype.str}))
    assert reason == "malformed" and detail.startswith("masked input without a valid vector (")
    short = np.zeros(length - 3, dtype=dtype)
    assert masked(ConfigRecord({"sender": 0, "dtype": dtype.str, "vector": short.tobytes()})) \
        == ("shape", f"masked vector has {length - 3} elements, expected {length}")
    other = np.dtype(np.uint64) if dtype != np.uint64 else np.dtype(np.uint32)
    assert masked(ConfigRecord({"sender": 0, "dtype": other.str,
                                "vector": np.zeros(length, other).tobytes()})) \
        == ("dtype", f"masked vector has dtype {other}, expected {dtype}")


@pytest.mark.parametrize(("name", "value"), [
    ("num-examples", 1), ("num-examples", 8), ("kl_bits", 0.0), ("steps", 0.0),
    ("empty_steps", 0.5), ("sample_rate", 1.0), ("sample_rate", 1e-9), ("train_seconds", 0.0),
    ("train_seconds", 60.0)])
def test_metrics_on_the_edge_of_their_range_pass(round_, name: str, value: float) -> None:
    ticket, sent = round_
    reply = honest(sent[0])
    with_metric(name, value)(reply)
    assert screen(ticket, sent, [reply]).accepted == [reply]


@pytest.mark.parametrize(("name", "value", "detail"), [
    ("num-examples", 0, "num-examples 0 is not an integer in 1..8"),
    ("sample_rate", 0.0, "sample_rate 0.0 is not in (0, 1]"),
    ("train_seconds", -0.5, "train_seconds -0.5 is not in [0, 60]"),
    ("steps", -1.0, "steps -1.0 is negative"),
])
def test_metrics_just_outside_their_range_are_named(round_, name: str, value: float,
                                                    detail: str) -> None:
    ticket, sent = round_
    reply = honest(sent[0])
    with_metric(name, value)(reply)
    [r] = screen(ticket, sent, [reply]).rejected
    assert (r.reason, r.detail) == ("metrics", detail)


def test_a_plain_reply_must_report_its_weight_and_time(round_) -> None:
    ticket, sent = round_
    reply = honest(sent[0])
    del reply.content[METRICS_KEY]["num-examples"]
    del reply.content[METRICS_KEY]["train_seconds"]
    [r] = screen(ticket, sent, [reply]).rejected
    assert (r.reason, r.detail) == ("metrics", "missing num-examples, train_seconds")


def test_sender_checks_are_named_whole(round_) -> None:
    ticket, sent = round_
    no_device = honest(sent[0])
    del no_device.content[DEVICE_KEY]
    wrong_kind = honest(sent[1])
    wrong_kind.content[DP_EVENT_KEY] = MetricRecord({"sample_rate": 0.1})
    other_run = honest(sent[2])
    other_run.metadata.__dict__["_run_id"] = 77
    result = screen(ticket, sent, [no_device, wrong_kind, other_run])
    assert [(r.reason, r.detail) for r in result.rejected] == [
        ("identity", "no ConfigRecord 'device' in the reply"),
        ("malformed", "no ConfigRecord 'dp_event' in the reply"),
        ("wrong_run", f"Flower run 77, this round's is [{sent[0].metadata.run_id}]"),
    ]
    stale = screen(ticket, sent, [honest(_pushed(101, RoundTicket("run-a", 1))),
                                  honest(sent[0]), honest(sent[0])])
    assert [r.detail for r in stale.rejected] == ["answers no train message of this round",
                                                  "a second reply to one train message"]


def test_an_error_reply_does_not_stop_the_screening(round_) -> None:
    ticket, sent = round_
    good = honest(sent[1])
    result = screen(ticket, sent, [_error_reply(sent[0]), good])
    assert result.accepted == [good] and result.rejected == []


def test_a_validator_is_plain_or_secure_never_both() -> None:
    from strategies.update_validation import UpdateValidator

    with pytest.raises(ValueError, match="^give exactly one of global_arrays \\(plain\\) or "
                                         "secure_vector$"):
        UpdateValidator(RoundTicket("r", 1), POLICY, [], DEVICES)
