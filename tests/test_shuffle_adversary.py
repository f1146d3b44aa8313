"""The malicious server against unlinkable collection: it sees every outer blob with the
Flower node id it came from (and the order they arrived in), each device's public ledger
charge, everything the shuffler releases, and every stored row. It tries to link stored
rows to senders by position, by ciphertext matching and by pseudonym, and does no better
than chance; the controls run the same attacks against a release that is neither nested
nor shuffled and link every row.

The devices go through the device's own sealing code (`fl_client.uploads.seal`); the
payloads are random bytes independent of the device, so the only thing that could link
a row to its sender is the protocol's metadata, which is what is under test here (what
the *contents* reveal is the leakage evaluation's job).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import numpy as np
import pytest

from fl_client.uploads import seal
from privacy.payload import encode_payload
from privacy.shuffle.analyzer import open_release
from privacy.shuffle.records import inner_context, open_outer, outer_context
from privacy.shuffle.pin import ShufflerPin
from privacy.shuffle.sealed import generate_private_key, public_bytes
from privacy.shuffle.shuffler import Shuffler
from privacy.wire.upload import Batch, UploadRecord, UploadRequest, decode_sealed

SENDERS, M, COLLECTIONS = 6, 4, 40
VERSION = "ef" * 32
ANALYZER, SHUFFLER_KEY = generate_private_key(), generate_private_key()
PIN = ShufflerPin(public_bytes(SHUFFLER_KEY), 7)


@dataclass
class View:
    """Everything the server sees of one collection, and the harness's ground truth."""

    collection: int
    blobs: list[tuple[int, bytes]]  # (node id, outer blob) in arrival order
    real_clips: dict[int, int]  # each node's ledger charge: its real clip count
    released: tuple[bytes, ...]
    stored: list[tuple[str, int | None, bytes]]  # (pseudonym, window day, payload)
    sender_of_payload: dict[bytes, int]  # ground truth, never shown to the attacker


def device_batch(node: int, real: int, collection: int) -> tuple[Batch, dict[bytes, int]]:
    """A device's batch as `fl_client.uploads.assemble` builds it: stable clip ids, its own
    capture days and hours; the harness remembers whose payload is whose."""
    rng = np.random.default_rng(secrets.randbits(64))
    payloads = [encode_payload(rng.standard_normal(16).astype(np.float32), "int8")
                for _ in range(M)]
    records = [UploadRecord(payloads[i], 20 + node % 3, 9 + node, f"dev{node}-clip{i}",
                            i < real) for i in range(M)]
    return (Batch(tuple(records), VERSION, 3 * real, 100 * node, False),
            {p: node for p in payloads[:real]})


def request(collection: int, granularity: int = 7) -> UploadRequest:
    return UploadRequest("adv-run", collection, collection, M, "int8", VERSION, 0.0, 0,
                         analyzer_key=public_bytes(ANALYZER),
                         shuffler_key=public_bytes(SHUFFLER_KEY),
                         time_granularity_days=granularity)


def collect(collection: int, real_counts: list[int]) -> View:
    shuffler = Shuffler(SHUFFLER_KEY, min_crowd=3)
    label = request(collection).collection_label
    blobs, truth, charges = [], {}, {}
    for node, real in enumerate(real_counts, start=1000):
        batch, owned = device_batch(node, real, collection)
        reply = decode_sealed(seal(batch, request(collection), PIN))
        blobs.append((node, reply.outer))
        charges[node] = reply.clips
        truth.update(owned)
        shuffler.submit(label, str(node), reply.outer)
    released = shuffler.release(label).inner
    opened = open_release(ANALYZER, released, inner_context("adv-run", collection, VERSION))
    assert opened.unopened == 0 and len(opened.real) == sum(real_counts)
    stored = [(r.pseudonym.hex(), r.day, r.payload) for r in opened.real]
    return View(collection, blobs, charges, released, stored, truth)


def unnested_unshuffled(collection: int, real_counts: list[int]) -> View:
    """CONTROL: each device sends its records sealed to the analyzer only (no outer layer),
    and the relay releases them in arrival order (no shuffle)."""
    blobs, truth, released = [], {}, []
    for node, real in enumerate(real_counts, start=1000):
        batch, owned = device_batch(node, real, collection)
        reply = decode_sealed(seal(batch, request(collection), PIN))
        inner = open_outer(SHUFFLER_KEY, reply.outer, outer_context(
            request(collection).collection_label)).inner  # the layer a server would see
        blobs.append((node, b"".join(inner)))
        truth.update(owned)
        released += inner
    opened = open_release(ANALYZER, released, inner_context("adv-run", collection, VERSION))
    return View(collection, blobs, {}, tuple(released), [(r.pseudonym.hex(), r.day, r.payload)
                                             for r in opened.real], truth)


