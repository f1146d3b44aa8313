"""The malicious server against unlinkable collection, attack by attack: each test plays
the server with the protocol's real code and shows it now fails to link a device's rows;
where the attack needs a protocol step to be missing, a control runs it with that step
missing and links. The attacks: a shuffler key of the server's own in the request; a
collection (or setting) given to one device only; a device's blob replayed under fake
senders; a restarted shuffler asked to release subsets of the same collection."""

from __future__ import annotations

import numpy as np
import pytest

from fl_client.uploads import UploadRefused, check_pin, seal
from privacy.payload import encode_payload
from privacy.shuffle.pin import ShufflerPin
from privacy.shuffle.records import open_outer, outer_context
from privacy.shuffle.sealed import SealError, generate_private_key, public_bytes
from privacy.wire.upload import Batch, UploadRecord, UploadRequest, decode_sealed
from tests.helpers import EXIT_WAIT_S

M, VERSION = 4, "ab" * 32
SHUFFLER, ANALYZER = generate_private_key(), generate_private_key()
PIN = ShufflerPin(public_bytes(SHUFFLER), 7, 3)


def request(shuffler_key: bytes, collection: int = 1, granularity: int = 7) -> UploadRequest:
    return UploadRequest("atk", collection, collection, M, "int8", VERSION, 0.0, 0,
                         analyzer_key=public_bytes(ANALYZER), shuffler_key=shuffler_key,
                         time_granularity_days=granularity)


def batch(tag: int) -> Batch:
    payload = encode_payload(np.full(8, tag, np.float32), "int8")
    return Batch(tuple(UploadRecord(payload, 40, 9, f"clip{i}", True) for i in range(M)),
                 VERSION, 12, 0, False)


def test_a_substituted_shuffler_key_is_refused_and_would_otherwise_link():
    evil = generate_private_key()
    forged = request(public_bytes(evil))
    with pytest.raises(UploadRefused, match=r"^the request names shuffler key .* pinned to"):
        seal(batch(1), forged, PIN)
    with pytest.raises(UploadRefused, match="no shuffler key is provisioned"):
        seal(batch(1), forged, None)
    # CONTROL: a device pinned to whatever the server sent (the old behaviour) hands the
    # server every inner ciphertext of this sender: the shuffle would hide nothing
    outer = decode_sealed(seal(batch(1), forged, ShufflerPin(public_bytes(evil)))).outer
    label = forged.collection_label
    assert len(open_outer(evil, outer, outer_context(label)).inner) == M
    # the pinned device's blob opens for the pinned shuffler only
    honest = decode_sealed(seal(batch(1), request(public_bytes(SHUFFLER)), PIN)).outer
    label = request(public_bytes(SHUFFLER)).collection_label
    with pytest.raises(SealError):
        open_outer(evil, honest, outer_context(label))
    assert open_outer(SHUFFLER, honest, outer_context(label)).min_crowd == PIN.min_crowd


def test_a_finer_window_than_the_device_accepts_is_refused():
    assert check_pin(request(PIN.public_key, granularity=0), PIN) == PIN  # dropped: fine
    assert check_pin(request(PIN.public_key, granularity=30), PIN) == PIN
    with pytest.raises(UploadRefused, match="1-day windows, the device accepts at least 7"):
        check_pin(request(PIN.public_key, granularity=1), PIN)


@pytest.mark.parametrize("text, message", [
    ('{"public_key": "00"}', "32-byte X25519"),
    ("{}", "lacks 'public_key'"),
    ('{"public_key": "' + "11" * 32 + '", "min_crowd": 1}', "min-crowd must be 2..255"),
    ("nope", "not JSON"),
])
def test_a_malformed_pin_is_one_line(text, message):
    with pytest.raises(ValueError, match=message):
        ShufflerPin.from_json(text)


def test_the_shuffler_enforces_the_crowd_the_devices_were_pinned_to():
    from privacy.shuffle.shuffler import Shuffler, ShuffleRefused

    shuffler = Shuffler(SHUFFLER, min_crowd=2)  # laxer than the devices' pin of 3
    label = request(PIN.public_key).collection_label
    for node in range(2):
        shuffler.submit(label, str(node), decode_sealed(
            seal(batch(node), request(PIN.public_key), PIN)).outer)
    with pytest.raises(ShuffleRefused, match="2 sender\\(s\\), fewer than min-crowd 3"):
        shuffler.release(label)


