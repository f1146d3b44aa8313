"""Shamir secrecy, tested on `split` itself: the property the server's inability to unmask
rests on. Interpolation is affine in the shares' y for any shares, so a test that combines
t-1 shares cannot see a broken `split`; these tests look at the shares.

Each statistical test comes with a control: the same test applied to a leaking dealer
(coefficients forced to 0, so every share is the secret) must reject.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from scipy import stats

from privacy.secagg import shamir
from privacy.secagg.field import PRIME

SAMPLES = 3000
#: Significance of the distribution tests: a false alarm once in a million runs.
ALPHA = 1e-6


def low_bits(value: int, bits: int = 4) -> int:
    return value & ((1 << bits) - 1)


def share_histogram(secret: bytes, threshold: int, holders: list[int], observed: list[int],
                    bits: int) -> np.ndarray:
    """Counts of the joint low bits of the observed holders' shares over fresh splits."""
    cells = np.zeros(1 << (bits * len(observed)), dtype=np.int64)
    for _ in range(SAMPLES):
        shares = shamir.split(secret, threshold, holders)
        index = 0
        for h in observed:
            index = (index << bits) | low_bits(shares[h].y, bits)
        cells[index] += 1
    return cells


def same_distribution_p(a: np.ndarray, b: np.ndarray) -> float:
    """Chi-square test of homogeneity of two histograms (empty cells in both dropped)."""
    keep = (a + b) > 0
    table = np.vstack([a[keep], b[keep]])
    if table.shape[1] < 2:  # both are one and the same point mass
        return 1.0
    return float(stats.chi2_contingency(table).pvalue)


