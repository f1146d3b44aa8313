"""SecAgg+ building blocks pinned one by one: the graph's defaults, the byte layout of what a
device signs, HKDF's domain separation, the fixed-point decoding at the widest moduli, and
the refusals with the messages an operator reads."""

from __future__ import annotations

import hashlib
from fractions import Fraction

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from privacy.secagg import graph, keys, masks
from privacy.secagg.encoding import EncodingSpec, modular_sum
from privacy.secagg.errors import EncodingError, SecAggError

DIGEST = hashlib.sha256(b"round").digest()


# --- graph ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("n", "k"), [(2, 1), (3, 2), (4, 3), (5, 4), (8, 6), (9, 8),
                                      (16, 8), (17, 10), (1000, 20)])
def test_default_neighbours_is_2_ceil_log2_n_capped_at_the_complete_graph(n: int, k: int) -> None:
    assert graph.default_neighbours(n) == k


def test_fewer_than_two_devices_are_refused_by_name() -> None:
    with pytest.raises(SecAggError, match="^secure aggregation needs at least 2 devices$"):
        graph.default_neighbours(1)


@pytest.mark.parametrize(("k", "t"), [(1, 1), (2, 2), (3, 2), (4, 3), (6, 4), (20, 11)])
def test_default_threshold_is_a_strict_majority(k: int, t: int) -> None:
    assert graph.default_threshold(k) == t == graph.threshold_for(k)


def test_the_quorum_without_colluders_is_a_strict_majority_of_the_round() -> None:
    assert graph.consistency_quorum(10, 3) == 6 == graph.consistency_quorum(10, 3, 0)
    assert graph.consistency_quorum(10, 3, 2) == 7
    assert graph.consistency_quorum(10, 8) == 8


# --- what a device signs ---------------------------------------------------------------------

def test_the_survivor_statement_has_a_fixed_layout() -> None:
    """prefix | setup digest | signer | |U3| | each id ascending, integers as 8 bytes big
    endian: an independent implementation (a device's firmware) must produce these bytes."""
    got = keys.survivors_statement(DIGEST, 7, (300, 5, 300, 42))
    want = (b"fedmsr-secagg-v1/survivors" + DIGEST + bytes.fromhex("0000000000000007")
            + bytes.fromhex("0000000000000003") + bytes.fromhex("0000000000000005")
            + bytes.fromhex("000000000000002a") + bytes.fromhex("000000000000012c"))
    assert got == want


def test_a_survivor_signature_needs_an_ec_p384_identity() -> None:
    """A registry entry that is not an EC key (here Ed25519) verifies nothing, whatever the
    signature: a guard that answered True would let any bytes through."""
    signer = ec.generate_private_key(ec.SECP384R1())
    good = keys.sign_survivors(signer, DIGEST, 3, (1, 2, 3))
    assert keys.verify_survivors(signer.public_key(), good, DIGEST, 3, (1, 2, 3))
    other = ed25519.Ed25519PrivateKey.generate()
    assert not keys.verify_survivors(other.public_key(), good, DIGEST, 3, (1, 2, 3))  # type: ignore[arg-type]
    assert not keys.verify_keys(other.public_key(), good, DIGEST, 3, b"c" * 32, b"m" * 32)  # type: ignore[arg-type]
    p256 = ec.generate_private_key(ec.SECP256R1())
    assert not keys.verify_survivors(p256.public_key(), good, DIGEST, 3, (1, 2, 3))


# --- key derivation and masks ----------------------------------------------------------------

def test_derived_keys_are_separated_by_label_and_round_context() -> None:
    secret = bytes(range(32))
    base = masks.derive(secret, masks.PAIRWISE_LABEL, b"round-1")
    assert len(base) == masks.SEED_BYTES
    assert base != masks.derive(secret, masks.SELF_LABEL, b"round-1")
    assert base != masks.derive(secret, masks.PAIRWISE_LABEL, b"round-2")
    assert base == masks.derive(secret, masks.PAIRWISE_LABEL, b"round-1")


def test_the_derivation_is_rfc5869_hkdf_sha256_with_an_empty_salt() -> None:
    """Recomputed by hand with hmac: extract with a zero salt, expand with the label info."""
    import hmac

    secret, label, context = b"\x0b" * 32, b"self-mask", b"ctx"
    prk = hmac.new(b"\x00" * 32, secret, hashlib.sha256).digest()
    info = b"fedmsr-secagg/" + label + b"/" + context
    okm = hmac.new(prk, info + b"\x01", hashlib.sha256).digest()
    assert masks.derive(secret, label, context) == okm


