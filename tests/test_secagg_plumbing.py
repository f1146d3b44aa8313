"""SecAgg+ plumbing: codec through Flower records, device state persistence, key formats,
and the rules the protocol code must keep (no NumPy/`random` RNG, dependency direction)."""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import ConfigRecord

from fl_client.secagg_client import SecAggClient
from privacy.secagg import codec, simulated_enrollment
from privacy.secagg.encoding import EncodingSpec
from privacy.secagg.errors import GuardViolation
from privacy.secagg.keys import load_private_key, load_public_key, sign_keys, verify_keys
from privacy.secagg.messages import RoundSetup, UnmaskRequest
from strategies.secagg_server import SecAggServer

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL_FILES = [*sorted((ROOT / "privacy" / "secagg").glob("*.py")),
                  ROOT / "fl_client" / "secagg_client.py", ROOT / "fl_client" / "secagg_handlers.py",
                  ROOT / "strategies" / "secagg_server.py", ROOT / "strategies" / "secagg_workflow.py"]


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_numpy_or_random_generator_in_the_protocol() -> None:
    for path in PROTOCOL_FILES:
        text = path.read_text()
        assert "np.random" not in text and "numpy.random" not in text, path
        assert not any(m == "random" or m.startswith("random.") for m in _imports(path)), path
        assert "secrets" not in _imports(path), path  # os.urandom only, one source to audit


def test_dependency_direction() -> None:
    for path in sorted((ROOT / "privacy" / "secagg").glob("*.py")):
        bad = {m for m in _imports(path)
               if m.split(".")[0] in {"fl_client", "fl_server", "strategies", "monitoring", "flwr"}}
        assert not bad, (path, bad)
    for path in PROTOCOL_FILES[-4:]:
        assert not any(m.startswith("fl_server") for m in _imports(path)), path
    for path in (ROOT / "strategies" / "secagg_server.py", ROOT / "strategies" / "secagg_workflow.py"):
        assert not any(m.startswith("fl_client") for m in _imports(path)), path


SETUP = RoundSetup(b"ctx", (0, 1, 2, 3, 4), 4, 3, b"0123456789abcdef",
                   EncodingSpec(1.0, 32, 5, 5), 6)


def _through_record(flat: dict) -> dict:
    return dict(ConfigRecord(flat))


def test_every_message_survives_a_config_record() -> None:
    keys = {d: simulated_enrollment.device_key(0, d) for d in SETUP.participants}
    ids = simulated_enrollment.identities(0, SETUP.participants)
    clients = {d: SecAggClient(d, keys[d], ids) for d in SETUP.participants}
    server = SecAggServer(codec.setup_from_flat(_through_record(codec.setup_to_flat(SETUP))))
    assert server.setup == SETUP
    adverts = [codec.advertise_from_flat(_through_record(codec.advertise_to_flat(c.advertise(SETUP))))
               for c in clients.values()]
    relayed = server.collect_keys(adverts)
    shared = []
    for d, m in relayed.items():
        m2 = codec.neighbour_keys_from_flat(_through_record(codec.neighbour_keys_to_flat(m)))
        assert m2 == m
        shared.append(codec.share_keys_from_flat(_through_record(
            codec.share_keys_to_flat(clients[d].share_keys(m2)))))
    delivered = server.collect_shares(shared)
    masked = []
    for d, m in delivered.items():
        m2 = codec.delivery_from_flat(_through_record(codec.delivery_to_flat(m)))
        out = clients[d].masked_input(m2, np.full(6, 0.25 * d), d + 1)
        back = codec.masked_from_flat(_through_record(codec.masked_to_flat(out)), SETUP.encoding)
        assert np.array_equal(back.vector, out.vector)
        masked.append(back)
    announced = server.collect_masked(masked[:-1])  # device 4 drops
    sigs = []
    for d, q in announced.items():
        q2 = codec.consistency_request_from_flat(
            _through_record(codec.consistency_request_to_flat(q)))
        assert q2 == q
        sigs.append(codec.consistency_signature_from_flat(_through_record(
            codec.consistency_signature_to_flat(clients[d].sign_survivors(q2)))))
    requests = server.collect_signatures(sigs)
    replies = []
    for d, q in requests.items():
        q2 = codec.unmask_request_from_flat(_through_record(codec.unmask_request_to_flat(q)))
        assert q2 == q
        r = clients[d].unmask(q2)
        r2 = codec.unmask_reply_from_flat(_through_record(codec.unmask_reply_to_flat(r)))
        assert r2 == r
        replies.append(r2)
    result = server.finish(replies)
    expected = sum((d + 1) * 0.25 * d for d in range(4)) / sum(d + 1 for d in range(4))
    np.testing.assert_allclose(result.mean, expected, atol=SETUP.encoding.quantisation_bound)


