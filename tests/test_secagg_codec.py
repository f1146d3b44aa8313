"""The SecAgg+ wire codec field by field: every message, with every field set to a value no
default could produce, comes back equal through a Flower ConfigRecord; lists that do not
line up, a missing setup field and a wrong dtype are refused with a message naming them."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord

from privacy.secagg import codec, field
from privacy.secagg.encoding import EncodingSpec
from privacy.secagg.errors import SecAggError
from privacy.secagg.messages import (
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    MaskedInput,
    NeighbourKeys,
    RoundSetup,
    ShareKeys,
    SharesDelivery,
    UnmaskReply,
    UnmaskRequest,
)

SPEC = EncodingSpec(clip=2.5, mod_bits=40, max_weight=7, max_devices=9, norm=3.25)
SETUP = RoundSetup(b"round-ctx", (3, 11, 17, 29, 41), 4, 4, b"graph-seed-0123456789", SPEC, 13,
                   max_colluding=2)


def _wire(flat: dict) -> dict:
    """What the other side reads: the flat dict after a ConfigRecord."""
    return dict(ConfigRecord(flat))


def _keys(sender: int) -> AdvertiseKeys:
    return AdvertiseKeys(sender, bytes([sender]) * 32, bytes([sender + 1]) * 32,
                         bytes([sender + 2]) * 64)


def test_the_setup_comes_back_with_every_field_including_collusion_and_norm() -> None:
    back = codec.setup_from_flat(_wire(codec.setup_to_flat(SETUP)))
    assert back == SETUP
    assert back.max_colluding == 2 and back.encoding.norm == 3.25
    assert back.digest() == SETUP.digest()


@pytest.mark.parametrize("key", sorted(codec.SETUP_FIELDS))
def test_a_setup_missing_a_field_is_refused_naming_it(key: str) -> None:
    flat = codec.setup_to_flat(SETUP)
    assert set(flat) == codec.SETUP_FIELDS
    del flat[key]
    with pytest.raises(SecAggError, match=f"round setup lacks the field\\(s\\) {key}$"):
        codec.setup_from_flat(_wire(flat))


def test_a_setup_missing_several_fields_is_refused_naming_each() -> None:
    flat = codec.setup_to_flat(SETUP)
    gone = sorted(codec.SETUP_FIELDS)[:2]
    for key in gone:
        del flat[key]
    with pytest.raises(SecAggError, match=f"lacks the field\\(s\\) {gone[0]}, {gone[1]}$"):
        codec.setup_from_flat(_wire(flat))


def test_key_messages_come_back_equal() -> None:
    adv = _keys(5)
    assert codec.advertise_from_flat(_wire(codec.advertise_to_flat(adv))) == adv
    prefixed = codec.advertise_to_flat(adv, prefix="p-")
    assert set(prefixed) == {"p-sender", "p-cipher-pk", "p-mask-pk", "p-signature"}
    neighbours = NeighbourKeys(17, (_keys(3), _keys(11), _keys(29)))
    assert codec.neighbour_keys_from_flat(_wire(codec.neighbour_keys_to_flat(neighbours))) \
        == neighbours


def test_share_and_delivery_messages_come_back_equal_with_rejections() -> None:
    shared = ShareKeys(11, {29: b"box-29", 3: b"box-3"}, rejected=(41, 17))
    back = codec.share_keys_from_flat(_wire(codec.share_keys_to_flat(shared)))
    assert back == shared and back.rejected == (41, 17)
    delivery = SharesDelivery(17, {11: b"from-11", 3: b"from-3"})
    assert codec.delivery_from_flat(_wire(codec.delivery_to_flat(delivery))) == delivery


def test_consistency_and_unmask_messages_come_back_equal() -> None:
    request = ConsistencyRequest(3, (3, 11, 29))
    assert codec.consistency_request_from_flat(
        _wire(codec.consistency_request_to_flat(request))) == request
    signature = ConsistencySignature(29, b"sig" * 20)
    assert codec.consistency_signature_from_flat(
        _wire(codec.consistency_signature_to_flat(signature))) == signature
    unmask = UnmaskRequest(11, (3, 29), (41,), (3, 11, 29), ((3, b"s3"), (29, b"s29")))
    assert codec.unmask_request_from_flat(_wire(codec.unmask_request_to_flat(unmask))) == unmask
    big = field.PRIME - 5  # a share that needs every one of the 66 bytes
    reply = UnmaskReply(11, {3: big, 29: 7}, {41: 123456789})
    assert codec.unmask_reply_from_flat(_wire(codec.unmask_reply_to_flat(reply))) == reply


def test_empty_lists_may_be_left_out() -> None:
    """Flower's records cannot type an empty list; a sender leaves it out instead."""
    assert codec.share_keys_from_flat({"sender": 4}) == ShareKeys(4, {}, ())
    assert codec.delivery_from_flat({"recipient": 4}) == SharesDelivery(4, {})
    assert codec.neighbour_keys_from_flat({"recipient": 4}) == NeighbourKeys(4, ())
    assert codec.unmask_reply_from_flat({"sender": 4}) == UnmaskReply(4, {}, {})
    assert codec.unmask_request_from_flat({"recipient": 4}) == UnmaskRequest(4, (), (), (), ())