def test_the_node_reads_its_pin_from_node_config_or_its_bundle(tmp_path):
    from types import SimpleNamespace

    from fl_client.node import shuffler_pin

    key = PIN.public_key.hex()
    node = SimpleNamespace(node_config={"shuffler-key": key, "min-crowd": 4})
    assert shuffler_pin(node, "", 0) == ShufflerPin(PIN.public_key, 1, 4)  # type: ignore[arg-type]
    assert shuffler_pin(SimpleNamespace(node_config={}), "", 0) is None  # type: ignore[arg-type]
    bundle = tmp_path / "d-0"
    bundle.mkdir()
    (bundle / "device.json").write_text('{"device_index": 0, "device_id": 1}')
    (bundle / "device.key").write_text("unused")
    sim = SimpleNamespace(node_config={"partition-id": 0})
    assert shuffler_pin(sim, str(tmp_path), 0) is None  # type: ignore[arg-type]
    (bundle / "shuffler.json").write_text(PIN.to_json())
    assert shuffler_pin(sim, str(tmp_path), 0) == PIN  # type: ignore[arg-type]
    (bundle / "shuffler.json").write_text("{}")
    with pytest.raises(ValueError, match="shuffler.json: shuffler pin lacks"):
        shuffler_pin(sim, str(tmp_path), 0)  # type: ignore[arg-type]


def test_a_device_tagged_by_its_own_settings_lands_in_a_collection_of_its_own():
    """tag: the server gives one device its own analyzer key and time window inside an
    honest crowd, hoping to pick its rows out of the release by which key opens them."""
    from privacy.shuffle.analyzer import open_release
    from privacy.shuffle.records import InnerRecord, inner_context, new_pseudonym, seal_batch
    from privacy.shuffle.shuffler import Shuffler, ShuffleRefused

    victim_analyzer = generate_private_key()
    honest = request(PIN.public_key)
    tagged = UploadRequest("atk", 1, 1, M, "int8", VERSION, 0.0, 0,
                           analyzer_key=public_bytes(victim_analyzer),
                           shuffler_key=PIN.public_key, time_granularity_days=14)
    assert tagged.collection_label != honest.collection_label
    shuffler = Shuffler(SHUFFLER, min_crowd=3)
    for node in range(3):
        shuffler.submit(honest.collection_label, f"n{node}",
                        decode_sealed(seal(batch(node), honest, PIN)).outer)
    victim = decode_sealed(seal(batch(9), tagged, PIN)).outer
    with pytest.raises(ShuffleRefused, match="does not open"):  # not into the honest crowd
        shuffler.submit(honest.collection_label, "victim", victim)
    shuffler.submit(tagged.collection_label, "victim", victim)  # alone: no release
    with pytest.raises(ShuffleRefused, match="1 sender\\(s\\), fewer than min-crowd 3"):
        shuffler.release(tagged.collection_label)
    assert open_release(victim_analyzer, shuffler.release(honest.collection_label).inner,
                        inner_context("atk", 1, VERSION)).real == ()
    # CONTROL: labelled by (run, collection) only, the tagged device joins the crowd and
    # the server's second analyzer key opens exactly its rows
    control = Shuffler(SHUFFLER, min_crowd=3)

    def sealed(tag: int, analyzer: bytes) -> bytes:
        records = [InnerRecord(encode_payload(np.full(8, tag, np.float32), "int8"), None,
                               new_pseudonym(), True) for _ in range(M)]
        return seal_batch(records, analyzer, PIN.public_key, inner_context("atk", 1, VERSION),
                          outer_context("atk/1"))

    for node in range(3):
        control.submit("atk/1", f"n{node}", sealed(node, public_bytes(ANALYZER)))
    control.submit("atk/1", "victim", sealed(9, public_bytes(victim_analyzer)))
    opened = open_release(victim_analyzer, control.release("atk/1").inner,
                          inner_context("atk", 1, VERSION))
    assert len(opened.real) == M
    assert {r.payload for r in opened.real} == {encode_payload(np.full(8, 9, np.float32), "int8")}


