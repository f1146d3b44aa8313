"""PL: privacy leakage, for one clip and accumulated over k representations of a device.

Threat model and splits (documented in docs/evaluation.md):

* The **targets** are devices whose released representations (one per clip) the attacker
  holds for some days (``test``).
* The attacker has **its own labelled data**: representations of the same devices on
  *other, disjoint days* (``fit``: e.g. footage it filmed itself or found, passed through
  the public encoder), and a **population of other devices** (``pop``: disjoint people
  it can film freely) to learn a linkage metric. No attacker is a network used in training.

Attacks:

* single clip: a probe (linear / MLP, :mod:`.dtp`) predicts the clip's wearer, location
  and hour-of-day bin (4-hour bins: the routine signal);
* accumulated over k clips of one device (k = 1, 2, 4, ... 64), who is this device?
  - **profile fusion** (identity / location / routine): a per-clip classifier over a
    variable V (wearer, location, hour bin) gives P(v | z); each device d has a profile
    p_d(v) estimated from the attacker's fit days (Laplace-smoothed). With the k clips
    independent given the device, ``log p(z_1..z_k | d) = sum_i log sum_v P(v|z_i) / P(v)
    * p_d(v) + const``; the attacker names the argmax device. For V = wearer this is
    re-identification; V = location finds the device's home and haunts; V = hour bin
    matches the device's daily routine;
  - **set statistics** (identity): the k representations are aggregated into
    ``[mean, std]`` and a linear classifier trained on such sets from the fit days names
    the device;
  - **cross-day linkage**: are two sets of k representations, from disjoint days, the
    same device? Score = cosine similarity of the set means after a projection learned on
    the attacker's population (PCA for wide features + standardisation: whitening); ROC
    AUC over all same-device / different-device pairs of sets.

``PL(k)`` is the success of the best attack at k; the accumulation gain is
``PL(k) - PL(1)``. The device-level chance is ``1 / number of devices`` (AUC: 0.5).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.decomposition import PCA
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from privacy.evaluation.dtp import PROBES, chance, fit_probe, probe_accuracy
from privacy.evaluation.tasks import HOUR_BIN, attribute

__all__ = ["DEFAULT_KS", "HOUR_BIN", "MAX_DIMS", "SMOOTHING", "Observed", "accumulation_gain",
           "day_halves", "device_profiles", "evaluate_leakage", "fused_accuracy", "fusion_curve",
           "fusion_loglik", "set_probe",
           "linkage_auc", "linkage_curve", "linkage_projection", "profile_loglik", "reducer",
           "set_curve", "set_statistics", "single_clip", "subsets"]

DEFAULT_KS = (1, 2, 4, 8, 16, 32, 64)
SMOOTHING = 0.5  # Laplace pseudo-count per profile cell
MAX_DIMS = 64  # attacker-side PCA before set / linkage attacks on wide (pixel) features


@dataclass(frozen=True)
class Observed:
    """Released representations of some clips and the labels an evaluator knows about them.

    ``labels`` holds int arrays ``device`` and ``day`` and one per attacked attribute
    (the synthetic fleet's ``wearer``, ``location``, ``hour``; a manifest's label columns),
    read through :func:`privacy.evaluation.tasks.attribute`.
    """

    z: np.ndarray
    labels: Mapping[str, np.ndarray]

    def __post_init__(self) -> None:
        n = len(self.z)
        for key in ("device", "day"):
            if key not in self.labels:
                raise ValueError(f"Observed.labels is missing {key!r}")
        for key, values in self.labels.items():
            if len(values) != n:
                raise ValueError(f"Observed.labels[{key!r}] has {len(values)} rows, z has {n}")

    def label(self, key: str) -> np.ndarray:
        return attribute(self.labels, key)

    def knows(self, key: str) -> bool:
        """Whether attribute ``key`` can be read from these labels."""
        try:
            attribute(self.labels, key)
        except KeyError:
            return False
        return True


# ------------------------------------------------------------------ single clip


def single_clip(fit: Observed, test: Observed, target: str, seed: int,
                probes: Sequence[str] = PROBES) -> dict[str, float]:
    """Accuracy of each probe predicting ``target`` of one clip, the best, and chance."""
    y_fit, y_test = fit.label(target), test.label(target)
    out = {kind: probe_accuracy(kind, fit.z, y_fit, test.z, y_test, seed) for kind in probes}
    out["best"] = max(out[k] for k in probes)
    out["chance"] = chance(y_fit, y_test)
    return out


# ------------------------------------------------------------------ accumulated: fusion


def device_profiles(values: np.ndarray, devices_of: np.ndarray, classes: np.ndarray,
                    devices: np.ndarray, smoothing: float = SMOOTHING) -> np.ndarray:
    """[D, V]: each device's smoothed distribution over the classes (attacker's fit data)."""
    index = {c: j for j, c in enumerate(classes.tolist())}
    counts = np.full((len(devices), len(classes)), smoothing, np.float64)
    for i, d in enumerate(devices.tolist()):
        for v in np.asarray(values)[np.asarray(devices_of) == d].tolist():
            if v in index:
                counts[i, index[v]] += 1
    return counts / counts.sum(axis=1, keepdims=True)


def profile_loglik(posteriors: np.ndarray, prior: np.ndarray, profiles: np.ndarray) -> np.ndarray:
    """[n, D]: ``log sum_v P(v|z_i) / P(v) * p_d(v)`` for every clip i and device d."""
    ratio = posteriors / np.maximum(prior, 1e-12)[None, :]
    return np.log(np.maximum(ratio @ profiles.T, 1e-300))


def subsets(n: int, k: int, repeats: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Index sets of size k out of n: every singleton for k = 1, else ``repeats`` random ones."""
    if k > n:
        return []
    if k == 1:
        return [np.array([i]) for i in range(n)]
    return [rng.choice(n, size=k, replace=False) for _ in range(repeats)]


