"""PL(k) against an unlinkable release: the attacker must link before it can accumulate.

Unlinkable collection (docs/representations.md) stores each clip's representation with a
random pseudonym, shuffled across the fleet: nothing says which released vectors come from
one device. Accumulation attacks (:mod:`.leakage`) need k vectors *of one device*; here the
attacker has to find them itself, from the vectors alone. Its best linkage step:

1. pick a **seed** vector (the evaluation picks ``repeats`` seeds per target device, so every
   device weighs alike; the attacker does not know whose seed it is);
2. **link**: take the seed and its k - 1 nearest released vectors in the pool, by cosine
   similarity under each of two metrics, and keep whichever links better (the attacker's
   best; the evaluation knows which, so the figure is an upper bound on a real attacker
   that must choose blindly):

   * ``whitened``: the population-whitened space of the cross-day linkage attack;
   * ``profile``: the per-clip device log-likelihoods of the fusion attack (what the
     attacker's own labelled data about the targets says each vector looks like);

3. **accumulate** on the linked set exactly as on a true set: profile fusion and set
   statistics name a device (success: the seed's device); cross-day linkage compares a
   set linked on the first half of the days with one linked on the second half (same
   device: the seeds' devices agree). With capture time coarsened to days, the attacker can
   still split by day; with time dropped it could not even do that (this evaluation keeps
   days: the stronger attacker).

The oracle curves of :mod:`.leakage` (true device sets) stay in the report for reference:
the gap between the two is what unlinkability buys.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

from privacy.evaluation.leakage import (
    Observed,
    day_halves,
    fusion_loglik,
    linkage_projection,
    reducer,
    set_probe,
    set_statistics,
)

LINKERS = ("whitened", "profile")


def _unit(h: np.ndarray) -> np.ndarray:
    h = np.asarray(h, np.float64)
    h = h - h.mean(axis=0, keepdims=True)
    return h / np.maximum(np.linalg.norm(h, axis=1, keepdims=True), 1e-12)


def linked_sets(h: np.ndarray, seeds: np.ndarray, pool: np.ndarray, k: int) -> np.ndarray:
    """[len(seeds), k] row indices: each seed and its k - 1 most similar rows of ``pool``.

    ``h`` holds unit rows (cosine = dot product); ``pool`` the indices the attacker may
    link to (the seed itself is excluded, then put first)."""
    pool = np.asarray(pool)
    if k - 1 > len(pool) - 1:
        raise ValueError(f"cannot link {k} vectors out of a pool of {len(pool)}")
    sims = h[seeds] @ h[pool].T
    sims[pool[None, :] == np.asarray(seeds)[:, None]] = -np.inf
    nearest = np.argsort(-sims, axis=1, kind="stable")[:, : k - 1]
    return np.concatenate([np.asarray(seeds)[:, None], pool[nearest]], axis=1)


def _seeds(devices_of: np.ndarray, mask: np.ndarray, repeats: int,
           rng: np.random.Generator) -> np.ndarray:
    out = []
    for d in np.unique(devices_of[mask]).tolist():
        rows = np.flatnonzero(mask & (devices_of == d))
        out.append(rng.choice(rows, size=min(repeats, len(rows)), replace=False))
    return np.concatenate(out)


def linking_spaces(fit: Observed, test: Observed, pop: Observed | None, seed: int
                   ) -> dict[str, np.ndarray]:
    """The attacker's linkage spaces for the released test vectors (unit rows)."""
    devices = np.unique(test.label("device"))
    spaces = {"profile": _unit(fusion_loglik(fit, test.z, "device", devices, seed))}
    if pop is not None:
        reduce, scaler = linkage_projection(pop, seed)
        spaces["whitened"] = _unit(scaler.transform(reduce(test.z)))
    return spaces


def linked_identity(fit: Observed, test: Observed, h: np.ndarray, k: int, repeats: int,
                    seed: int) -> float | None:
    """Identity accuracy at k after linking in space ``h``: the better of profile fusion
    (over the device column: who sent it) and set statistics, on the linked sets."""
    dev = test.label("device")
    devices = np.unique(dev)
    if k > len(dev):
        return None
    rng = np.random.default_rng(seed + 11)
    seeds = _seeds(dev, np.ones(len(dev), bool), repeats, rng)
    sets = linked_sets(h, seeds, np.arange(len(dev)), k)
    truth = dev[seeds]
    loglik = fusion_loglik(fit, test.z, "device", devices, seed)
    fused = float(np.mean(devices[np.argmax(loglik[sets].sum(axis=1), axis=1)] == truth))
    reduce = reducer(fit.z, seed)
    probe = set_probe(Observed(reduce(fit.z), fit.labels), devices, k, repeats, rng, seed)
    if probe is None:
        return fused
    z = reduce(test.z)
    stats = np.stack([set_statistics(z[s]) for s in sets])
    return max(fused, float(np.mean(probe.predict(stats) == truth)))


def linked_linkage_auc(test: Observed, h: np.ndarray, metric_z: np.ndarray, k: int,
                       repeats: int, seed: int) -> float | None:
    """Cross-day linkage AUC at k for sets the attacker linked itself, one per seed, within
    each half of the days; the pair score is the cosine of the sets' means in
    ``metric_z`` (the attacker's linkage space); same device = the seeds' devices agree."""
    dev = test.label("device")
    halves = day_halves(test.label("day"))
    rng = np.random.default_rng(seed + 12)
    means, owners = [], []
    for mask in halves:
        pool = np.flatnonzero(mask)
        if k > len(pool):
            return None
        seeds = _seeds(dev, mask, repeats, rng)
        sets = linked_sets(h, seeds, pool, k)
        m = metric_z[sets].mean(axis=1)
        means.append(m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12))
        owners.append(dev[seeds])
    same = (owners[0][:, None] == owners[1][None, :]).ravel()
    if same.all() or not same.any():
        return None
    return float(roc_auc_score(same, (means[0] @ means[1].T).ravel()))


def linked_curves(fit: Observed, test: Observed, pop: Observed | None, ks: Sequence[int],
                  repeats: int, seed: int) -> dict:
    """Identity and cross-day linkage AUC after the attacker's own best linkage, per k.

    Returns ``identity`` and ``linkage_auc`` curves (best linker per k), and per linker the
    curves it gave (``by_linker``)."""
    spaces = linking_spaces(fit, test, pop, seed)
    by: dict[str, dict[str, dict[int, float]]] = {}
    for name, h in spaces.items():
        ident: dict[int, float] = {}
        link: dict[int, float] = {}
        for k in ks:
            acc = linked_identity(fit, test, h, int(k), repeats, seed)
            if acc is not None:
                ident[int(k)] = acc
            auc = linked_linkage_auc(test, h, h, int(k), repeats, seed)
            if auc is not None:
                link[int(k)] = auc
        by[name] = {"identity": ident, "linkage_auc": link}

    def best(key: str) -> dict[int, float]:
        ks_seen = sorted({k for c in by.values() for k in c[key]})
        return {k: max(c[key][k] for c in by.values() if k in c[key]) for k in ks_seen}

    return {"identity": best("identity"), "linkage_auc": best("linkage_auc"), "by_linker": by}
