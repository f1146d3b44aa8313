"""Unlinkable collection, the cryptography and the shuffler (privacy.shuffle): round trips,
refusals, constant sizes, and the malicious server trying to link stored rows to senders."""

from __future__ import annotations

import secrets

import pytest

from privacy.shuffle.records import (
    NO_DAY,
    InnerRecord,
    coarsen_day,
    encode_inner,
    inner_context,
    inner_size,
    new_pseudonym,
    open_inner,
    open_outer,
    outer_context,
    outer_size,
    seal_batch,
)
from privacy.shuffle.sealed import (
    OVERHEAD,
    SealError,
    generate_private_key,
    open_sealed,
    private_key_from_pem,
    private_key_pem,
    public_bytes,
    seal,
)
from privacy.shuffle.shuffler import Shuffler, ShuffleRefused

P = 72  # payload bytes (an int8 payload of a small latent)
VERSION = "ab" * 32
LABEL = "run-x/1"
ANALYZER, SHUFFLER = generate_private_key(), generate_private_key()
INNER_CTX = inner_context("run-x", 1, VERSION)


def batch(real: int, m: int = 4, day: int = 17, granularity: int = 7) -> bytes:
    """A device's outer blob: `real` real records then dummies, M records in all."""
    records = [InnerRecord(secrets.token_bytes(P), coarsen_day(day, granularity),
                           new_pseudonym(), i < real) for i in range(m)]
    return seal_batch(records, public_bytes(ANALYZER), public_bytes(SHUFFLER), INNER_CTX,
                      outer_context(LABEL))


# -- the sealed box ----------------------------------------------------------------------


def test_seal_round_trip_and_exact_overhead():
    key = generate_private_key()
    for message in (b"", b"x", secrets.token_bytes(1000)):
        blob = seal(public_bytes(key), message, b"ctx")
        assert len(blob) == len(message) + OVERHEAD
        assert open_sealed(key, blob, b"ctx") == message
    # fresh ephemeral key each time: equal messages give unequal blobs
    assert seal(public_bytes(key), b"m", b"c") != seal(public_bytes(key), b"m", b"c")


@pytest.mark.parametrize("attack", ["wrong key", "wrong context", "flip ciphertext",
                                    "flip ephemeral key", "truncate", "zero ephemeral key"])
def test_sealed_box_refuses_with_one_line(attack):
    key = generate_private_key()
    blob = bytearray(seal(public_bytes(key), b"secret payload", b"collection-1"))
    opener, context = key, b"collection-1"
    if attack == "wrong key":
        opener = generate_private_key()
    elif attack == "wrong context":
        context = b"collection-2"
    elif attack == "flip ciphertext":
        blob[-20] ^= 1
    elif attack == "flip ephemeral key":
        blob[3] ^= 0x40
    elif attack == "truncate":
        blob = blob[:OVERHEAD - 1]
    else:
        blob[:32] = bytes(32)
    with pytest.raises(SealError) as info:
        open_sealed(opener, bytes(blob), context)
    assert "\n" not in str(info.value) and str(info.value)


def test_private_key_pem_round_trip_and_bad_pem():
    key = generate_private_key()
    assert public_bytes(private_key_from_pem(private_key_pem(key))) == public_bytes(key)
    with pytest.raises(ValueError, match="PKCS#8"):
        private_key_from_pem(b"not a key")


# -- records and nesting ----------------------------------------------------------------


def test_coarsen_day_windows_and_drop():
    assert [coarsen_day(d, 7) for d in (0, 6, 7, 13, 14)] == [0, 0, 7, 7, 14]
    assert coarsen_day(5, 1) == 5 and coarsen_day(5, 0) is None
    with pytest.raises(ValueError, match="granularity"):
        coarsen_day(3, -1)