def fused_accuracy(loglik: np.ndarray, device_of: np.ndarray, devices: np.ndarray, k: int,
                   repeats: int, rng: np.random.Generator) -> float | None:
    """Fraction of k-sets of a device's clips for which the summed log-likelihood names it.

    ``None`` when some device has fewer than k clips (not measured at this k).
    """
    hits, total = 0, 0
    for i, d in enumerate(devices.tolist()):
        rows = np.flatnonzero(device_of == d)
        sets = subsets(len(rows), k, repeats, rng)
        if not sets:
            return None
        for s in sets:
            hits += int(np.argmax(loglik[rows[s]].sum(axis=0)) == i)
            total += 1
    return hits / total


def fusion_loglik(fit: Observed, z: np.ndarray, target: str, devices: np.ndarray,
                  seed: int) -> np.ndarray:
    """[n, D]: each released clip's profile log-likelihood under every device (the fusion
    attack's per-clip scores on ``target``, learned on the attacker's fit data)."""
    y_fit = fit.label(target)
    probe = fit_probe("linear", fit.z, y_fit, seed)
    classes = probe.classes_
    posteriors = probe.predict_proba(np.asarray(z, np.float64))
    prior = np.array([np.mean(y_fit == c) for c in classes])
    profiles = device_profiles(y_fit, fit.label("device"), classes, devices)
    return profile_loglik(posteriors, prior, profiles)


def fusion_curve(fit: Observed, test: Observed, target: str, ks: Sequence[int], repeats: int,
                 seed: int) -> dict[int, float]:
    """PL(k) of the profile-fusion attack on ``target`` (identity | location | routine)."""
    devices = np.unique(test.label("device"))
    loglik = fusion_loglik(fit, test.z, target, devices, seed)
    rng = np.random.default_rng(seed)
    out: dict[int, float] = {}
    for k in ks:
        acc = fused_accuracy(loglik, test.label("device"), devices, k, repeats, rng)
        if acc is not None:
            out[int(k)] = acc
    return out


# ------------------------------------------------------------------ accumulated: set statistics


def reducer(z_attacker: np.ndarray, seed: int):
    """Identity for narrow features; else a PCA to MAX_DIMS fitted on the attacker's data."""
    z_attacker = np.asarray(z_attacker, np.float64)
    if z_attacker.shape[1] <= MAX_DIMS:
        return lambda z: np.asarray(z, np.float64)
    n = min(MAX_DIMS, len(z_attacker) - 1)
    pca = PCA(n_components=n, random_state=seed, svd_solver="randomized").fit(z_attacker)
    return lambda z: pca.transform(np.asarray(z, np.float64))


def set_statistics(z: np.ndarray) -> np.ndarray:
    """Aggregate k representations into one vector: ``[mean, std]`` over the set."""
    return np.concatenate([z.mean(axis=0), z.std(axis=0)])


def _sets(obs: Observed, devices: np.ndarray, k: int, repeats: int,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray] | None:
    feats, ys = [], []
    dev = obs.label("device")
    for d in devices.tolist():
        rows = np.flatnonzero(dev == d)
        sets = subsets(len(rows), k, repeats, rng)
        if not sets:
            return None
        feats += [set_statistics(obs.z[rows[s]]) for s in sets]
        ys += [d] * len(sets)
    return np.stack(feats), np.array(ys)


def set_curve(fit: Observed, test: Observed, ks: Sequence[int], repeats: int,
              seed: int) -> dict[int, float]:
    """PL(k) of the set-statistics identity attack (trained on sets from the fit days)."""
    rng = np.random.default_rng(seed + 1)
    devices = np.unique(test.label("device"))
    reduce = reducer(fit.z, seed)
    fit, test = Observed(reduce(fit.z), fit.labels), Observed(reduce(test.z), test.labels)
    out: dict[int, float] = {}
    for k in ks:
        probe = set_probe(fit, devices, k, repeats, rng, seed)
        trial = _sets(test, devices, k, repeats, rng)
        if probe is None or trial is None:
            continue
        out[int(k)] = float(np.mean(probe.predict(trial[0]) == trial[1]))
    return out


