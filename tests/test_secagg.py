"""SecAgg+ protocol core: client and server state machines driven in-process.

No Flower engine: the messages are handed from one half to the other directly, which is
exactly what the Flower workflow does through the grid. Dropouts are simulated by leaving
a device's reply out of a stage.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import replace

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from scipy import stats

from fl_client.secagg_client import SecAggClient
from privacy.secagg import shamir
from privacy.secagg.encoding import EncodingSpec
from privacy.secagg.errors import GuardViolation, ProtocolAbort, StageError
from privacy.secagg.graph import default_threshold, neighbours, ring_order
from privacy.secagg.messages import AdvertiseKeys, RoundSetup, UnmaskRequest
from strategies.secagg_server import SecAggServer

STAGES = ("advertise", "share", "masked", "unmask")
N, K, D = 20, 12, 16
_KEYS = [ec.generate_private_key(ec.SECP384R1()) for _ in range(30)]  # enrollment keys
_OUTSIDER = ec.generate_private_key(ec.SECP384R1())  # a key no registry issued


def make_setup(n: int = N, k: int = K, t: int | None = None, length: int = D,
               spec: EncodingSpec | None = None) -> RoundSetup:
    return RoundSetup(b"test-run/round-1", tuple(range(n)), k,
                      default_threshold(k) if t is None else t, b"public-graph-seed-0",
                      spec or EncodingSpec(clip=1.0, mod_bits=32, max_weight=50, max_devices=n),
                      length)


def make_clients(setup: RoundSetup) -> dict[int, SecAggClient]:
    identities = {d: _KEYS[d].public_key() for d in setup.participants}
    return {d: SecAggClient(d, _KEYS[d], identities) for d in setup.participants}


def inputs(setup: RoundSetup, seed: int = 0) -> tuple[dict[int, np.ndarray], dict[int, int]]:
    gen = np.random.default_rng(seed)  # test data only; the protocol never sees this RNG
    updates = {d: gen.uniform(-1, 1, setup.vector_length) for d in setup.participants}
    weights = {d: int(gen.integers(1, setup.encoding.max_weight + 1)) for d in setup.participants}
    return updates, weights


def spread(setup: RoundSetup, fraction: float) -> set[int]:
    """Devices evenly spaced around the ring: every neighbourhood loses about `fraction`."""
    ring = ring_order(setup.participants, setup.graph_seed)
    count = round(fraction * len(ring))
    return {ring[int(i * len(ring) / count)] for i in range(count)} if count else set()


def run_round(setup: RoundSetup, clients: dict[int, SecAggClient], updates, weights,
              drop: dict[str, set[int]] | None = None, server: SecAggServer | None = None):
    drop = {s: set(drop.get(s, ())) for s in STAGES} if drop else {s: set() for s in STAGES}
    server = server or SecAggServer(setup)
    gone: set[int] = set()

    def alive(ids: Iterable[int], stage: str) -> list[int]:
        gone.update(drop[stage])
        return [d for d in ids if d not in gone]

    adverts = [clients[d].advertise(setup) for d in alive(setup.participants, "advertise")]
    relayed = server.collect_keys(adverts)
    shared = [clients[d].share_keys(relayed[d]) for d in alive(relayed, "share")]
    delivered = server.collect_shares(shared)
    masked = [clients[d].masked_input(delivered[d], updates[d], weights[d])
              for d in alive(delivered, "masked")]
    requests = signed(server, clients, server.collect_masked(masked))
    replies = [clients[d].unmask(requests[d]) for d in alive(requests, "unmask")]
    return server.finish(replies)


def signed(server: SecAggServer, clients: dict[int, SecAggClient], announced) -> dict:
    """The consistency check, honestly: every survivor signs U3, the server forwards."""
    return server.collect_signatures([clients[d].sign_survivors(q) for d, q in announced.items()])


def plain_mean(setup, updates, weights, members) -> np.ndarray:
    clip = setup.encoding.clip
    total = sum(weights[d] * np.clip(updates[d], -clip, clip) for d in members)
    return total / sum(weights[d] for d in members)


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.3])
def test_unmasked_sum_equals_plain_weighted_mean(stage: str, fraction: float) -> None:
    setup = make_setup()
    clients = make_clients(setup)
    updates, weights = inputs(setup, seed=STAGES.index(stage) * 10 + round(fraction * 10))
    dropped = spread(setup, fraction)
    result = run_round(setup, clients, updates, weights, {stage: dropped})
    contributors = set(setup.participants) - (dropped if stage != "unmask" else set())
    assert set(result.contributors) == contributors
    assert result.total_weight == sum(weights[d] for d in contributors)
    expected = plain_mean(setup, updates, weights, contributors)
    np.testing.assert_allclose(result.mean, expected, rtol=0,
                               atol=setup.encoding.quantisation_bound + 1e-12)
    if stage == "masked":
        assert set(result.dropped_after_sharing) == dropped


def test_dropouts_at_every_stage_at_once() -> None:
    setup = make_setup(n=30, k=14)
    clients = make_clients(setup)
    updates, weights = inputs(setup, seed=7)
    ring = ring_order(setup.participants, setup.graph_seed)
    drop = {"advertise": {ring[0]}, "share": {ring[10]}, "masked": {ring[20], ring[25]},
            "unmask": {ring[5]}}
    result = run_round(setup, clients, updates, weights, drop)
    contributors = set(setup.participants) - {ring[0], ring[10], ring[20], ring[25]}
    np.testing.assert_allclose(result.mean, plain_mean(setup, updates, weights, contributors),
                               atol=setup.encoding.quantisation_bound)


def test_masked_vector_is_uniform_and_hides_the_input() -> None:
    """A device's upload looks uniform over Z_2^32 even for an all-zero update."""
    setup = make_setup(n=6, k=4, length=40_000, spec=EncodingSpec(1.0, 32, 1, 6))
    clients = make_clients(setup)
    server = SecAggServer(setup)
    relayed = server.collect_keys([c.advertise(setup) for c in clients.values()])
    delivered = server.collect_shares([clients[d].share_keys(relayed[d]) for d in relayed])
    upload = clients[0].masked_input(delivered[0], np.zeros(setup.vector_length), 1).vector
    # the encoded input is constant (every coordinate equal); the upload must not be
    counts = np.bincount((upload >> np.uint32(26)).astype(np.int64), minlength=64)
    assert stats.chisquare(counts).pvalue > 1e-4
    ks = stats.kstest(upload.astype(np.float64) / 2**32, "uniform")
    assert ks.pvalue > 1e-4
    # a structured (non-uniform) vector of the same length fails the same test
    encoded = setup.encoding.encode(np.zeros(setup.vector_length), 1)
    assert stats.kstest(encoded.astype(np.float64) / 2**32, "uniform").pvalue < 1e-6