def test_nested_round_trip_each_layer_needs_its_own_key():
    records = [InnerRecord(secrets.token_bytes(P), 14, new_pseudonym(), True),
               InnerRecord(secrets.token_bytes(P), None, new_pseudonym(), False)]
    blob = seal_batch(records, public_bytes(ANALYZER), public_bytes(SHUFFLER), INNER_CTX,
                      outer_context(LABEL))
    with pytest.raises(SealError):  # the analyzer cannot open the outer layer
        open_outer(ANALYZER, blob, outer_context(LABEL))
    opened = open_outer(SHUFFLER, blob, outer_context(LABEL))
    assert len(opened.inner) == 2 and opened.inner_size == inner_size(P)
    with pytest.raises(SealError):  # the shuffler cannot open the inner layer
        open_inner(SHUFFLER, opened.inner[0], INNER_CTX)
    with pytest.raises(SealError):  # an inner record replayed into another collection
        open_inner(ANALYZER, opened.inner[0], inner_context("run-x", 2, VERSION))
    got = sorted((open_inner(ANALYZER, c, INNER_CTX) for c in opened.inner),
                 key=lambda r: not r.real)
    assert got == records


def test_inner_record_rejects_bad_fields():
    with pytest.raises(ValueError, match="pseudonym"):
        encode_inner(InnerRecord(b"x" * P, 0, b"short", True))
    with pytest.raises(ValueError, match="day"):
        encode_inner(InnerRecord(b"x" * P, NO_DAY, new_pseudonym(), True))


def test_outer_size_is_constant_whatever_the_real_count():
    sizes = {len(batch(real)) for real in range(5)}
    assert sizes == {outer_size(4, P)}
    assert outer_size(4, P) != outer_size(5, P)  # the size is a function of M (and P)
    inner = {len(c) for real in range(5) for c in open_outer(SHUFFLER, batch(real),
                                                             outer_context(LABEL)).inner}
    assert inner == {inner_size(P)}


# -- the shuffler -----------------------------------------------------------------------


def test_shuffler_releases_a_crowd_shuffled_and_closes():
    shuffler = Shuffler(SHUFFLER, min_crowd=3)
    for sender in ("1", "2", "3"):
        accepted = shuffler.submit(LABEL, sender, batch(2))
    assert accepted.senders == 3
    released = shuffler.release(LABEL)
    assert released.senders == 3 and len(released.inner) == 12
    opened = [open_inner(ANALYZER, c, INNER_CTX) for c in released.inner]
    assert sum(r.real for r in opened) == 6
    with pytest.raises(ShuffleRefused, match="closed"):
        shuffler.submit(LABEL, "4", batch(1))
    with pytest.raises(ShuffleRefused, match="already released"):
        shuffler.release(LABEL)


def test_shuffler_refuses_below_min_crowd_and_releases_nothing():
    shuffler = Shuffler(SHUFFLER, min_crowd=3)
    shuffler.submit(LABEL, "1", batch(4))
    shuffler.submit(LABEL, "2", batch(4))
    with pytest.raises(ShuffleRefused, match="2 sender.*fewer than min-crowd 3") as info:
        shuffler.release(LABEL)
    assert "\n" not in str(info.value)
    # the collection cannot be topped up and retried
    with pytest.raises(ShuffleRefused, match="closed"):
        shuffler.submit(LABEL, "3", batch(4))
    with pytest.raises(ShuffleRefused):
        shuffler.release(LABEL)


def test_shuffler_refuses_a_second_batch_from_a_sender():
    shuffler = Shuffler(SHUFFLER, min_crowd=2)
    blob = batch(1)
    shuffler.submit(LABEL, "7", blob)
    with pytest.raises(ShuffleRefused, match="sender 7 already sent"):
        shuffler.submit(LABEL, "7", batch(3))
    with pytest.raises(ShuffleRefused, match="submitted before: a replayed blob"):
        shuffler.submit(LABEL, "7", blob)  # the same blob replayed
    shuffler.submit(LABEL, "8", batch(0))
    assert len(shuffler.release(LABEL).inner) == 8  # the refused batches added nothing


def test_shuffler_refuses_wrong_collection_garbage_and_odd_sizes():
    shuffler = Shuffler(SHUFFLER, min_crowd=2)
    with pytest.raises(ShuffleRefused, match="does not open"):
        shuffler.submit("run-x/2", "1", batch(1))  # sealed for collection 1
    with pytest.raises(ShuffleRefused, match="too short"):
        shuffler.submit(LABEL, "1", b"\0" * 10)
    shuffler.submit(LABEL, "1", batch(1, m=4))
    with pytest.raises(ShuffleRefused, match="5 records .* takes 4"):
        shuffler.submit(LABEL, "2", batch(1, m=5))
    with pytest.raises(ValueError, match="min-crowd"):
        Shuffler(SHUFFLER, min_crowd=1)
