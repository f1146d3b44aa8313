"""Secure aggregation against a malicious server (and hostile devices): each test plays an
attack with the project's own classes and shows it gets nothing now.

The server is the adversary here, so most tests drive the device state machines
(`SecAggClient`) directly, as a server could: any message, any order, any view.
`recover_update` is what such a server does with the shares it collected; the controls
show that it does recover a device's exact update when the defence is taken away.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fl_client.secagg_client import SecAggClient, Stage
from privacy.secagg import shamir
from privacy.secagg.encoding import EncodingSpec
from privacy.secagg.errors import EncodingError, ProtocolAbort, SecAggError
from privacy.secagg.graph import consistency_quorum, default_neighbours, threshold_for
from privacy.secagg.keys import sign_keys, sign_survivors
from privacy.secagg.masks import pairwise_mask, pairwise_sign, self_mask
from privacy.secagg.messages import (
    AdvertiseKeys,
    ConsistencyRequest,
    MaskedInput,
    RoundSetup,
    UnmaskReply,
    UnmaskRequest,
)
from strategies.secagg_server import SecAggServer

D = 8
_KEYS = [ec.generate_private_key(ec.SECP384R1()) for _ in range(24)]
IDENTITIES = {d: k.public_key() for d, k in enumerate(_KEYS)}


def setup_for(n: int, k: int | None = None, colluding: int = 0, t: int | None = None,
              norm: float = 0.0) -> RoundSetup:
    k = k if k is not None else min(n - 1, default_neighbours(n))
    t = t if t is not None else threshold_for(k, colluding)
    return RoundSetup(b"adversary-run/round-1", tuple(range(n)), k, t, b"public-graph-seed-0",
                      EncodingSpec(1.0, 32, 1, n, norm), D, colluding)


class PreConsistencyClient(SecAggClient):
    """The device as it was before the consistency check: it answers whatever
    survivors/dropped the server names (per-peer guard only). Used by the controls."""

    def unmask(self, request: UnmaskRequest) -> UnmaskReply:
        self.stage = Stage.SIGNED
        return super().unmask(request)

    def _consistent_view(self, request: UnmaskRequest) -> tuple[set[int], set[int]]:
        return set(request.survivors), set(request.dropped)


class Round:
    """Stages 1-3 played honestly: every device's keys, shares and masked input."""

    def __init__(self, setup: RoundSetup, client_class: type[SecAggClient] = SecAggClient):
        self.setup = setup
        self.clients = {d: client_class(d, _KEYS[d], IDENTITIES) for d in setup.participants}
        gen = np.random.default_rng(len(setup.participants))  # test data only
        self.updates = {d: gen.uniform(-0.9, 0.9, D) for d in setup.participants}
        self.server = SecAggServer(setup)
        self.adverts = {d: c.advertise(setup) for d, c in self.clients.items()}
        relayed = self.server.collect_keys(self.adverts.values())
        delivered = self.server.collect_shares(
            [self.clients[d].share_keys(relayed[d]) for d in relayed])
        self.masked = {d: self.clients[d].masked_input(delivered[d], self.updates[d], 1)
                       for d in delivered}
        self.graph = self.server.graph


def inconsistent_views(r: Round, u: int) -> dict[int, set[int]]:
    """The issue's adversary: device d -> the neighbours the server tells d "dropped".

    Every device hears "u survived" (so u's neighbours reveal t self-mask shares of u);
    for each neighbour v of u, t of v's neighbours hear "v dropped" (so they reveal v's
    mask-key shares). No device is asked both shares of one peer and each keeps >= t - 1
    survivors, so the per-peer guard passes everywhere.
    """
    t = r.setup.threshold
    dropped: dict[int, set[int]] = {d: set() for d in r.setup.participants}
    for v in sorted(r.graph[u]):
        holders = sorted(r.graph[v], key=lambda h: (h != u, len(dropped[h]), h))
        chosen = [h for h in holders if len(dropped[h]) + 1 <= len(r.graph[h]) + 1 - t][:t]
        assert len(chosen) == t, "adversary could not place its requests"
        for h in chosen:
            dropped[h].add(v)
    return dropped