def test_fewer_than_t_shares_do_not_unmask() -> None:
    """t-1 shares of a self-mask seed are refused, and a guessed t-th share gives garbage."""
    secret = os.urandom(32)
    t, holders = 5, list(range(8))
    shares = list(shamir.split(secret, t, holders).values())
    assert shamir.combine(shares, t) == secret
    assert shamir.combine(shares[3:], t) == secret  # any t of them
    with pytest.raises(shamir.ShamirError, match="need 5 shares"):
        shamir.combine(shares[: t - 1], t)
    guessed = shares[: t - 1] + [shamir.Share(shamir.x_for(99), 12345)]
    assert shamir.interpolate_at_zero(guessed) != int.from_bytes(secret, "big")
    # secrecy of the t-1 shares themselves: tests/test_shamir_secrecy.py


def test_server_without_t_unmask_shares_aborts_and_releases_nothing() -> None:
    setup = make_setup(n=8, k=6, t=4)
    clients = make_clients(setup)
    updates, weights = inputs(setup)
    ring = ring_order(setup.participants, setup.graph_seed)
    server = SecAggServer(setup)
    with pytest.raises(ProtocolAbort, match="shares for device"):
        run_round(setup, clients, updates, weights, {"unmask": set(ring[:5])}, server=server)
    assert not hasattr(server, "masked")
    with pytest.raises(StageError):
        server.finish([])


def test_forged_signature_excludes_the_device() -> None:
    setup = make_setup()
    clients = make_clients(setup)
    updates, weights = inputs(setup)
    server = SecAggServer(setup)
    adverts = [c.advertise(setup) for c in clients.values()]
    forger = 3
    adverts[forger] = replace(adverts[forger], signature=_OUTSIDER.sign(
        b"whatever", ec.ECDSA(__import__("cryptography").hazmat.primitives.hashes.SHA384())))
    relayed = server.collect_keys(adverts)
    shared = [clients[d].share_keys(relayed[d]) for d in relayed]
    assert all(forger in s.rejected for s in shared if forger in server.graph[s.sender])
    delivered = server.collect_shares(shared)
    assert forger not in delivered and forger in server.excluded
    masked = [clients[d].masked_input(delivered[d], updates[d], weights[d]) for d in delivered]
    requests = signed(server, clients, server.collect_masked(masked))
    result = server.finish(clients[d].unmask(requests[d]) for d in requests)
    members = set(setup.participants) - {forger}
    assert forger in result.excluded
    np.testing.assert_allclose(result.mean, plain_mean(setup, updates, weights, members),
                               atol=setup.encoding.quantisation_bound)