def leaking(monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: a dealer whose random coefficients are all 0."""
    monkeypatch.setattr(shamir, "random_element", lambda: 0)


@pytest.mark.parametrize("threshold", [2, 3, 5])
def test_two_splits_of_one_secret_differ_in_every_share(threshold: int) -> None:
    secret = os.urandom(32)
    holders = list(range(threshold + 2))
    first, second = shamir.split(secret, threshold, holders), shamir.split(secret, threshold,
                                                                           holders)
    assert all(first[h].y != second[h].y for h in holders)
    assert shamir.combine(first.values(), threshold) == shamir.combine(second.values(),
                                                                      threshold) == secret


def test_no_share_is_the_secret_or_an_affine_function_of_it() -> None:
    """For y = a*s + b with fixed a, b, the difference of two secrets' shares would be fixed
    by the difference of the secrets; fresh coefficients make it vary."""
    s1, s2 = os.urandom(32), os.urandom(32)
    holders = [0, 1, 2]
    for h in holders:
        diffs = set()
        for _ in range(4):
            y1 = shamir.split(s1, 2, holders)[h].y
            y2 = shamir.split(s2, 2, holders)[h].y
            assert y1 != int.from_bytes(s1, "big") and y2 != int.from_bytes(s2, "big")
            diffs.add((y1 - y2) % PRIME)
        assert len(diffs) == 4


def test_the_affine_check_fails_for_a_leaking_dealer(monkeypatch: pytest.MonkeyPatch) -> None:
    leaking(monkeypatch)
    secret = os.urandom(32)
    shares = shamir.split(secret, 3, [0, 1, 2])
    assert all(s.y == int.from_bytes(secret, "big") for s in shares.values())
    assert shamir.split(secret, 3, [0, 1, 2]) == shares  # two splits do not differ




@pytest.mark.parametrize(("threshold", "observed"), [(2, [0]), (3, [0, 4])])
def test_t_minus_1_shares_of_two_secrets_are_identically_distributed(
        threshold: int, observed: list[int]) -> None:
    """t-1 shares of an all-zero and of an all-ones secret: the joint distribution of their
    low bits is the same (chi-square homogeneity), as perfect secrecy requires."""
    holders = list(range(5))
    zeros, ones = bytes(32), b"\xff" * 32
    bits = 4 if len(observed) == 1 else 2
    a = share_histogram(zeros, threshold, holders, observed, bits)
    b = share_histogram(ones, threshold, holders, observed, bits)
    assert same_distribution_p(a, b) > ALPHA
    # and uniform, as shares of a uniform polynomial coefficient must be
    assert stats.chisquare(a).pvalue > ALPHA


def test_the_distribution_test_rejects_a_leaking_dealer(monkeypatch: pytest.MonkeyPatch) -> None:
    leaking(monkeypatch)
    holders = list(range(5))
    a = share_histogram(bytes(32), 2, holders, [0], 4)
    b = share_histogram(b"\xff" * 32, 2, holders, [0], 4)
    assert same_distribution_p(a, b) < ALPHA


def test_combine_refuses_repeated_or_zero_evaluation_points() -> None:
    shares = list(shamir.split(os.urandom(32), 2, [0, 1]).values())
    with pytest.raises(shamir.ShamirError, match="^shares must have distinct non-zero x$"):
        shamir.combine([shares[0], shares[0]], 2)  # the same point twice
    with pytest.raises(shamir.ShamirError, match="^shares must have distinct non-zero x$"):
        shamir.combine([shares[0], shamir.Share(PRIME, 5)], 2)  # x = 0 in the field


def test_combine_refuses_a_value_too_large_to_be_a_secret_at_the_first_one() -> None:
    """2^256 is the smallest field value that is not a 32-byte secret; 2^256 - 1 the
    largest that is (t = 1: the polynomial is its constant, every share is it)."""
    largest = (1 << 256) - 1
    assert shamir.combine([shamir.Share(1, largest)], 1) == largest.to_bytes(32, "big")
    for value in (1 << 256, 1 << 257, 1 << 288):
        with pytest.raises(shamir.ShamirError,
                           match=r"^shares are inconsistent \(interpolated value is not a "
                                 r"secret\)$"):
            shamir.combine([shamir.Share(1, value)], 1)


def test_share_indices_are_exactly_the_ids_that_map_into_the_field() -> None:
    """x = id + 1 must be a non-zero field element: ids 0 .. PRIME - 2, nothing else."""
    assert shamir.x_for(0) == 1 and shamir.x_for(PRIME - 2) == PRIME - 1
    for bad in (-1, PRIME - 1, PRIME):
        with pytest.raises(shamir.ShamirError,
                           match=rf"^holder id {bad} is not a valid share index$"):
            shamir.x_for(bad)


def test_field_inverse() -> None:
    from privacy.secagg.field import inverse

    assert inverse(2) == (PRIME + 1) // 2
    for value in (3, 12345, PRIME - 1, PRIME + 7):
        assert value * inverse(value) % PRIME == 1
    for zero in (0, PRIME, 2 * PRIME):
        with pytest.raises(ZeroDivisionError, match="^0 has no inverse in the field$"):
            inverse(zero)


def test_field_element_encoding_refuses_what_is_not_one() -> None:
    from privacy.secagg.field import ELEMENT_BYTES, from_bytes, to_bytes

    assert from_bytes(to_bytes(PRIME - 1)) == PRIME - 1 and to_bytes(PRIME) == bytes(66)
    with pytest.raises(ValueError, match=rf"^a field element is {ELEMENT_BYTES} bytes, got 65$"):
        from_bytes(bytes(65))
    for too_big in (PRIME, PRIME + 1, (1 << 528) - 1):
        with pytest.raises(ValueError, match=r"^not a field element \(>= p\)$"):
            from_bytes(too_big.to_bytes(ELEMENT_BYTES, "big"))


def test_split_refuses_bad_parameters_by_name() -> None:
    secret = os.urandom(32)
    with pytest.raises(shamir.ShamirError, match="^secrets are 32 bytes, got 31$"):
        shamir.split(secret[:31], 2, [0, 1])
    with pytest.raises(shamir.ShamirError, match="^holder ids must be distinct$"):
        shamir.split(secret, 2, [0, 0, 1])
    for bad in (0, 4):
        with pytest.raises(shamir.ShamirError,
                           match=rf"^threshold {bad} must be in 1\.\.3 \(holders\)$"):
            shamir.split(secret, bad, [0, 1, 2])