def test_every_setting_changes_the_label():
    from dataclasses import replace

    base = request(PIN.public_key)
    variants = [replace(base, collection=2), replace(base, run_id="atk2"),
                replace(base, clips=M + 1), replace(base, dtype="float16"),
                replace(base, encoder_version="cd" * 32),
                replace(base, analyzer_key=public_bytes(generate_private_key())),
                replace(base, time_granularity_days=14),
                replace(base, release_clip=1.0, release_noise=2.0),
                replace(base, release_clip=1.0, release_noise=2.5)]
    labels = {v.collection_label for v in variants} | {base.collection_label}
    assert len(labels) == len(variants) + 1
    # what the device does not seal by (its caps, the server's ledger view) does not
    assert replace(base, info_bits_cap=5.0, server_bits=7).collection_label == base.collection_label


def honest_blobs(count: int, label_request: UploadRequest) -> dict[str, bytes]:
    return {f"n{i}": decode_sealed(seal(batch(i), label_request, PIN)).outer
            for i in range(count)}


def test_a_blob_replayed_under_sybil_senders_is_refused():
    """shuf/split: the server resubmits one device's blob under fake sender ids, to reach
    the crowd with one device or to mark its records by their repeats."""
    from collections import Counter

    from privacy.shuffle.shuffler import Shuffler, ShuffleRefused

    honest = request(PIN.public_key)
    label = honest.collection_label
    blobs = honest_blobs(3, honest)
    # CONTROL: had the replay been accepted, the repeated inner ciphertexts are exactly
    # the replayed sender's
    victim_inner = set(open_outer(SHUFFLER, blobs["n0"], outer_context(label)).inner)
    pooled = [c for b in [*blobs.values(), blobs["n0"]]
              for c in open_outer(SHUFFLER, b, outer_context(label)).inner]
    assert {c for c, k in Counter(pooled).items() if k > 1} == victim_inner
    shuffler = Shuffler(SHUFFLER, min_crowd=3)
    for sender, blob in blobs.items():
        shuffler.submit(label, sender, blob)
    with pytest.raises(ShuffleRefused, match="submitted before: a replayed blob"):
        shuffler.submit(label, "sybil", blobs["n0"])
    released = shuffler.release(label)
    assert released.senders == 3 and len(set(released.inner)) == len(released.inner) == 3 * M
    # split: one device in a collection of its own, replayed 5 times: one sender, no release
    alone = request(PIN.public_key, collection=1001)
    blob = decode_sealed(seal(batch(7), alone, PIN)).outer
    other = Shuffler(SHUFFLER, min_crowd=3)
    other.submit(alone.collection_label, "fake0", blob)
    for i in range(1, 5):
        with pytest.raises(ShuffleRefused, match="replayed"):
            other.submit(alone.collection_label, f"fake{i}", blob)
    with pytest.raises(ShuffleRefused, match="1 sender"):
        other.release(alone.collection_label)


