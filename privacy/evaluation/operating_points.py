"""Operating points: every release the evaluation measured, as one comparable row, and the targets.

A *release* is an encoder (beta = 0, the MSR at some beta, with or without identity-invariant
training or DP-SGD) followed by the release pipeline's optional stages: the randomized
release (Gaussian on the clipped posterior mean, :mod:`privacy.release_mechanism`) and
unlinkable collection (pseudonyms, coarse time, shuffled across the fleet). Per release:

* ``activity_acc``: the utility task's best probe accuracy; ``activity_ref``: beta = 0's;
* ``identity_k1``: who is this device from one clip: the better of the single-clip probes
  and the accumulation attacks at k = 1;
* ``identity_kmax`` at ``kmax`` (the largest k measured): the best accumulation attack
  on up to k clips (an attacker holding k clips may use fewer, so this is never below
  ``identity_k1``); for an unlinkable release, on the sets the attacker linked itself
  (:mod:`.linking`), never on the true device sets;
* ``linkage_auc_kmax``: cross-day linkage at ``kmax`` (linked sets when unlinkable);
* ``psnr`` (the best reconstruction attack on the release) against ``psnr_blur``;
* ``epsilon_per_device``: the randomized release's epsilon for one device's released clips
  in the attacked window, composed (PLD); ``None`` without a randomized release;
* ``activity_bound``: for a randomized release, the highest utility accuracy *any*
  classifier can reach from it (:func:`fano_accuracy_bound`): each released vector
  carries at most ``information_bits(D)`` bits about its clip (the Gaussian channel's
  capacity), and Fano's inequality turns that into an accuracy ceiling given the utility
  label's entropy. It is what makes a randomized release's cost a bound, not a finding;
* ``identity_via_activity``: identity from the *predicted* utility label only (a probe of
  the utility label on the release, then the best guess of the device from that label).
  Any release that keeps the utility keeps this much identity: it is the floor the
  targets meet or cannot meet on this benchmark.

Unlinkability changes nothing per clip: activity, single-clip identity and reconstruction
of an unlinkable release are those of the same vectors released linkably.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from privacy.evaluation.dtp import PROBES, fit_probe
from privacy.evaluation.tasks import Tasks, attribute


@dataclass(frozen=True)
class Targets:
    """What an operating point must reach (on the full synthetic benchmark)."""

    activity_fraction: float = 0.90  # of beta = 0's
    identity_k1_over_chance: float = 0.05
    identity_kmax_over_chance: float = 0.10
    linkage_auc: float = 0.60


@dataclass(frozen=True)
class OperatingPoint:
    name: str
    encoder: str
    unlinkable: bool
    randomized: bool
    activity_acc: float
    activity_ref: float
    identity_k1: float
    identity_kmax: float | None
    kmax: int | None
    identity_chance: float
    linkage_auc_kmax: float | None
    psnr: float
    psnr_blur: float
    epsilon_per_device: float | None
    identity_via_activity: float
    activity_bound: float | None = None

    def misses(self, targets: Targets) -> dict[str, float]:
        """By how much each target is missed (0 where met; a missing figure misses by 1)."""
        def over(value: float | None, limit: float) -> float:
            return 1.0 if value is None else max(0.0, value - limit)

        return {
            "activity": max(0.0, targets.activity_fraction * self.activity_ref - self.activity_acc),
            "identity_k1": over(self.identity_k1, self.identity_chance + targets.identity_k1_over_chance),
            "identity_kmax": over(self.identity_kmax,
                                  self.identity_chance + targets.identity_kmax_over_chance),
            "linkage_auc": over(self.linkage_auc_kmax, targets.linkage_auc),
            "psnr": max(0.0, self.psnr - self.psnr_blur),
        }

    def to_dict(self) -> dict:
        return asdict(self)


def utility_accuracy(row: Mapping, tasks: Tasks) -> float:
    """The best probe's accuracy on the utility label."""
    return max(row["dtp"][k] for k in (f"{tasks.utility}_{p}" for p in PROBES) if k in row["dtp"])