def test_flatten_unflatten_round_trip() -> None:
    arrays = {"b": np.arange(6, dtype=np.float32).reshape(2, 3), "a": np.ones(2, np.float32)}
    vector = codec.flatten(arrays)
    assert vector.tolist() == [1, 1, 0, 1, 2, 3, 4, 5]
    back = codec.unflatten(vector, arrays)
    assert all(np.array_equal(back[k], arrays[k]) and back[k].dtype == np.float32 for k in arrays)


def test_device_state_round_trips_with_its_guard() -> None:
    """The handlers persist a device between messages; the guard must persist too."""
    keys = {d: simulated_enrollment.device_key(1, d) for d in SETUP.participants}
    ids = simulated_enrollment.identities(1, SETUP.participants)

    def reload(c: SecAggClient) -> SecAggClient:
        return SecAggClient.from_bytes(c.to_bytes(), keys[c.device_id], ids)

    clients = {d: SecAggClient(d, keys[d], ids) for d in SETUP.participants}
    server = SecAggServer(SETUP)
    relayed = server.collect_keys([c.advertise(SETUP) for c in clients.values()])
    clients = {d: reload(c) for d, c in clients.items()}
    delivered = server.collect_shares([clients[d].share_keys(relayed[d]) for d in relayed])
    clients = {d: reload(c) for d, c in clients.items()}
    masked = [clients[d].masked_input(delivered[d], np.zeros(6), 1) for d in delivered]
    clients = {d: reload(c) for d, c in clients.items()}
    announced = server.collect_masked(masked)
    sigs = [clients[d].sign_survivors(q) for d, q in announced.items()]
    clients = {d: reload(c) for d, c in clients.items()}
    requests = server.collect_signatures(sigs)
    first = clients[0].unmask(requests[0])
    clients[0] = reload(clients[0])
    peer = requests[0].survivors[0]
    with pytest.raises(GuardViolation, match="signed set implies"):
        clients[0].unmask(UnmaskRequest(0, tuple(p for p in requests[0].survivors if p != peer),
                                        (peer,), requests[0].survivor_set,
                                        requests[0].signatures))
    # nor does a reloaded device sign a second, different survivor set
    with pytest.raises(GuardViolation, match="already signed another"):
        clients[0].sign_survivors(replace(announced[0], survivors=announced[0].survivors[:-1]))
    assert clients[0].unmask(requests[0]) == first
    assert first.self_mask_shares
    scalar = keys[1].private_numbers().private_value.to_bytes(48, "big")
    assert scalar not in clients[1].to_bytes()  # the enrollment key is never in the state