def test_repeated_inner_ciphertexts_are_refused_by_shuffler_and_analyzer():
    """A server that learnt a device's inner ciphertexts (from an earlier release) and
    re-seals them in fresh outer blobs under fake senders."""
    from privacy.shuffle.analyzer import ReleaseRefused, open_release
    from privacy.shuffle.records import _OUTER, inner_context, outer_size
    from privacy.shuffle.sealed import seal as seal_box
    from privacy.shuffle.shuffler import Shuffler, ShuffleRefused

    honest = request(PIN.public_key)
    label = honest.collection_label
    blobs = honest_blobs(3, honest)
    inner = open_outer(SHUFFLER, blobs["n0"], outer_context(label)).inner
    body = _OUTER.pack(b"MSRO", 1, 0, M, len(inner[0]))
    forged = seal_box(PIN.public_key, body + b"".join(inner), outer_context(label))
    assert len(forged) == outer_size(M, len(encode_payload(np.zeros(8, np.float32), "int8")))
    shuffler = Shuffler(SHUFFLER, min_crowd=3)
    for sender, blob in [*blobs.items(), ("sybil", forged)]:
        shuffler.submit(label, sender, blob)  # a fresh outer blob: its hash is new
    with pytest.raises(ShuffleRefused, match="repeated inner ciphertexts"):
        shuffler.release(label)
    with pytest.raises(ShuffleRefused, match="already released or refused"):
        shuffler.release(label)
    context = inner_context("atk", 1, VERSION)
    with pytest.raises(ReleaseRefused, match="4 repeated ciphertext"):
        open_release(ANALYZER, [*inner, *inner], context)
    # the same record re-sealed (a new ciphertext, the same pseudonym) is refused too
    from privacy.shuffle.records import encode_inner, open_inner

    record = open_inner(ANALYZER, inner[0], context)
    resealed = seal_box(public_bytes(ANALYZER), encode_inner(record), context)
    with pytest.raises(ReleaseRefused, match="repeated pseudonyms"):
        open_release(ANALYZER, [*inner, resealed], context)
    assert len(open_release(ANALYZER, list(inner), context).real) == M


def start_service(key_path) -> tuple:
    import re
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "fl_server.cli", "shuffler", "start",
                             "--key", str(key_path), "--port", "0", "--min-crowd", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
    assert match, line
    return proc, match.group(1)


def stop_service(proc) -> None:
    import os
    import signal

    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=EXIT_WAIT_S)


def test_a_restarted_shuffler_process_releases_nothing_twice(tmp_path):
    """restart: the server restarts the shuffler and asks it to release overlapping subsets
    of one crowd; intersecting them would give the sender both subsets share."""
    from fl_server.shuffler_service import (
        ShufflerClient,
        ShufflerError,
        journal_path,
        read_key,
        write_key,
    )
    from privacy.shuffle.shuffler import Shuffler

    key = tmp_path / "shuffler.pem"
    public = write_key(key)
    pin = ShufflerPin(public, 7, 2)
    honest = request(public)
    label = honest.collection_label
    blobs = {f"n{i}": decode_sealed(seal(batch(i), honest, pin)).outer for i in range(3)}
    # CONTROL: shufflers that forget (no journal) release {n0, n1} and {n0, n2}; the
    # intersection is exactly n0's inner ciphertexts
    released = []
    for subset in (["n0", "n1"], ["n0", "n2"]):
        forgetful = Shuffler(read_key(key), min_crowd=2)
        for sender in subset:
            forgetful.submit(label, sender, blobs[sender])
        released.append(set(forgetful.release(label).inner))
    assert released[0] & released[1] == set(open_outer(read_key(key), blobs["n0"],
                                                       outer_context(label)).inner)
    # the real service, restarted between the two releases
    proc, url = start_service(key)
    try:
        client = ShufflerClient(url)
        for sender in ("n0", "n1"):
            client.submit(label, sender, blobs[sender])
        assert client.release(label).senders == 2
    finally:
        stop_service(proc)
    assert journal_path(key).exists()
    proc, url = start_service(key)
    try:
        client = ShufflerClient(url)
        with pytest.raises(ShufflerError, match="submitted before: a replayed blob"):
            client.submit(label, "n0", blobs["n0"])
        with pytest.raises(ShufflerError, match="is closed"):
            client.submit(label, "n2", blobs["n2"])
        with pytest.raises(ShufflerError, match="already released"):
            client.release(label)
    finally:
        stop_service(proc)


def test_a_torn_last_line_is_ignored_and_a_damaged_journal_refused(tmp_path):
    from fl_server.shuffler_service import FileJournal

    journal = FileJournal(tmp_path / "j")
    journal.closed("a/1")
    journal.seen(b"\x01" * 32)
    with open(tmp_path / "j", "a") as handle:
        handle.write("closed 6")  # the crash cut this write short: never answered
    assert journal.load() == ({"a/1"}, {b"\x01" * 32})
    (tmp_path / "j").write_text("closed zz\n")
    with pytest.raises(ValueError, match="line 1 is not a journal entry"):
        journal.load()