def recover_update(r: Round, u: int, replies: list[UnmaskReply]) -> np.ndarray | None:
    """What the server makes of the shares it got: u's exact update, or None."""
    t = r.setup.threshold

    def combine(owner: int, kind: str) -> bytes | None:
        shares = [shamir.Share(shamir.x_for(rep.sender), getattr(rep, kind)[owner])
                  for rep in replies if owner in getattr(rep, kind)]
        return shamir.combine(shares, t) if len(shares) >= t else None

    seed = combine(u, "self_mask_shares")
    if seed is None:
        return None
    context, length, bits = r.setup.digest(), D + 1, r.setup.encoding.mod_bits
    total = r.masked[u].vector - self_mask(seed, context, length, bits)
    own_key = combine(u, "key_shares")
    for v in sorted(r.graph[u]):
        raw = own_key if own_key is not None else combine(v, "key_shares")
        if raw is None:
            return None
        key = X25519PrivateKey.from_private_bytes(raw)
        peer_pk = r.adverts[v].mask_pk if own_key is not None else r.adverts[u].mask_pk
        mask = pairwise_mask(key, peer_pk, context, length, bits)
        total = total - mask if pairwise_sign(u, v) > 0 else total + mask
    try:
        mean, _ = r.setup.encoding.decode(total, 1)
    except EncodingError:
        return None
    return mean


def _answers(r: Round, requests: dict[int, UnmaskRequest]) -> list[UnmaskReply]:
    out = []
    for d, request in requests.items():
        try:
            out.append(r.clients[d].unmask(request))
        except SecAggError:
            continue  # the device refused: it revealed nothing
    return out


# -- 1. inconsistent survivor views ------------------------------------------------------------

@pytest.mark.parametrize("n", [4, 6, 12, 20])
def test_control_inconsistent_views_unmask_a_device_without_the_consistency_check(n) -> None:
    """The attack is real: against devices that trust the server's per-device view, the
    server recovers u's exact update with no colluding device."""
    r = Round(setup_for(n), PreConsistencyClient)
    u = 0
    views = inconsistent_views(r, u)
    requests = {d: UnmaskRequest(d, tuple(sorted(r.graph[d] - views[d])),
                                 tuple(sorted(views[d]))) for d in r.setup.participants}
    recovered = recover_update(r, u, _answers(r, requests))
    assert recovered is not None
    np.testing.assert_allclose(recovered, r.updates[u], atol=r.setup.encoding.quantisation_bound)


@pytest.mark.parametrize("n", [4, 6, 12, 20])
def test_inconsistent_views_get_nothing_with_the_consistency_check(n) -> None:
    """Same adversary, now through the consistency round: each device is asked to sign
    the survivor set its view implies, and is forwarded every signature over that set.
    No view reaches the quorum, every device refuses, u's update does not come out."""
    r = Round(setup_for(n))
    u = 0
    views = inconsistent_views(r, u)
    everyone = set(r.setup.participants)
    u3_of = {d: tuple(sorted(everyone - views[d])) for d in everyone}
    signatures: dict[tuple[int, ...], list[tuple[int, bytes]]] = {}
    for d in sorted(everyone):
        try:
            signed = r.clients[d].sign_survivors(ConsistencyRequest(d, u3_of[d]))
        except SecAggError:
            continue
        signatures.setdefault(u3_of[d], []).append((d, signed.signature))
    requests = {d: UnmaskRequest(d, tuple(sorted(r.graph[d] - views[d])), tuple(sorted(views[d])),
                                 u3_of[d], tuple(signatures.get(u3_of[d], [])))
                for d in everyone}
    replies = _answers(r, requests)
    assert replies == []  # every device refused
    assert all(c.stage == Stage.ABORTED for c in r.clients.values())
    assert recover_update(r, u, replies) is None
    # and no two different survivor sets can both reach the quorum
    quorum = consistency_quorum(n, r.setup.threshold)
    assert sum(len(s) >= quorum for s in signatures.values()) <= 1