def test_device_state_round_trips_exactly_at_every_stage() -> None:
    """Whatever stage a device is at, reloading its saved state gives the same state."""
    keys = {d: simulated_enrollment.device_key(2, d) for d in SETUP.participants}
    ids = simulated_enrollment.identities(2, SETUP.participants)
    clients = {d: SecAggClient(d, keys[d], ids) for d in SETUP.participants}

    def same_after_reload(c: SecAggClient) -> None:
        blob = c.to_bytes()
        back = SecAggClient.from_bytes(blob, keys[c.device_id], ids)
        assert back.to_bytes() == blob
        assert back.stage == c.stage and back.rejected == c.rejected

    for c in clients.values():
        same_after_reload(c)  # NEW: nothing but the device id
    server = SecAggServer(SETUP)
    relayed = server.collect_keys([c.advertise(SETUP) for c in clients.values()])
    same_after_reload(clients[0])
    delivered = server.collect_shares([clients[d].share_keys(relayed[d]) for d in relayed])
    same_after_reload(clients[0])
    masked = [clients[d].masked_input(delivered[d], np.full(6, 0.1), 2) for d in delivered]
    same_after_reload(clients[0])
    announced = server.collect_masked(masked)
    sigs = [clients[d].sign_survivors(q) for d, q in announced.items()]
    same_after_reload(clients[0])
    requests = server.collect_signatures(sigs)
    clients[0].unmask(requests[0])
    same_after_reload(clients[0])
    reloaded = {d: SecAggClient.from_bytes(c.to_bytes(), keys[d], ids) for d, c in clients.items()}
    result = server.finish([reloaded[d].unmask(requests[d]) for d in requests])
    np.testing.assert_allclose(result.mean, 0.1, atol=SETUP.encoding.quantisation_bound)


@pytest.mark.parametrize("blob, reason", [
    (b"", "bad magic"),
    (b"\x80\x04\x95garbage pickle", "bad magic"),
    (b"FSAS\x02{}", "version 2"),
    (b"FSAS\x01not json", "corrupt"),
    (b'FSAS\x01{"device": 0}', "corrupt: KeyError"),
    (b'FSAS\x01{"device":"0","stage":0,"rejected":[],"revealed":[]}', "expected an integer"),
    (b'FSAS\x01{"device":0,"stage":7,"rejected":[],"revealed":[]}', "corrupt"),
])
def test_garbage_device_state_is_refused_with_a_clear_error(blob: bytes, reason: str) -> None:
    """A tampered or foreign `context.state` is parsed, never executed, and refused."""
    from fl_client.secagg_client import ClientStateError

    key = simulated_enrollment.device_key(0, 0)
    ids = simulated_enrollment.identities(0, SETUP.participants)
    with pytest.raises(ClientStateError, match=reason):
        SecAggClient.from_bytes(blob, key, ids)
    client = SecAggClient(0, key, ids)
    client.advertise(SETUP)
    tampered = client.to_bytes().replace(b'"cipher-key":{"$hex":"', b'"cipher-key":{"$hex":"zz')
    with pytest.raises(ClientStateError, match="corrupt"):
        SecAggClient.from_bytes(tampered, key, ids)


def test_the_device_never_unpickles() -> None:
    for path in sorted((ROOT / "fl_client").glob("*.py")):
        assert not {"pickle", "marshal", "dill"} & _imports(path), path


def test_key_formats_and_curve() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    ssh_pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                            serialization.PublicFormat.OpenSSH)
    pem_pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    sig = sign_keys(load_private_key(pem), b"d" * 32, 7, b"c" * 32, b"m" * 32)
    for pub in (ssh_pub, ssh_pub.decode(), pem_pub, key.public_key()):
        assert verify_keys(load_public_key(pub), sig, b"d" * 32, 7, b"c" * 32, b"m" * 32)
    public = key.public_key()
    assert not verify_keys(public, sig, b"d" * 32, 8, b"c" * 32, b"m" * 32)  # other device
    assert not verify_keys(public, sig, b"e" * 32, 7, b"c" * 32, b"m" * 32)  # other round
    assert not verify_keys(public, sig, b"d" * 32, 7, b"c" * 32, b"n" * 32)  # other key
    with pytest.raises(ValueError, match="P-384"):
        load_private_key(ec.generate_private_key(ec.SECP256R1()))


def test_simulated_enrollment_is_deterministic_and_distinct() -> None:
    a = simulated_enrollment.device_key(3, 1).private_numbers().private_value
    assert a == simulated_enrollment.device_key(3, 1).private_numbers().private_value
    assert a != simulated_enrollment.device_key(3, 2).private_numbers().private_value
    assert a != simulated_enrollment.device_key(4, 1).private_numbers().private_value