# -- the attacks ----------------------------------------------------------------------------


def attack_by_position(view: View) -> tuple[int, int]:
    """Release position p came from the (p // M)-th sender to arrive; scored on the real
    records (the analyzer's open tells which position held which payload)."""
    order = [node for node, _ in view.blobs]
    hits = total = 0
    for p, ciphertext in enumerate(view.released):
        opened = open_release(ANALYZER, [ciphertext], inner_context(
            "adv-run", view.collection, VERSION)).real
        if not opened:
            continue
        total += 1
        hits += order[p // M] == view.sender_of_payload[opened[0].payload]
    return hits, total


def attack_by_ciphertext(view: View) -> tuple[int, int]:
    """A released ciphertext found (or its first 32 bytes, the ephemeral key) inside a
    sender's blob names the sender."""
    hits = 0
    for ciphertext in view.released:
        owners = [node for node, blob in view.blobs if ciphertext[:32] in blob]
        hits += len(owners) == 1
    return hits, len(view.released)


def run(collector, collections: int = COLLECTIONS) -> list[View]:
    rng = np.random.default_rng(7)
    views = []
    for c in range(1, collections + 1):
        counts = [int(n) for n in rng.integers(1, M + 1, SENDERS)]
        views.append(collector(c, counts))
    return views


@pytest.fixture(scope="module")
def shuffled() -> list[View]:
    return run(collect)


@pytest.fixture(scope="module")
def control() -> list[View]:
    return run(unnested_unshuffled, collections=5)


def _bound(chance: float, n: int) -> float:
    """Chance plus four binomial standard deviations: a real attack clears it by far."""
    return chance + 4 * (chance * (1 - chance) / n) ** 0.5


def test_position_attack_is_at_chance_and_wins_against_the_control(shuffled, control):
    hits, total = map(sum, zip(*(attack_by_position(v) for v in shuffled)))
    assert total > 500
    assert hits / total <= _bound(1 / SENDERS, total)
    c_hits, c_total = map(sum, zip(*(attack_by_position(v) for v in control)))
    assert c_hits == c_total > 0  # unshuffled: every real record sits in its sender's slot


def test_ciphertext_matching_finds_nothing_and_wins_against_the_control(shuffled, control):
    assert sum(attack_by_ciphertext(v)[0] for v in shuffled) == 0
    c_hits, c_total = map(sum, zip(*(attack_by_ciphertext(v) for v in control)))
    assert c_hits == c_total  # unnested: each released record is a substring of one blob


def test_pseudonyms_link_nothing_within_or_across_collections(shuffled):
    pseudonyms = [p for v in shuffled for p, _, _ in v.stored]
    assert len(pseudonyms) == len(set(pseudonyms))  # grouping by pseudonym: singletons
    assert len(pseudonyms) == sum(sum(v.real_clips.values()) for v in shuffled)


def test_stored_rows_carry_no_device_hour_or_exact_day(shuffled):
    """Devices captured on days 20, 21 and 22 at distinct hours: every stored row says
    window 14..20 or 21..27 only, and the store order (by pseudonym) follows no sender."""
    windows = {day for v in shuffled for _, day, _ in v.stored}
    assert windows == {14, 21}
    # the stored order is no better than the release order for a position attacker
    hits = total = 0
    for v in shuffled:
        order = [node for node, _ in v.blobs]
        per = len(v.stored) / SENDERS
        for j, (_, _, payload) in enumerate(v.stored):
            total += 1
            hits += order[min(int(j // per), SENDERS - 1)] == v.sender_of_payload[payload]
    assert hits / total <= _bound(1 / SENDERS, total)


def test_blob_sizes_do_not_depend_on_real_clips(shuffled):
    sizes = {len(blob) for v in shuffled for _, blob in v.blobs}
    assert len(sizes) == 1
    counts = {n for v in shuffled for n in v.real_clips.values()}
    assert counts == set(range(1, M + 1))  # the sizes held across every real count


def test_dropped_capture_time_leaves_no_day():
    batch, _ = device_batch(1000, 2, 1)
    outer = decode_sealed(seal(batch, request(1, granularity=0), PIN)).outer
    label = request(1, granularity=0).collection_label
    inner = open_outer(SHUFFLER_KEY, outer, outer_context(label)).inner
    opened = open_release(ANALYZER, inner, inner_context("adv-run", 1, VERSION))
    assert len(opened.real) == 2 and {r.day for r in opened.real} == {None}
