"""Property tests (hypothesis) of Shamir sharing, the fixed-point encoding and masks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privacy.secagg import shamir
from privacy.secagg.encoding import EncodingSpec, modular_sum, reduce
from privacy.secagg.errors import EncodingError
from privacy.secagg.masks import expand

secrets_ = st.binary(min_size=32, max_size=32)


@settings(max_examples=60, deadline=None)
@given(secret=secrets_, data=st.data())
def test_shamir_any_t_shares_recover_the_secret(secret: bytes, data) -> None:
    holders = data.draw(st.lists(st.integers(0, 2**63 - 1), min_size=1, max_size=12,
                                 unique=True))
    t = data.draw(st.integers(1, len(holders)))
    shares = shamir.split(secret, t, holders)
    subset = data.draw(st.permutations(holders))[:t]
    assert shamir.combine([shares[h] for h in subset], t) == secret
    if t > 1:
        with pytest.raises(shamir.ShamirError):
            shamir.combine([shares[h] for h in subset[: t - 1]], t)


@settings(max_examples=40, deadline=None)
@given(a=secrets_, b=secrets_, t=st.integers(1, 6))
def test_shamir_shares_are_linear(a: bytes, b: bytes, t: int) -> None:
    """Shares add: the sum of shares interpolates to the sum of secrets (field check)."""
    holders = list(range(t + 2))
    sa, sb = shamir.split(a, t, holders), shamir.split(b, t, holders)
    summed = [shamir.Share(sa[h].x, (sa[h].y + sb[h].y) % shamir.PRIME) for h in holders[:t]]
    expected = (int.from_bytes(a, "big") + int.from_bytes(b, "big")) % shamir.PRIME
    assert shamir.interpolate_at_zero(summed) == expected


specs = st.builds(
    EncodingSpec,
    clip=st.floats(0.01, 100.0),
    mod_bits=st.sampled_from([24, 32, 40, 48, 64]),
    max_weight=st.integers(1, 200),
    max_devices=st.integers(1, 200),
)


@settings(max_examples=80, deadline=None)
@given(spec=specs, data=st.data())
def test_encoding_round_trip_sum_and_no_overflow(spec: EncodingSpec, data) -> None:
    n = data.draw(st.integers(1, spec.max_devices))
    d = data.draw(st.integers(1, 8))
    value = st.floats(-3 * spec.clip, 3 * spec.clip, allow_nan=False)
    xs = [np.array(data.draw(st.lists(value, min_size=d, max_size=d))) for _ in range(n)]
    # worst case for overflow: every device at +clip with the maximum weight, sometimes
    if data.draw(st.booleans()):
        xs = [np.full(d, 3 * spec.clip) for _ in range(n)]
        ws = [spec.max_weight] * n
    else:
        ws = [data.draw(st.integers(1, spec.max_weight)) for _ in range(n)]
    encoded = [spec.encode(x, w) for x, w in zip(xs, ws)]
    for e in encoded:
        assert int(e.max()) < spec.modulus
    total = modular_sum(encoded, spec.mod_bits)
    # the modular sum equals the exact integer sum: no wrap-around happened
    exact = [sum(int(e[i]) for e in encoded) for i in range(d + 1)]
    assert [int(v) for v in total] == exact
    assert max(exact) <= spec.max_sum < spec.modulus
    mean, weight = spec.decode(total, n)
    assert weight == sum(ws)
    plain = sum(w * np.clip(x, -spec.clip, spec.clip) for x, w in zip(xs, ws)) / sum(ws)
    assert np.max(np.abs(mean - plain)) <= spec.quantisation_bound * (1 + 1e-9) + 1e-12


@settings(max_examples=30, deadline=None)
@given(bits=st.integers(8, 64), n=st.integers(1, 10**6), w=st.integers(1, 10**6))
def test_encoding_refuses_configurations_that_could_overflow(bits: int, n: int, w: int) -> None:
    if 2 * n * w > 2**bits - 1:
        with pytest.raises(EncodingError):
            EncodingSpec(1.0, bits, w, n)
    else:
        spec = EncodingSpec(1.0, bits, w, n)
        assert spec.max_sum <= spec.modulus - 1 and spec.levels >= 1


@settings(max_examples=25, deadline=None)
@given(seed=secrets_, bits=st.integers(8, 64), length=st.integers(1, 300))
def test_masks_are_deterministic_in_range_and_cancel(seed: bytes, bits: int, length: int) -> None:
    m = expand(seed, length, bits)
    assert np.array_equal(m, expand(seed, length, bits))
    assert int(m.max()) < 2**bits
    x = reduce(np.arange(length, dtype=m.dtype), bits)
    assert np.array_equal(reduce((x + m) - m, bits), x)


def test_encode_rejects_bad_input() -> None:
    spec = EncodingSpec(1.0, 32, 10, 10)
    with pytest.raises(EncodingError, match="weight"):
        spec.encode(np.zeros(3), 11)
    with pytest.raises(EncodingError, match="non-finite"):
        spec.encode(np.array([np.nan]), 1)
    with pytest.raises(EncodingError, match="max_devices"):
        spec.decode(np.zeros(2, dtype=np.uint32), 11)