def test_pairwise_masks_cancel_and_the_sign_is_antisymmetric() -> None:
    a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    raw = lambda k: k.public_key().public_bytes_raw()  # noqa: E731
    m_ab = masks.pairwise_mask(a, raw(b), b"ctx", 17, 40)
    m_ba = masks.pairwise_mask(b, raw(a), b"ctx", 17, 40)
    np.testing.assert_array_equal(m_ab, m_ba)
    assert masks.pairwise_sign(3, 9) > 0 > masks.pairwise_sign(9, 3)
    with pytest.raises(ValueError, match="^no pairwise mask with oneself$"):
        masks.pairwise_sign(4, 4)
    with pytest.raises(ValueError, match="^mask seeds are 32 bytes$"):
        masks.expand(b"short", 4, 32)


# --- encoding --------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [60, 62, 63, 64])
def test_decoding_is_exact_at_the_widest_moduli(bits: int) -> None:
    """The signed sum is read in integers before the one division: recomputed with Python
    integers, the result is bit for bit the same (a float detour loses the low bits of
    negative sums, which sit just below 2^bits)."""
    spec = EncodingSpec(clip=1.0, mod_bits=bits, max_weight=3, max_devices=4)
    updates = [np.array([-0.3, 0.7, -1e-9, -1.0]), np.array([-0.31, -0.2, 0.0, -0.999])]
    weights = [3, 2]
    total = modular_sum([spec.encode(u, w) for u, w in zip(updates, weights, strict=True)], bits)
    mean, weight = spec.decode(total, len(updates))
    assert weight == 5
    for i in range(4):
        s = sum(w * round(Fraction(float(u[i])) * Fraction(spec.levels) / Fraction(spec.clip))
                for u, w in zip(updates, weights, strict=True))
        assert mean[i] == float(s) / (spec.scale * weight), (bits, i)


def test_the_signed_reading_is_twos_complement() -> None:
    """A centred sum of exactly 2^(bits-1) reads as the most negative value."""
    spec = EncodingSpec(clip=1.0, mod_bits=16, max_weight=1, max_devices=2)
    offset = spec.levels * 2
    total = np.array([(offset + (1 << 15)) % (1 << 16), 2], dtype=spec.dtype)
    mean, _ = spec.decode(total, 2)
    assert mean[0] == -(1 << 15) / (spec.scale * 2)


def test_an_impossible_total_weight_is_named() -> None:
    spec = EncodingSpec(clip=1.0, mod_bits=32, max_weight=2, max_devices=4)
    total = np.zeros(3, dtype=spec.dtype)
    with pytest.raises(EncodingError, match="^total weight 0 impossible for 2 inputs: the sum "
                                            "was not unmasked correctly$"):
        spec.decode(total, 2)


def test_the_mean_bound_is_norm_plus_the_quantisation_and_holds_at_its_edge() -> None:
    spec = EncodingSpec(clip=1.0, mod_bits=32, max_weight=1, max_devices=4, norm=2.0)
    assert spec.mean_bound(16) == 2.0 + 4.0 * spec.quantisation_bound
    edge = np.full(16, spec.mean_bound(16) / 4.0)
    edge *= spec.mean_bound(16) / float(np.linalg.norm(edge))
    assert float(np.linalg.norm(edge)) == spec.mean_bound(16)
    spec.check_mean(edge)  # exactly at the bound: allowed
    with pytest.raises(EncodingError, match="more than the"):
        spec.check_mean(edge * (1 + 1e-9))


def test_an_empty_modular_sum_is_refused() -> None:
    with pytest.raises(ValueError, match="^nothing to sum$"):
        modular_sum([], 32)


# --- share boxes -----------------------------------------------------------------------------