def set_probe(fit: Observed, devices: np.ndarray, k: int, repeats: int, rng: np.random.Generator,
              seed: int):
    """The set-statistics classifier the attacker trains on k-sets of its fit days (None
    when some device has fewer than k fit clips). ``fit`` is already reduced."""
    train = _sets(fit, devices, k, repeats, rng)
    return None if train is None else fit_probe("linear", train[0], train[1], seed)


# ------------------------------------------------------------------ cross-day linkage


Metric = tuple  # (reduce, StandardScaler)


def linkage_projection(pop: Observed, seed: int = 0) -> Metric:
    """The attacker's metric, learned on its own population of devices only: a PCA (for
    wide features) and per-dimension standardisation, i.e. whitening of the population's
    representations, so that the cosine similarity weighs every direction of variation
    alike. (A supervised LDA over the population's devices was tried: with a handful of
    population devices it keeps too few directions and links worse.)"""
    reduce = reducer(pop.z, seed)
    return reduce, StandardScaler().fit(reduce(pop.z))


def _project(z: np.ndarray, metric: Metric) -> np.ndarray:
    reduce, scaler = metric
    return scaler.transform(reduce(z))


def day_halves(days: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks of the first and the second half of the distinct days."""
    uniq = np.unique(days)
    if len(uniq) < 2:
        raise ValueError("linkage needs representations from at least two distinct days")
    first = set(uniq[: len(uniq) // 2].tolist())
    a = np.array([d in first for d in days.tolist()])
    return a, ~a


def linkage_auc(pop: Observed, test: Observed, k: int, repeats: int, seed: int,
                metric: Metric | None = None) -> float | None:
    """ROC AUC of "same device?" for pairs of k-sets taken from disjoint days."""
    metric = metric or linkage_projection(pop, seed)
    h = _project(test.z, metric)
    dev, (first, second) = test.label("device"), day_halves(test.label("day"))
    rng = np.random.default_rng(seed + 2)
    means: list[list[tuple[int, np.ndarray]]] = [[], []]
    for half, mask in enumerate((first, second)):
        for d in np.unique(dev).tolist():
            rows = np.flatnonzero(mask & (dev == d))
            sets = subsets(len(rows), k, repeats, rng)
            if not sets:
                return None
            means[half] += [(d, h[rows[s]].mean(axis=0)) for s in sets]
    a = np.stack([m for _, m in means[0]])
    b = np.stack([m for _, m in means[1]])
    a /= np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b /= np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    scores = (a @ b.T).ravel()
    same = (np.array([d for d, _ in means[0]])[:, None] == np.array([d for d, _ in means[1]])[None, :]).ravel()
    return float(roc_auc_score(same, scores))


def linkage_curve(pop: Observed, test: Observed, ks: Sequence[int], repeats: int,
                  seed: int) -> dict[int, float]:
    metric = linkage_projection(pop, seed)
    out: dict[int, float] = {}
    for k in ks:
        auc = linkage_auc(pop, test, k, repeats, seed, metric)
        if auc is not None:
            out[int(k)] = auc
    return out


# ------------------------------------------------------------------ everything


def accumulation_gain(curve: Mapping[int, float]) -> dict[int, float]:
    """``PL(k) - PL(1)`` for every measured k (empty when PL(1) was not measured)."""
    if 1 not in curve:
        return {}
    return {k: v - curve[1] for k, v in curve.items()}


def evaluate_leakage(fit: Observed, test: Observed, pop: Observed | None, *,
                     ks: Sequence[int] = DEFAULT_KS, repeats: int = 20, seed: int = 0,
                     probes: Sequence[str] = PROBES,
                     attributes: Sequence[str] = ("identity", "location", "routine"),
                     identity: str = "identity") -> dict:
    """Single-clip inference, PL(k) curves with gains, and linkage AUC(k) of one representation.

    ``attributes`` are attacked single clip and by profile fusion (each needs its labels in
    both ``fit`` and ``test``); ``identity_best`` is the better of the ``identity``
    attribute's fusion curve and the set-statistics attack, or the latter alone when
    ``identity`` is not attacked (a server that knows only which device sent what). The
    set-statistics attack and linkage need only the device, so they always run."""
    for name in attributes:
        if not (fit.knows(name) and test.knows(name)):
            raise ValueError(f"attribute {name!r} has no labels in the fit or the test "
                             "representations")
    n_dev = len(np.unique(test.label("device")))
    single = {t: single_clip(fit, test, t, seed, probes) for t in attributes}
    curves: dict[str, dict[int, float]] = {
        t: fusion_curve(fit, test, t, ks, repeats, seed) for t in attributes
    }
    curves["identity_set"] = set_curve(fit, test, ks, repeats, seed)
    if identity in curves:
        curves["identity_best"] = {k: max(v, curves["identity_set"].get(k, 0.0))
                                   for k, v in curves[identity].items()}
    else:
        curves["identity_best"] = dict(curves["identity_set"])
    if pop is not None:
        curves["linkage_auc"] = linkage_curve(pop, test, ks, repeats, seed)
    return {
        "single": single,
        "curves": curves,
        "gain": {name: accumulation_gain(c) for name, c in curves.items()},
        "device_chance": 1.0 / n_dev,
    }
