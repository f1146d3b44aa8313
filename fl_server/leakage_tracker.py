"""What the stored representations of a run reveal as they accumulate: the tracker's data.

The collection (`fl_server.collection`) stores each device's uploads; after each
collection this module builds the attacker's and the targets' labelled representations
and runs `privacy.evaluation.leakage` on them. What the labels may be depends on what the
server really knows:

* **Synthetic fleet** (no `--eval-dataset`: a benchmark, not a deployment). Every clip id
  names a slot of the generator's stream, so the evaluator knows the wearer and the place
  of each stored clip; the attacker fits on the run devices' held-out days (passed through
  the public encoder and the upload channel). Identity, location and routine are
  attacked one clip at a time and by profile fusion; set statistics and linkage name the
  device.
* **Real footage** (`--eval-dataset`). The server knows only which device sent what, and
  when (day; hour where the footage gives one). So the accumulation curves are about the
  **device**: the attacker fits on the stored representations of the earlier half of the
  stored days and is scored on the later half (set statistics re-identify the device,
  linkage links sets from disjoint days, routine fusion where every hour is known);
  while only one day is stored, on alternate clips of that day.
  Attribute leakage (what one representation says of identity, place, or any other label)
  comes **only from the operator's eval set**: its clips through the same channel, probes
  fit on its earlier days and scored on its later days, one per label column.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from fl_server.evaluation import HeldOut
from fl_server.representations import StoredRepresentation
from privacy.clips import ClipBatch
from privacy.evaluation.dtp import chance, probe_accuracy
from privacy.evaluation.leakage import (
    DEFAULT_KS,
    Observed,
    accumulation_gain,
    day_halves,
    evaluate_leakage,
    linkage_curve,
)
from privacy.payload import decode_payload
from privacy.synthetic import FleetSpec, device_metas, fleet_batch

LEAKAGE_REPEATS = 10
_SYNTHETIC_ID = re.compile(r"^d(\d{5})-day(\d{3,})-c(\d{3,})$")
#: Labels of an eval-set clip that are not attributes to attack (the utility label,
#: capture time, the camera, and the generator-only fields).
_NOT_ATTRIBUTES = frozenset({"activity", "device", "day", "hour", "objects", "indoor"})
#: Report names of the eval set's built-in label fields.
_ATTRIBUTE_NAME = {"wearer": "identity"}


def crossed(gain: Mapping[str, Mapping[Any, float]], alert: float) -> dict[str, float]:
    """The attacks whose accumulation gain max_k PL(k) - PL(1) reached `alert`, with that
    gain: what flags a collection (`leakage_alert`), by attack, so an operator knows which
    attacker profits from the history (the saved report, the round's record, `fedmsr
    leakage show`)."""
    return {name: max(g.values()) for name, g in sorted(gain.items())
            if g and max(g.values()) >= alert}


@dataclass(frozen=True)
class Released:
    """Representations as the server would store them (sampled z, quantised), with labels."""

    observed: Observed
    mean_rate_bits: float


@dataclass(frozen=True)
class Tracked:
    """One collection's leakage figures: the report (None: not yet measurable, see
    `skipped`) and, on real footage, the eval set's single-clip attribute inference."""

    report: dict[str, Any] | None
    skipped: str
    devices: int
    clips: int
    eval_attributes: dict[str, dict[str, float]] | None = None


# -- synthetic fleet ----------------------------------------------------------------------


@lru_cache(maxsize=2)
def synthetic_held_out(spec: FleetSpec, indices: tuple[int, ...], train_days: int) -> ClipBatch:
    """The attacker's split: the run devices' held-out days (cached for the run)."""
    return fleet_batch(spec, list(indices), range(train_days, spec.days))


def synthetic_labels(batch: ClipBatch) -> dict[str, np.ndarray]:
    return {k: batch.labels[k] for k in ("device", "wearer", "location", "hour", "day")}


def observed_synthetic(rows: list[StoredRepresentation], index_of: Mapping[int, int | None],
                       spec: FleetSpec) -> Observed:
    """Stored representations with the evaluator's ground truth (synthetic clips only:
    the clip id names the slot of the device's stream, from which the generator gives
    the wearer and place; the hour and day are the uploaded timestamp)."""
    z: list[np.ndarray] = []
    labels: dict[str, list[int]] = {k: [] for k in ("device", "wearer", "location", "hour", "day")}
    for row in rows:
        match = _SYNTHETIC_ID.match(row.clip_id)
        index = index_of.get(row.device_id)
        if match is None or index is None or int(match.group(1)) != index:
            continue
        day, slot = int(match.group(2)), int(match.group(3))
        meta = _metas(spec, index, day)[slot]
        z.append(decode_payload(row.payload))
        for key, value in (("device", index), ("wearer", meta.wearer),
                           ("location", meta.location_id), ("hour", row.captured_hour),
                           ("day", row.captured_day)):
            labels[key].append(-1 if value is None else value)
    return _stack(z, labels)


@lru_cache(maxsize=4096)
def _metas(spec: FleetSpec, index: int, day: int) -> tuple[Any, ...]:
    return tuple(device_metas(dataclasses.replace(spec, days=max(spec.days, day + 1)),
                              index, [day]))


def track_synthetic(fit: Observed, target: Observed, seed: int) -> Tracked:
    report, reason = curves(fit, target, seed, ("identity", "location", "routine"))
    return Tracked(report, reason, _devices(target), len(target.z))


# -- real footage -------------------------------------------------------------------------


def observed_uploads(rows: list[StoredRepresentation], index_of: Mapping[int, int | None]
                     ) -> Observed:
    """Every stored representation of the run's devices, with what the server knows of it:
    the device, the day, and the hour (-1 where the footage gave none)."""
    z: list[np.ndarray] = []
    labels: dict[str, list[int]] = {"device": [], "hour": [], "day": []}
    for row in rows:
        index = index_of.get(row.device_id)
        if index is None:
            continue
        z.append(decode_payload(row.payload))
        labels["device"].append(index)
        labels["hour"].append(-1 if row.captured_hour is None else row.captured_hour)
        labels["day"].append(row.captured_day)
    return _stack(z, labels)


def track_uploads(stored: Observed, eval_set: tuple[Observed, Observed] | None,
                  seed: int) -> Tracked:
    """Device re-identification and linkage on the uploads, and attribute inference from
    the eval set alone.

    The attacker fits on the earlier half of the stored capture days and is scored on the
    later half. While every stored clip comes from one day (a device's held-out day: the
    first collections of a run), it fits on every other stored clip of each device and is
    scored on the rest: re-identification within a day, which the report says
    (``split``); linkage, which needs disjoint days, waits.
    """
    attributes = eval_attributes(*eval_set, seed) if eval_set is not None else None
    days = np.asarray(stored.labels["day"])
    if len(np.unique(days)) >= 2:
        earlier, later = day_halves(days)
        split = "capture days"
    else:
        earlier = np.zeros(len(days), bool)
        for d in np.unique(stored.labels["device"]).tolist():
            earlier[np.flatnonzero(np.asarray(stored.labels["device"]) == d)[::2]] = True
        later, split = ~earlier, "clips of one capture day"
    fit, test = _subset(stored, earlier), _subset(stored, later)
    # routine fusion where every hour is known and the fit clips span two time-of-day bins
    routine = (bool(np.all(np.asarray(stored.labels["hour"]) >= 0))
               and len(np.unique(fit.label("routine"))) >= 2)
    report, reason = curves(fit, test, seed, ("routine",) if routine else ())
    if report is not None:
        report = {**report, "split": split}
        if split == "capture days":
            report["curves"]["linkage_auc"] = _upload_linkage(stored, seed)
            report["gain"]["linkage_auc"] = accumulation_gain(report["curves"]["linkage_auc"])
    return Tracked(report, reason, _devices(stored), len(stored.z), attributes)


def _upload_linkage(stored: Observed, seed: int) -> dict[int, float]:
    """Linkage AUC(k) of sets from the earlier vs the later stored days. The attacker's
    metric is a whitening (PCA + standardisation), which reads no label, so it is learned
    on the stored representations themselves: the server has no other population."""
    # linkage_curve leaves out each k some device has fewer clips than in a half
    return linkage_curve(stored, stored, DEFAULT_KS, LEAKAGE_REPEATS, seed)


def eval_attributes(fit: Observed, test: Observed, seed: int) -> dict[str, dict[str, float]]:
    """Single-clip inference of each of the eval set's labels from one released
    representation: a linear probe fit on the eval set's earlier days, scored on its later
    days (clips without the label left out), with its chance level."""
    out: dict[str, dict[str, float]] = {}
    for name in sorted(set(fit.labels) - _NOT_ATTRIBUTES):
        y_fit, y_test = np.asarray(fit.labels[name]), np.asarray(test.labels[name])
        a, b = y_fit >= 0, y_test >= 0
        if len(np.unique(y_fit[a])) < 2 or not b.any():
            continue
        acc = probe_accuracy("linear", fit.z[a], y_fit[a], test.z[b], y_test[b], seed)
        out[_ATTRIBUTE_NAME.get(name, name)] = {"linear": acc,
                                                "chance": chance(y_fit[a], y_test[b])}
    return out


def eval_observed(held_out: HeldOut, z_fit: np.ndarray, z_test: np.ndarray
                  ) -> tuple[Observed, Observed]:
    """The eval set's released fit and test representations with every label it has."""
    def labelled(batch: ClipBatch, z: np.ndarray) -> Observed:
        return Observed(z, {k: np.asarray(v) for k, v in batch.labels.items()
                            if np.asarray(v).ndim == 1})

    return labelled(held_out.fit, z_fit), labelled(held_out.test, z_test)


# -- shared -------------------------------------------------------------------------------


def curves(fit: Observed, test: Observed, seed: int, targets: tuple[str, ...]
           ) -> tuple[dict[str, Any] | None, str]:
    """evaluate_leakage on the stored representations, or why it cannot run yet."""
    devices, counts = np.unique(test.labels["device"], return_counts=True)
    if len(devices) < 2:
        return None, f"{len(devices)} device(s) with stored representations; need 2"
    keep = np.isin(fit.labels["device"], devices)
    fit = _subset(fit, keep)
    ks = [k for k in DEFAULT_KS if k <= int(counts.min())]
    # Linkage compares sets from disjoint days: only once two days are stored.
    pop = fit if len(np.unique(test.labels["day"])) >= 2 else None
    try:
        report = evaluate_leakage(fit, test, pop, ks=ks, repeats=LEAKAGE_REPEATS, seed=seed,
                                  probes=("linear",), attributes=targets)
    except ValueError as exc:  # e.g. one class only in the attacker's labels
        return None, f"attack could not be fitted: {exc}"
    return report, ""


def _subset(obs: Observed, mask: np.ndarray) -> Observed:
    return Observed(obs.z[mask], {k: np.asarray(v)[mask] for k, v in obs.labels.items()})


def _stack(z: list[np.ndarray], labels: dict[str, list[int]]) -> Observed:
    width = len(z[0]) if z else 0
    return Observed(np.asarray(z, np.float32).reshape(len(z), width),
                    {k: np.asarray(v, np.int64) for k, v in labels.items()})


def _devices(obs: Observed) -> int:
    return len(np.unique(obs.labels["device"]))