def test_a_device_signs_one_survivor_set_and_needs_a_quorum_of_genuine_signatures() -> None:
    r = Round(setup_for(8))
    u3 = tuple(range(8))
    sig = {d: r.clients[d].sign_survivors(ConsistencyRequest(d, u3)) for d in range(8)}
    assert r.clients[0].sign_survivors(ConsistencyRequest(0, u3)) == sig[0]  # lost reply
    with pytest.raises(SecAggError, match="already signed another"):
        r.clients[0].sign_survivors(ConsistencyRequest(0, u3[:-1]))
    quorum = consistency_quorum(8, r.setup.threshold)
    base = r.server  # the honest server's request, then tampered copies of it
    base.collect_masked(r.masked.values())
    honest = base.collect_signatures(sig.values())
    # the same signature repeated, an outsider's, and signatures over another set do not count
    few = [(d, sig[d].signature) for d in range(quorum - 1)]
    forged = [(7, sign_survivors(_KEYS[20], r.setup.digest(), 7, u3))]
    other = [(d, sign_survivors(_KEYS[d], r.setup.digest(), d, u3[:-1])) for d in range(8)]
    for bad in (few + few, few + forged, other):
        with pytest.raises(ProtocolAbort, match="valid signatures"):
            r.clients[1].unmask(replace(honest[1], signatures=tuple(bad)))
        r.clients[1] = SecAggClient.from_bytes(  # undo the abort for the next probe
            _signed_state(r, 1, u3), _KEYS[1], IDENTITIES)
    assert r.clients[2].unmask(honest[2]).self_mask_shares


def _signed_state(r: Round, d: int, u3: tuple[int, ...]) -> bytes:
    client = r.clients[d]
    client.stage = Stage.SIGNED
    client._signed_u3 = u3
    return client.to_bytes()


# -- 6. colluding devices: the n = 6, k = 4 case ---------------------------------------------

def _collusion_attack(colluding_stated: int) -> tuple[Round, np.ndarray | None, int]:
    """Server + 2 colluding enrolled devices against u: two survivor sets, one with u and
    one without, each signed by the colluders and half of the honest devices."""
    setup = setup_for(6, k=4, colluding=colluding_stated)
    r = Round(setup)
    u = 0
    neighbours = sorted(r.graph[u])
    c1, c2, h1, h2 = neighbours
    h3 = next(d for d in setup.participants if d not in r.graph[u] and d != u)
    colluders = {c1, c2}
    with_u, without_u = tuple(range(6)), tuple(d for d in range(6) if d != u)
    groups = {with_u: [u, h1], without_u: [h2, h3]}
    replies = [UnmaskReply(c, {u: r.clients[c]._held[u].self_mask},
                           {u: r.clients[c]._held[u].key}) for c in sorted(colluders)]
    for view, honest in groups.items():
        sigs = [(c, sign_survivors(_KEYS[c], setup.digest(), c, view)) for c in colluders]
        for d in honest:
            try:
                sigs.append((d, r.clients[d].sign_survivors(ConsistencyRequest(d, view)).signature))
            except SecAggError:
                continue
        for d in honest:
            active = r.graph[d]
            request = UnmaskRequest(d, tuple(sorted(active & set(view))),
                                    tuple(sorted(active - set(view))), view, tuple(sigs))
            try:
                replies.append(r.clients[d].unmask(request))
            except SecAggError:
                continue
    return r, recover_update(r, u, replies), u


def test_control_two_colluders_unmask_a_neighbour_when_the_bound_says_none() -> None:
    r, recovered, u = _collusion_attack(colluding_stated=0)  # t = 3, quorum 4
    assert r.setup.threshold == 3
    assert recovered is not None
    np.testing.assert_allclose(recovered, r.updates[u], atol=r.setup.encoding.quantisation_bound)


def test_max_colluding_two_stops_two_colluders_and_the_server() -> None:
    r, recovered, _ = _collusion_attack(colluding_stated=2)  # t = 4, quorum 5
    assert r.setup.threshold == 4
    assert consistency_quorum(6, 4, 2) == 5
    assert recovered is None


# -- 2. minimum cohort -------------------------------------------------------------------------