def test_a_share_box_opens_with_the_documented_key_nonce_and_authenticated_data() -> None:
    """nonce (12 bytes) | AES-256-GCM under HKDF(X25519, "share-box", context), with
    context | sender | recipient (8 bytes big endian each) as authenticated data: decrypted
    here with `cryptography` directly, not through the module."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from privacy.secagg import field, share_box

    sender, recipient = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    pair = share_box.SharePair(self_mask=field.PRIME - 2, key=12345)
    box = share_box.seal(sender, recipient.public_key().public_bytes_raw(), b"ctx", 7, 300, pair)
    secret = recipient.exchange(sender.public_key())
    key = masks.derive(secret, b"share-box", b"ctx")
    aad = b"ctx" + (7).to_bytes(8, "big") + (300).to_bytes(8, "big")
    plain = AESGCM(key).decrypt(box[:12], box[12:], aad)
    assert plain == field.to_bytes(pair.self_mask) + field.to_bytes(pair.key)
    assert share_box.open_box(recipient, sender.public_key().public_bytes_raw(), b"ctx", 7, 300,
                              box) == pair


# --- round setup -----------------------------------------------------------------------------

_SPEC = EncodingSpec(clip=1.0, mod_bits=32, max_weight=1, max_devices=8)


@pytest.mark.parametrize(("change", "message"), [
    ({"participants": (1, 2, 2, 4, 5)}, "participants must be distinct"),
    ({"participants": (-1, 2, 3, 4, 5)}, "participant ids must be in 0..2\\^63-1"),
    ({"participants": (1 << 63, 2, 3, 4, 5)}, "participant ids must be in 0..2\\^63-1"),
    ({"vector_length": 0}, "vector_length must be >= 1"),
    ({"graph_seed": b"x" * 15}, "graph_seed must be at least 16 bytes"),
    ({"max_colluding": 2}, "threshold t=3 must be in 4..4 for k=4 and C=2 colluding devices"),
])
def test_an_impossible_round_setup_is_refused_by_name(change: dict, message: str) -> None:
    from dataclasses import replace

    from privacy.secagg.messages import RoundSetup

    good = RoundSetup(b"ctx", (1, 2, 3, 4, 5), 4, 3, b"s" * 16, _SPEC, 6)
    assert good.participants[-1] == 5  # the unchanged setup is valid
    assert replace(good, participants=(0, 2, 3, 4, (1 << 63) - 1)).participants[-1] \
        == (1 << 63) - 1
    with pytest.raises(SecAggError, match=f"^{message}"):
        replace(good, **change)


# --- parameters, statements, key loading -----------------------------------------------------

@pytest.mark.parametrize(("n", "k", "t", "c", "message"), [
    (1, 1, 1, 0, "^secure aggregation needs at least 2 devices$"),
    (6, 3, 2, 0, "^neighbours k=3 must be even and in 2..5, or 5 \\(complete graph\\) for n=6 "
                 "devices$"),
    (6, 6, 4, 0, "^neighbours k=6 must be even and in 2..5, or 5"),
    (6, 0, 1, 0, "^neighbours k=0 must be even"),
    (6, 4, 3, 4, "^collusion bound C=4 must be in 0..3 for k=4 neighbours \\(raise the "
                 "neighbours or lower the bound\\)$"),
    (6, 4, 3, -1, "^collusion bound C=-1 must be in 0..3"),
    (6, 4, 3, 1, "^threshold t=3 must be in 3..4"),  # passes: see below
    (6, 4, 3, 2, "^threshold t=3 must be in 4..4 for k=4 and C=2 colluding devices \\(more "
                 "than \\(k \\+ C\\) / 2\\)$"),
    (6, 4, 5, 0, "^threshold t=5 must be in 3..4 for k=4 and C=0"),
])
def test_parameters_out_of_range_are_refused_by_name(n: int, k: int, t: int, c: int,
                                                    message: str) -> None:
    if (n, k, t, c) == (6, 4, 3, 1):  # (4 + 1) // 2 + 1 = 3: allowed
        graph.check_parameters(n, k, t, c)
        return
    with pytest.raises(SecAggError, match=message):
        graph.check_parameters(n, k, t, c)


def test_the_smallest_and_largest_neighbourhoods_are_allowed() -> None:
    graph.check_parameters(6, 2, 2)  # k = 2: a ring
    graph.check_parameters(6, 5, 3)  # k = n - 1: the complete graph
    graph.check_parameters(6, 4, 4, 3)  # C = k - 1 needs t = (4 + 3) // 2 + 1 = 4
    assert graph.threshold_for(4, 3) == 4
    with pytest.raises(SecAggError, match="^the collusion bound must be >= 0, got -1$"):
        graph.threshold_for(4, -1)


def test_without_a_collusion_bound_every_default_is_zero_colluders() -> None:
    assert graph.threshold_for(6) == graph.threshold_for(6, 0) == 4
    assert graph.consistency_quorum(9, 2) == graph.consistency_quorum(9, 2, 0) == 5
    graph.check_parameters(6, 4, 3)  # t = 3 is the C = 0 minimum; C = 1 would allow it too
    with pytest.raises(SecAggError, match="threshold t=2 must be in 3..4"):
        graph.check_parameters(6, 4, 2)


def test_every_device_has_the_k_nearest_on_the_ring_and_ids_must_be_distinct() -> None:
    ids = [5, 9, 13, 21, 34, 55, 89]
    ring = graph.ring_order(ids, b"s" * 16)
    got = graph.neighbours(ids, 4, b"s" * 16)
    for pos, d in enumerate(ring):
        assert got[d] == {ring[(pos + o) % 7] for o in (-2, -1, 1, 2)}
    with pytest.raises(SecAggError, match="^device ids must be distinct$"):
        graph.neighbours([1, 1, 2], 2, b"s" * 16)


def test_the_key_statement_has_a_fixed_layout_and_needs_two_32_byte_keys() -> None:
    got = keys.statement(DIGEST, 300, b"c" * 32, b"m" * 32)
    assert got == (b"fedmsr-secagg-v1/keys" + DIGEST + (300).to_bytes(8, "big") + b"c" * 32
                   + b"m" * 32)
    for cipher, mask in ((b"c" * 31, b"m" * 32), (b"c" * 32, b"m" * 33)):
        with pytest.raises(ValueError, match="^X25519 public keys are 32 bytes$"):
            keys.statement(DIGEST, 1, cipher, mask)


def test_enrollment_keys_load_from_pem_and_openssh_and_other_kinds_are_named() -> None:
    from cryptography.hazmat.primitives import serialization as ser

    private = ec.generate_private_key(ec.SECP384R1())
    openssh = private.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.OpenSSH,
                                    ser.NoEncryption())
    assert keys.load_private_key(openssh).private_numbers() == private.private_numbers()
    line = private.public_key().public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH)
    loaded = keys.load_public_key(b"  " + line + b"\n")  # as pasted, with whitespace around
    assert loaded.public_numbers() == private.public_key().public_numbers()
    other = ed25519.Ed25519PrivateKey.generate()
    pem = other.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    with pytest.raises(ValueError, match="^enrollment private key is not an EC key$"):
        keys.load_private_key(pem)
    pub = other.public_key().public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(ValueError, match="^identity is not an EC public key$"):
        keys.load_public_key(pub)


def test_the_setup_digest_is_sha256_of_the_documented_canonical_json() -> None:
    """Keys are signed under this digest, so a device written in another language must
    compute the same bytes; and every parameter is bound by it."""
    import json
    from dataclasses import replace

    from privacy.secagg.messages import RoundSetup

    spec = EncodingSpec(clip=1.5, mod_bits=40, max_weight=3, max_devices=8, norm=2.25)
    setup = RoundSetup(b"ctx", (4, 1, 2, 3, 5), 4, 4, b"s" * 16, spec, 6, max_colluding=1)
    canonical = json.dumps({
        "bits": 40, "clip": "1.5", "colluding": 1, "context": b"ctx".hex(), "k": 4,
        "length": 6, "max_devices": 8, "max_weight": 3, "norm": "2.25",
        "participants": [1, 2, 3, 4, 5], "seed": (b"s" * 16).hex(), "t": 4,
    }).encode()
    assert setup.digest() == hashlib.sha256(canonical).digest()
    variants = [replace(setup, round_context=b"ctx2"), replace(setup, participants=(1, 2, 3, 4, 6)),
                replace(setup, threshold=3), replace(setup, graph_seed=b"t" * 16),
                replace(setup, vector_length=7), replace(setup, max_colluding=0),
                replace(setup, encoding=replace(spec, clip=1.25)),
                replace(setup, encoding=replace(spec, mod_bits=41)),
                replace(setup, encoding=replace(spec, max_weight=2)),
                replace(setup, encoding=replace(spec, max_devices=9)),
                replace(setup, encoding=replace(spec, norm=2.0))]
    assert len({v.digest() for v in variants} | {setup.digest()}) == len(variants) + 1


# --- encoding: ranges, clipping, exact integers ----------------------------------------------

@pytest.mark.parametrize(("kwargs", "message"), [
    ({"clip": 0.0}, "^clip must be a positive finite number, got 0.0$"),
    ({"clip": float("inf")}, "^clip must be a positive finite number, got inf$"),
    ({"norm": float("inf")}, "^norm must be a finite number >= 0, got inf$"),
    ({"norm": -1.0}, "^norm must be a finite number >= 0, got -1.0$"),
    ({"mod_bits": 7}, "^mod_bits must be in 8..64, got 7$"),
    ({"mod_bits": 65}, "^mod_bits must be in 8..64, got 65$"),
    ({"max_weight": 0}, "^max_weight and max_devices must be >= 1$"),
    ({"max_devices": 0}, "^max_weight and max_devices must be >= 1$"),
])
def test_an_impossible_encoding_is_refused_by_name(kwargs: dict, message: str) -> None:
    with pytest.raises(EncodingError, match=message):
        EncodingSpec(**kwargs)


def test_too_many_devices_and_non_finite_updates_are_named() -> None:
    spec = EncodingSpec(clip=1.0, mod_bits=32, max_weight=1, max_devices=3)
    with pytest.raises(EncodingError, match="^4 devices exceed the encoding's max_devices=3; "
                                            "the sum could overflow: raise max_devices \\(and "
                                            "mod_bits\\)$"):
        spec.check_devices(4)
    with pytest.raises(EncodingError, match="^update has non-finite values$"):
        spec.encode(np.array([0.0, np.nan]), 1)


def test_the_word_size_follows_the_modulus() -> None:
    from privacy.secagg.encoding import dtype_for, reduce

    assert dtype_for(32) == np.uint32 and dtype_for(33) == np.uint64
    values = np.array([(1 << 40) + 5, (1 << 33) - 1], dtype=np.uint64)
    np.testing.assert_array_equal(reduce(values, 33), [5, (1 << 33) - 1])
    np.testing.assert_array_equal(reduce(values, 64), values)
    np.testing.assert_array_equal(reduce(values.astype(np.uint32), 32), values.astype(np.uint32))


def test_an_update_longer_than_the_norm_is_scaled_onto_it() -> None:
    spec = EncodingSpec(clip=4.0, mod_bits=48, max_weight=1, max_devices=2, norm=1.0)
    update = np.array([1.2, -1.6])  # L2 norm 2: halved to [0.6, -0.8]
    mean, _ = spec.decode(spec.encode(update, 1), 1)
    np.testing.assert_allclose(mean, [0.6, -0.8], atol=spec.quantisation_bound)
    on_norm = np.array([0.6, -0.8])  # exactly on the norm: unchanged
    mean, _ = spec.decode(spec.encode(on_norm, 1), 1)
    np.testing.assert_allclose(mean, on_norm, atol=spec.quantisation_bound)


def test_the_range_ends_encode_exactly() -> None:
    """-clip and +clip are levels -L and +L (0 and 2L once shifted)."""
    spec = EncodingSpec(clip=0.5, mod_bits=16, max_weight=2, max_devices=2)
    encoded = spec.encode(np.array([-0.5, 0.5, -9.0, 9.0]), 2)
    np.testing.assert_array_equal(encoded, [0, 4 * spec.levels, 0, 4 * spec.levels, 2])


def test_encoding_is_exact_in_integers_with_large_weights_and_float32_updates() -> None:
    """w * (level + L) is formed in integers: at 64 bits with 2L = 2^53 and w = 999 a float
    detour would round; and a float32 update encodes as its float64 value does."""
    spec = EncodingSpec(clip=1.0, mod_bits=64, max_weight=999, max_devices=2)
    assert spec.levels == 1 << 52
    update = np.array([0.1, -0.7, 1.0, -1.0, 0.3333333], dtype=np.float32)
    got = spec.encode(update, 999)
    want = [999 * (round(Fraction(float(x)) * spec.levels) + spec.levels) for x in update]
    assert [int(v) for v in got[:-1]] == want and int(got[-1]) == 999
    np.testing.assert_array_equal(spec.encode(update.astype(np.float64), 999), got)