def test_server_substituting_a_key_is_detected() -> None:
    """The server swaps in its own X25519 keys for device 5 (a man in the middle)."""
    setup = make_setup()
    clients = make_clients(setup)
    server = SecAggServer(setup)
    adverts = [c.advertise(setup) for c in clients.values()]
    mitm = SecAggClient(5, _OUTSIDER, {}).advertise(setup)  # fresh keys, wrong identity
    adverts[5] = AdvertiseKeys(5, mitm.cipher_pk, mitm.mask_pk, adverts[5].signature)
    relayed = server.collect_keys(adverts)
    shared = [clients[d].share_keys(relayed[d]) for d in relayed]
    for reply in shared:
        if 5 in server.graph[reply.sender]:
            assert 5 in reply.rejected and 5 not in reply.ciphertexts
    server.collect_shares(shared)
    assert 5 in server.excluded and 5 not in server.u2


def test_device_with_unknown_identity_is_rejected() -> None:
    setup = make_setup(n=6, k=4, t=3, spec=EncodingSpec(1.0, 32, 1, 6))
    identities = {d: _KEYS[d].public_key() for d in range(5)}  # device 5 never enrolled
    clients = {d: SecAggClient(d, _KEYS[d], identities) for d in range(6)}
    server = SecAggServer(setup)
    relayed = server.collect_keys([c.advertise(setup) for c in clients.values()])
    shared = [clients[d].share_keys(relayed[d]) for d in relayed]
    assert all(5 in s.rejected for s in shared if 5 in server.graph[s.sender])


def _client_at_unmask(setup: RoundSetup):
    clients = make_clients(setup)
    updates, weights = inputs(setup)
    server = SecAggServer(setup)
    relayed = server.collect_keys([c.advertise(setup) for c in clients.values()])
    delivered = server.collect_shares([clients[d].share_keys(relayed[d]) for d in relayed])
    masked = [clients[d].masked_input(delivered[d], updates[d], weights[d]) for d in delivered]
    return clients, signed(server, clients, server.collect_masked(masked))


def test_request_for_both_shares_of_one_peer_is_refused() -> None:
    setup = make_setup(n=8, k=6, t=4, spec=EncodingSpec(1.0, 32, 50, 8))
    clients, requests = _client_at_unmask(setup)
    me = 0
    honest = requests[me]
    peer = honest.survivors[0]
    both = replace(honest, dropped=(peer,))
    with pytest.raises(GuardViolation, match="signed set implies"):
        clients[me].unmask(both)
    # answer honestly once, then a second request flipping the peer to "dropped" is refused
    reply = clients[me].unmask(honest)
    assert peer in reply.self_mask_shares and not reply.key_shares
    others = tuple(p for p in honest.survivors if p != peer)
    with pytest.raises(GuardViolation, match="signed set implies"):
        clients[me].unmask(replace(honest, survivors=others, dropped=(peer,)))
    # a repeat of the same request (lost reply) is answered identically
    assert clients[me].unmask(honest) == reply


def test_request_outside_neighbourhood_or_too_few_survivors_is_refused() -> None:
    setup = make_setup(n=8, k=6, t=4, spec=EncodingSpec(1.0, 32, 50, 8))
    clients, requests = _client_at_unmask(setup)
    me = 0
    stranger = next(d for d in setup.participants if d != me and d not in clients[me]._active)
    with pytest.raises(GuardViolation, match="signed set implies"):
        clients[me].unmask(replace(requests[me], survivors=requests[me].survivors + (stranger,)))
    # a server claiming all but one neighbour dropped would learn the device's own key shares
    survivors = requests[me].survivors
    with pytest.raises(GuardViolation, match="signed set implies"):
        clients[me].unmask(replace(requests[me], survivors=survivors[:1], dropped=survivors[1:]))


@pytest.mark.parametrize("stage", STAGES[:3])
def test_too_many_dropouts_abort(stage: str) -> None:
    setup = make_setup()
    clients = make_clients(setup)
    updates, weights = inputs(setup)
    ring = ring_order(setup.participants, setup.graph_seed)
    with pytest.raises(ProtocolAbort, match=r"only \d+ .*(threshold is|needs) \d+"):
        run_round(setup, clients, updates, weights, {stage: set(ring[: N - 5])})