def test_device_refuses_a_survivor_set_below_its_minimum_cohort() -> None:
    r = Round(setup_for(5))
    with pytest.raises(ProtocolAbort, match="minimum cohort"):
        r.clients[0].sign_survivors(ConsistencyRequest(0, (0, 1)))
    small = setup_for(2)
    with pytest.raises(ProtocolAbort, match="minimum cohort"):
        SecAggClient(0, _KEYS[0], IDENTITIES).advertise(small)


# -- 7 / 8. hostile devices: a bad weight coordinate, an unclipped update ------------------------

def _finish_with(r: Round, tamper: dict[int, np.ndarray]) -> None:
    masked = [MaskedInput(d, tamper.get(d, m.vector)) for d, m in r.masked.items()]
    announced = r.server.collect_masked(masked)
    requests = r.server.collect_signatures(
        [r.clients[d].sign_survivors(q) for d, q in announced.items()])
    r.server.finish(r.clients[d].unmask(q) for d, q in requests.items())


def test_corrupted_weight_coordinate_aborts_the_round_not_the_run() -> None:
    r = Round(setup_for(6))
    vector = r.masked[3].vector.copy()
    vector[-1] += np.uint32(12345)  # the weight coordinate
    with pytest.raises(ProtocolAbort, match="not one of clipped inputs"):
        _finish_with(r, {3: vector})


def test_unclipped_hostile_update_fails_the_norm_check() -> None:
    honest = Round(setup_for(6, norm=0.5))
    _finish_with(honest, {})  # honest devices clip to the norm: the check passes
    r = Round(setup_for(6, norm=0.5))
    vector = r.masked[2].vector.copy()
    vector[:D] += np.uint32(3 * r.setup.encoding.levels)  # +3.0 on every coordinate
    with pytest.raises(ProtocolAbort, match="L2 norm"):
        _finish_with(r, {2: vector})


def test_secure_aggregator_turns_any_secagg_error_into_an_aborted_round(monkeypatch) -> None:
    from fl_server import aggregators

    def hostile(*args, **kwargs):
        raise EncodingError("total weight 7 impossible for 3 inputs")

    monkeypatch.setattr(aggregators, "secure_train_round", hostile)
    agg = aggregators.SecureAggregator(None, None, None, 1.0, 1.0)  # type: ignore[arg-type]
    outcome = agg.train(None, 1, [], {}, {})  # type: ignore[arg-type]
    assert outcome.arrays is None and "impossible" in (outcome.aborted or "")


# -- 11. a low-order X25519 key, validly signed -------------------------------------------------

def test_low_order_key_is_rejected_as_a_dropout() -> None:
    setup = setup_for(8)
    clients = {d: SecAggClient(d, _KEYS[d], IDENTITIES) for d in setup.participants}
    server = SecAggServer(setup)
    adverts = {d: c.advertise(setup) for d, c in clients.items()}
    bad = 5
    zero = bytes(32)  # a low-order point: the agreement would be all zeros
    adverts[bad] = AdvertiseKeys(bad, zero, adverts[bad].mask_pk,
                                 sign_keys(_KEYS[bad], setup.digest(), bad, zero,
                                           adverts[bad].mask_pk))
    relayed = server.collect_keys(adverts.values())
    shared = [clients[d].share_keys(relayed[d]) for d in relayed if d != bad]
    assert all(bad in s.rejected for s in shared if bad in server.graph[s.sender])
    delivered = server.collect_shares(shared)
    assert bad not in delivered
    gen = np.random.default_rng(3)
    updates = {d: gen.uniform(-1, 1, D) for d in delivered}
    masked = [clients[d].masked_input(delivered[d], updates[d], 1) for d in delivered]
    announced = server.collect_masked(masked)
    requests = server.collect_signatures([clients[d].sign_survivors(q)
                                          for d, q in announced.items()])
    result = server.finish(clients[d].unmask(q) for d, q in requests.items())
    np.testing.assert_allclose(result.mean, np.mean(list(updates.values()), axis=0),
                               atol=setup.encoding.quantisation_bound)


# -- 2 / 5. through the device handlers: one masked input per round; no server-seeded keys ------

