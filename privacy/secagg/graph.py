"""The communication graph: a Harary graph H(n, k) over a seeded permutation (Bell et al.).

Each device shares its secrets with, and masks against, only its k neighbours, so per-
device work is O(k) = O(log n) instead of O(n). The devices are placed on a ring in an
order fixed by HMAC-SHA256(public seed, id) (deterministic, checkable by every device, no
NumPy/`random` generator), and each is joined to the k/2 nearest on each side. k = n - 1
gives the complete graph (the original SecAgg).
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Sequence

from privacy.secagg.errors import SecAggError


def default_neighbours(n: int) -> int:
    """k = 2 * ceil(log2 n) (even, O(log n)), capped at the complete graph n - 1."""
    if n < 2:
        raise SecAggError("secure aggregation needs at least 2 devices")
    return min(n - 1, 2 * math.ceil(math.log2(n)))


def default_threshold(k: int) -> int:
    """t = floor(k / 2) + 1: a strict majority of a neighbourhood.

    More than half is what makes the per-peer guard sufficient: a server asking some
    neighbours of j for j's self-mask share and the others for j's key share can never
    collect t of both.
    """
    return k // 2 + 1


def threshold_for(k: int, colluding: int = 0) -> int:
    """t = floor((k + C) / 2) + 1: the smallest t at which C colluding devices and the server
    cannot unmask a neighbour.

    Worst case all C colluders are neighbours of the target u and hand over both shares
    of u; each honest neighbour (k - C of them) reveals at most one kind. Getting t of
    both kinds needs 2 (t - C) <= k - C, so t > (k + C) / 2 rules it out. C = 0 gives the
    strict majority of `default_threshold`.
    """
    if colluding < 0:
        raise SecAggError(f"the collusion bound must be >= 0, got {colluding}")
    return (k + colluding) // 2 + 1


def consistency_quorum(n: int, t: int, colluding: int = 0) -> int:
    """Valid survivor-set signatures a device needs before it reveals any share.

    max(t, floor((n + C) / 2) + 1). Each honest device signs one survivor set per round,
    colluders sign anything: two different sets both reaching this many signatures would
    need 2 * quorum - C > n signers, more devices than the round has. So the server can
    show at most one survivor set to the devices that unmask (Bell et al. 2020's
    consistency check; with SecAgg+'s small t, t signatures alone would not rule out two
    sets signed by disjoint groups).
    """
    return max(t, (n + colluding) // 2 + 1)


def check_parameters(n: int, k: int, t: int, colluding: int = 0) -> None:
    if n < 2:
        raise SecAggError("secure aggregation needs at least 2 devices")
    if not (k == n - 1 or (k % 2 == 0 and 2 <= k < n)):
        raise SecAggError(f"neighbours k={k} must be even and in 2..{n - 1}, or {n - 1} "
                          f"(complete graph) for n={n} devices")
    if not 0 <= colluding < k:
        raise SecAggError(f"collusion bound C={colluding} must be in 0..{k - 1} for k={k} "
                          "neighbours (raise the neighbours or lower the bound)")
    low = threshold_for(k, colluding)
    if not low <= t <= k:
        raise SecAggError(f"threshold t={t} must be in {low}..{k} for k={k} and C={colluding} "
                          "colluding devices (more than (k + C) / 2)")


def ring_order(ids: Sequence[int], seed: bytes) -> list[int]:
    """The devices in ring order: sorted by HMAC-SHA256(seed, id)."""
    def rank(device: int) -> bytes:
        return hmac.new(seed, device.to_bytes(8, "big", signed=False), hashlib.sha256).digest()
    return sorted(ids, key=rank)


def neighbours(ids: Sequence[int], k: int, seed: bytes) -> dict[int, frozenset[int]]:
    """Each device's k neighbours (symmetric, no self loops)."""
    n = len(ids)
    if len(set(ids)) != n:
        raise SecAggError("device ids must be distinct")
    if k == n - 1:
        return {d: frozenset(ids) - {d} for d in ids}
    ring = ring_order(ids, seed)
    half = k // 2
    result: dict[int, frozenset[int]] = {}
    for pos, device in enumerate(ring):
        result[device] = frozenset(ring[(pos + off) % n] for off in range(-half, half + 1) if off)
    return result