def _at_kmax(curve: Mapping[int, float]) -> tuple[int | None, float | None]:
    if not curve:
        return None, None
    k = max(curve)
    return int(k), float(curve[k])


def identity_via_utility(z_fit: np.ndarray, z_test: np.ndarray, fit_labels: Mapping[str, np.ndarray],
                         test_labels: Mapping[str, np.ndarray], tasks: Tasks, seed: int) -> float:
    """Identity accuracy of the two-step attack: utility label predicted from the release,
    then the identity most often seen with that label in the attacker's fit data."""
    u_fit = attribute(fit_labels, tasks.utility)
    who_fit, who_test = attribute(fit_labels, tasks.identity), attribute(test_labels, tasks.identity)
    if len(np.unique(u_fit)) < 2:  # one label: nothing to predict
        predicted = np.full(len(z_test), u_fit[0])
    else:
        predicted = fit_probe("linear", z_fit, u_fit, seed).predict(np.asarray(z_test, np.float64))
    guess = {}
    for u in np.unique(u_fit).tolist():
        values, counts = np.unique(who_fit[u_fit == u], return_counts=True)
        guess[u] = values[np.argmax(counts)]
    fallback = np.unique(who_fit, return_counts=True)
    default = fallback[0][np.argmax(fallback[1])]
    named = np.array([guess.get(p, default) for p in predicted.tolist()])
    return float(np.mean(named == who_test))


def identity_from_noisy_utility(fit_labels: Mapping[str, np.ndarray],
                                test_labels: Mapping[str, np.ndarray], tasks: Tasks,
                                accuracy: float) -> float:
    """Expected identity accuracy of the two-step attack (utility label, then the identity
    most often seen with it in the fit data) when the utility label it reads is right with
    probability ``accuracy`` and otherwise any other label, uniformly.

    Exact, from the labels alone: what any release whose utility predictions reach that
    accuracy hands this attacker (with errors spread evenly). At the activity target it
    is the identity floor the targets run into on a benchmark where routines differ."""
    u_fit, u_test = attribute(fit_labels, tasks.utility), attribute(test_labels, tasks.utility)
    who_fit, who_test = attribute(fit_labels, tasks.identity), attribute(test_labels, tasks.identity)
    classes = np.unique(np.concatenate([u_fit, u_test]))
    guess = {}
    for u in classes.tolist():
        pool = who_fit[u_fit == u] if np.any(u_fit == u) else who_fit
        values, counts = np.unique(pool, return_counts=True)
        guess[u] = values[np.argmax(counts)]
    hits = 0.0
    for u, who in zip(u_test.tolist(), who_test.tolist(), strict=True):
        right = float(guess[u] == who)
        wrong = [float(guess[v] == who) for v in classes.tolist() if v != u]
        hits += accuracy * right + ((1 - accuracy) * float(np.mean(wrong)) if wrong else 0.0)
    return hits / len(u_test)


def _binary_entropy(p: float) -> float:
    return 0.0 if p <= 0.0 or p >= 1.0 else float(-p * np.log2(p) - (1 - p) * np.log2(1 - p))


def label_entropy(labels: np.ndarray) -> tuple[float, int]:
    """(H(label) in bits, number of classes) of an empirical label distribution."""
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum()), len(counts)


def fano_accuracy_bound(info_bits: float, entropy_bits: float, classes: int) -> float:
    """The largest accuracy a in [1/K, 1] with ``h(1-a) + (1-a) log2(K-1) >= H - I``.

    Fano's inequality: any estimate of a label A from Y errs with probability P_e where
    ``h(P_e) + P_e log2(K - 1) >= H(A | Y) >= H(A) - I(A; Y)``, and ``I(A; Y) <= I(X; Y)``
    (A is a function of the clip X). The left side grows with P_e up to (K-1)/K, so the
    accuracy 1 - P_e is at most the returned value."""
    if classes < 2:
        return 1.0
    need = entropy_bits - info_bits
    if need <= 0:
        return 1.0

    def f(acc: float) -> float:
        pe = 1.0 - acc
        return _binary_entropy(pe) + pe * np.log2(classes - 1)

    lo, hi = 1.0 / classes, 1.0  # f(lo) = log2 K >= need, f decreasing on [1/K, 1]
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if f(mid) >= need else (lo, mid)
    return lo