def test_rerun_over_a_cohort_differing_by_one_device_gets_no_second_masked_input(
        task_identity) -> None:
    """The difference attack: the same round run twice, the second time without device 4.
    The devices (even restarted: fresh node contexts) refuse to contribute again."""
    from fl_client.masked_inputs import AlreadyContributed
    from strategies.secagg_workflow import secure_train_round
    from tests.test_secagg_workflow import (
        NODES,
        LoopbackGrid,
        params,
        plain_updates,
        train_messages,
    )

    initial, _ = plain_updates()
    round_params = replace(params(), sim_state_root=tempfile.mkdtemp(prefix="rerun-"))
    first = secure_train_round(LoopbackGrid(), train_messages(initial), NODES, initial,
                               round_params, 5.0, 5.0)
    assert set(first.result.contributors) == set(NODES.values())
    restarted = LoopbackGrid()  # the nodes restarted: only their state dirs remain
    without_4 = [m for m in train_messages(initial) if NODES[m.metadata.dst_node_id] != 4]
    # (the loopback grid surfaces the handler's refusal; Flower turns it into an error
    # reply, a dropout at the first stage, and the round aborts below the threshold)
    with pytest.raises(AlreadyContributed, match="never contributed twice"):
        secure_train_round(restarted, without_4, NODES, initial, round_params, 5.0, 5.0)
    assert restarted.types.count("train.secagg_masked") == 0  # refused before any training


def test_real_device_without_credentials_refuses_server_seeded_keys(task_identity) -> None:
    from flwr.app import ConfigRecord, Context, Message, RecordDict

    from fl_client.secagg_handlers import MissingCredentials, advertise
    from privacy.secagg import codec
    from privacy.wire.keys import SECAGG_ADVERTISE, SECAGG_KEY

    setup = setup_for(5)
    flat = {**codec.setup_to_flat(setup), "enrollment-seed": 7}
    msg = Message(RecordDict({SECAGG_KEY: ConfigRecord(flat)}), message_type=SECAGG_ADVERTISE,
                  dst_node_id=1)
    real = Context(run_id=1, node_id=1, node_config={"device-index": 1}, state=RecordDict(),
                   run_config={})
    with pytest.raises(MissingCredentials, match="own enrollment key"):
        advertise(msg, real)


# -- item: a one-device draw under central DP is never aggregated in plaintext ------------


class _RecordingGrid:
    """Stands in for Flower's Grid in this unit test of the aggregator choice: it records
    every message the server would push or send."""

    def __init__(self) -> None:
        self.sent: list[object] = []

    def push_messages(self, messages):  # noqa: ANN001, ANN201
        self.sent.extend(messages)
        return []

    def send_and_receive(self, messages, timeout=None):  # noqa: ANN001, ANN201
        self.sent.extend(messages)
        return []


@pytest.mark.parametrize("sampled", [0, 1])
def test_a_secure_round_with_one_sampled_device_releases_nothing_and_sends_nothing(
        sampled: int) -> None:
    from types import SimpleNamespace

    from fl_server.aggregators import AbortedAggregator
    from fl_server.config import RunConfig
    from fl_server.federation import _aggregator

    cfg = RunConfig(devices=4, rounds=1, secure_aggregation=True, central_dp=True, run_id="r1",
                    client_sample_rate=0.5, central_noise_multiplier=1.0,
                    central_clip_norm=1.0)
    fed = SimpleNamespace(cfg=cfg, strategy=None)
    agg = _aggregator(fed, None, None, {0: 0}, {}, 1, sampled)  # type: ignore[arg-type]
    assert isinstance(agg, AbortedAggregator)
    grid = _RecordingGrid()
    outcome = agg.train(grid, 1, [], {0: 0}, {})  # type: ignore[arg-type]
    assert outcome.arrays is None and outcome.replies == [] and grid.sent == []
    assert "at least 2 devices" in (outcome.aborted or "")
    # The control: with two sampled devices the round is secure, not aborted.
    assert not isinstance(_aggregator(fed, None, None, {0: 0, 1: 1}, {}, 1, 2),  # type: ignore[arg-type]
                          AbortedAggregator)