def test_tampered_share_aborts_the_device() -> None:
    setup = make_setup(n=6, k=4, t=3, spec=EncodingSpec(1.0, 32, 1, 6))
    clients = make_clients(setup)
    server = SecAggServer(setup)
    relayed = server.collect_keys([c.advertise(setup) for c in clients.values()])
    delivered = server.collect_shares([clients[d].share_keys(relayed[d]) for d in relayed])
    boxes = dict(delivered[0].ciphertexts)
    peer = next(iter(boxes))
    boxes[peer] = boxes[peer][:-1] + bytes([boxes[peer][-1] ^ 1])
    with pytest.raises(ProtocolAbort, match="fails authentication"):
        clients[0].masked_input(replace(delivered[0], ciphertexts=boxes), np.zeros(D), 1)
    with pytest.raises(StageError, match="aborted"):
        clients[0].masked_input(delivered[0], np.zeros(D), 1)
    # a share redirected to another device (right box, wrong recipient) fails too
    other = next(d for d in delivered if d != 0 and peer in delivered[d].ciphertexts)
    swapped = dict(delivered[other].ciphertexts)
    swapped[peer] = delivered[0].ciphertexts[peer]
    with pytest.raises(ProtocolAbort, match="fails authentication"):
        clients[other].masked_input(replace(delivered[other], ciphertexts=swapped),
                                    np.zeros(D), 1)


def test_stages_must_run_in_order() -> None:
    setup = make_setup(n=6, k=4, t=3, spec=EncodingSpec(1.0, 32, 1, 6))
    client = make_clients(setup)[0]
    with pytest.raises(StageError):
        client.unmask(UnmaskRequest(0, (), ()))
    client.advertise(setup)
    with pytest.raises(StageError):
        client.advertise(setup)


def test_graph_is_symmetric_regular_and_deterministic() -> None:
    ids = list(range(50))
    g = neighbours(ids, 12, b"seed-seed-seed-1")
    assert g == neighbours(list(reversed(ids)), 12, b"seed-seed-seed-1")
    assert all(len(v) == 12 and d not in v for d, v in g.items())
    assert all(d in g[p] for d, v in g.items() for p in v)
    assert g != neighbours(ids, 12, b"seed-seed-seed-2")


def test_bad_parameters_are_refused() -> None:
    from privacy.secagg.errors import EncodingError, SecAggError
    with pytest.raises(SecAggError, match="threshold"):
        make_setup(t=3)  # not a majority of k=12
    with pytest.raises(SecAggError, match="neighbours"):
        make_setup(k=7)
    with pytest.raises(EncodingError, match="max_devices"):
        make_setup(spec=EncodingSpec(1.0, 32, 1, 10))  # 20 participants > 10
    with pytest.raises(EncodingError, match="mod_bits"):
        EncodingSpec(1.0, 16, 1000, 100)  # 100*1000*2 > 2^16


def test_a_holder_returning_a_wrong_share_aborts_the_unmasking() -> None:
    """A survivor that answers the unmask request with a changed share of a dropped device's
    mask key: the interpolated value is not a 32-byte key, the server aborts, and no masked
    input survives the round."""
    setup = make_setup(n=6, k=4, t=3, spec=EncodingSpec(1.0, 32, 1, 6))
    clients = make_clients(setup)
    updates, weights = inputs(setup)
    server = SecAggServer(setup)
    relayed = server.collect_keys([c.advertise(setup) for c in clients.values()])
    delivered = server.collect_shares([clients[d].share_keys(relayed[d]) for d in relayed])
    dropped = 0
    masked = [clients[d].masked_input(delivered[d], updates[d], weights[d])
              for d in delivered if d != dropped]
    requests = signed(server, clients, server.collect_masked(masked))
    replies = [clients[d].unmask(requests[d]) for d in requests]
    first_holder = min(r.sender for r in replies if dropped in r.key_shares)
    replies = [replace(r, key_shares={**r.key_shares, dropped: r.key_shares[dropped] + 1})
               if r.sender == first_holder else r for r in replies]
    with pytest.raises(ProtocolAbort, match=f"shares for device {dropped} are inconsistent"):
        server.finish(replies)
    assert server.stage.name == "ABORTED" and not hasattr(server, "masked")


def test_a_device_that_deals_shares_of_another_key_is_caught() -> None:
    """The malicious-device guard: a device advertises one mask key, deals shares of another,
    then drops; the server rebuilds a well-formed key from the shares, sees that it is not
    the advertised one, and aborts instead of removing wrong masks from the sum."""
    setup = make_setup(n=6, k=4, t=3, spec=EncodingSpec(1.0, 32, 1, 6))
    clients = make_clients(setup)
    updates, weights = inputs(setup)
    server = SecAggServer(setup)
    relayed = server.collect_keys([c.advertise(setup) for c in clients.values()])
    cheat = 2
    clients[cheat]._mask_key = X25519PrivateKey.generate()  # not the key it advertised
    delivered = server.collect_shares([clients[d].share_keys(relayed[d]) for d in relayed])
    masked = [clients[d].masked_input(delivered[d], updates[d], weights[d])
              for d in delivered if d != cheat]
    requests = signed(server, clients, server.collect_masked(masked))
    with pytest.raises(ProtocolAbort, match=f"mask key of device {cheat} does not match"):
        server.finish([clients[d].unmask(requests[d]) for d in requests])
    assert server.stage.name == "ABORTED" and not hasattr(server, "masked")