def point(row: Mapping, *, encoder: str, unlinkable: bool, ref_activity: float, blur_psnr: float,
          tasks: Tasks, via_activity: float, linked: Mapping | None = None,
          epsilon: float | None = None, activity_bound: float | None = None) -> OperatingPoint:
    """One release's operating point from its evaluated row (and, when unlinkable, the
    curves of the link-then-accumulate attack)."""
    pl = row["pl"]
    single = pl["single"][tasks.identity]
    oracle = {int(k): float(v) for k, v in pl["curves"]["identity_best"].items()}
    k1 = max(float(single["best"]), oracle.get(1, 0.0))
    if unlinkable:
        if linked is None:
            raise ValueError(f"{row['name']}: an unlinkable release needs the linked curves")
        curve = {int(k): float(v) for k, v in linked["identity"].items()}
        _, link = _at_kmax({int(k): v for k, v in linked["linkage_auc"].items()})
    else:
        curve = oracle
        _, link = _at_kmax({int(k): float(v) for k, v in pl["curves"].get("linkage_auc", {}).items()})
    # an attacker holding k clips may use any k' <= k of them: the best over the curve
    kmax, _ = _at_kmax(curve)
    ident = None if kmax is None else max(k1, *curve.values())
    name = row["name"] + (" + unlinkable" if unlinkable else "")
    return OperatingPoint(
        name=name, encoder=encoder, unlinkable=unlinkable, randomized="release" in row,
        activity_acc=utility_accuracy(row, tasks), activity_ref=ref_activity, identity_k1=k1,
        identity_kmax=ident, kmax=kmax, identity_chance=float(single["chance"]),
        linkage_auc_kmax=link, psnr=float(row["rr"]["best"]["psnr"]), psnr_blur=blur_psnr,
        epsilon_per_device=epsilon, identity_via_activity=via_activity,
        activity_bound=activity_bound)


def pareto(points: Sequence[OperatingPoint]) -> list[str]:
    """Names of the points no other point beats on both activity (higher) and identity at
    k_max (lower), in order of activity."""
    def dominated(p: OperatingPoint) -> bool:
        pi = p.identity_kmax if p.identity_kmax is not None else 1.0
        for q in points:
            qi = q.identity_kmax if q.identity_kmax is not None else 1.0
            if q is not p and q.activity_acc >= p.activity_acc and qi <= pi and \
                    (q.activity_acc > p.activity_acc or qi < pi):
                return True
        return False

    return [p.name for p in sorted(points, key=lambda p: -p.activity_acc) if not dominated(p)]


def check_targets(points: Sequence[OperatingPoint], targets: Targets = Targets()) -> dict:
    """Which points meet every target, and the nearest one (smallest summed miss, with
    activity and identity misses in accuracy points and PSNR's in tens of dB)."""
    rows = []
    for p in points:
        m = p.misses(targets)
        total = m["activity"] + m["identity_k1"] + m["identity_kmax"] + m["linkage_auc"] + m["psnr"] / 10
        rows.append((total, p.name, m))
    met = [name for total, name, _ in rows if total == 0]
    nearest = min(rows, key=lambda r: r[0]) if rows else None
    return {"targets": asdict(targets), "met_by": met,
            "nearest": None if nearest is None else {"name": nearest[1], "misses": nearest[2]},
            "misses": {name: m for _, name, m in rows}}


def summarise(points: Sequence[OperatingPoint], targets: Targets = Targets()) -> dict:
    return {"points": [p.to_dict() for p in points], "pareto": pareto(points),
            **check_targets(points, targets)}


__all__ = ["OperatingPoint", "Targets", "check_targets", "fano_accuracy_bound",
           "identity_from_noisy_utility", "identity_via_utility", "label_entropy", "pareto", "point", "summarise",
           "utility_accuracy"]