@pytest.mark.parametrize(("decode", "flat"), [
    (codec.neighbour_keys_from_flat,
     {"recipient": 1, "senders": [3, 11], "cipher-pks": [b"c"], "mask-pks": [b"m", b"m"],
      "signatures": [b"s", b"s"]}),
    (codec.share_keys_from_flat, {"sender": 1, "to": [3, 11], "boxes": [b"b"]}),
    (codec.delivery_from_flat, {"recipient": 1, "from": [3], "boxes": [b"b", b"extra"]}),
    (codec.unmask_request_from_flat,
     {"recipient": 1, "signers": [3, 11], "signatures": [b"s"]}),
    (codec.unmask_reply_from_flat,
     {"sender": 1, "self-ids": [3, 11], "self-shares": [field.to_bytes(5)]}),
], ids=["neighbour-keys", "share-keys", "delivery", "unmask-request", "unmask-reply"])
def test_parallel_lists_that_do_not_line_up_are_refused(decode, flat) -> None:
    """A hostile peer or server cannot get a share or key paired with the wrong device by
    sending one list shorter than the other: zip(strict=True) refuses it."""
    with pytest.raises(ValueError, match="zip"):
        decode(flat)


def test_masked_input_keeps_its_dtype_and_a_wrong_dtype_is_named() -> None:
    vector = np.arange(13, dtype=SPEC.dtype) * 1_000_003
    back = codec.masked_from_flat(_wire(codec.masked_to_flat(MaskedInput(11, vector))), SPEC)
    assert back.sender == 11 and back.vector.dtype == SPEC.dtype
    np.testing.assert_array_equal(back.vector, vector)
    wrong = codec.masked_to_flat(MaskedInput(11, vector.astype(np.float32)))
    with pytest.raises(SecAggError, match=r"masked input has dtype float32, expected"):
        codec.masked_from_flat(wrong, SPEC)


def test_flatten_is_float64_in_sorted_name_order_and_unflatten_inverts_it() -> None:
    arrays = {"b": np.array([[1.5, 2.5]], dtype=np.float32), "a": np.array([0.1], np.float32)}
    flat = codec.flatten(arrays)
    assert flat.dtype == np.float64
    np.testing.assert_array_equal(flat, [np.float32(0.1), 1.5, 2.5])
    back = codec.unflatten(flat, arrays)
    assert back["b"].shape == (1, 2) and back["b"].dtype == np.float32
    np.testing.assert_array_equal(back["a"], arrays["a"])
    with pytest.raises(SecAggError, match="vector has 4 values, the model 3"):
        codec.unflatten(np.zeros(4), arrays)
