"""The evaluation's data, as one split structure: from the synthetic fleet or a labelled manifest.

`fedmsr eval` trains the compared encoders on *train* clips and hands the harness
(`privacy.evaluation.harness`) an :class:`~privacy.evaluation.harness.EvalData`: *fit*
(the attacker's labelled data about the target devices on other days, and the probes'
training set), *test* (the targets' released clips) and *pop* (the attacker's own
population, for the linkage metric). Both sources produce the same :class:`EvalSplits`,
so everything after this module is one code path.

**Synthetic** (:func:`synthetic_splits`): ``targets + pop`` generated devices, days
``train | fit | test`` in that order, the population on the fit and test days.

**A labelled manifest** (:func:`plan_manifest`, then :func:`manifest_splits`): the
manifest's devices (sorted by name) are the targets, except that with 6 or more devices
the last third of them is the population. Each target device splits *its own* distinct
days, in order: the first third train, the next third fit, the rest test (``n // 3``,
``n // 3``, the remainder), so a target device needs at least 4 days (1 train, 1 fit, 2
test: cross-day linkage compares a device's earlier test days with its later ones). In
the test split the ``day`` label is the half of the device's own test days a clip falls
in (0 earlier, 1 later), which is what the linkage attack splits on. Population devices
contribute every clip (they are never trained on or attacked). With fewer than 6 devices
there is no population, and the linkage metric (a whitening of the representations) is
learned on the attacker's fit days of the target devices instead: its own labelled
footage, on days disjoint from the ones attacked. Rows without a value for the utility
label or a private label are left out (and counted). Recordings are decoded once each
through the devices' decoded-clip cache; unreadable ones are skipped and named in one
warning per device and split.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from privacy.evaluation.tasks import RESERVED_ATTRIBUTES, SYNTHETIC, Tasks
from privacy.footage_manifest import LABEL_FIELDS, Manifest, ManifestError, Vocabulary, read_manifest

if TYPE_CHECKING:
    from privacy.clips import ClipBatch
    from privacy.evaluation.harness import EvalData
    from privacy.footage import DecodeParams
    from privacy.synthetic import FleetSpec

__all__ = ["MIN_POP_DEVICES", "MIN_TARGET_DAYS", "DatasetProblem", "DaySplit", "EvalSplits",
           "ManifestPlan", "device_indices", "manifest_splits", "plan_manifest", "synthetic_splits"]

#: a manifest with at least this many devices gives a third of them to the attacker's population
MIN_POP_DEVICES = 6
#: days a target device needs: train, fit, and two test days (cross-day linkage)
MIN_TARGET_DAYS = 4
DEFAULT_UTILITY = "activity"


class DatasetProblem(ValueError):
    """A manifest cannot be evaluated as asked; ``option`` is the option to blame."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


@dataclass(frozen=True)
class EvalSplits:
    """What the encoders train on and what the harness measures (see the module docstring)."""

    train_x: np.ndarray  # uint8 [N, T, S, S, 3]
    train_y: np.ndarray  # int64 [N]: utility label ids
    data: EvalData
    tasks: Tasks
    classes: int  # utility classes (the encoders' head)
    description: str  # one sentence for the report's "Data:" line
    #: int64 [N]: each training clip's device as an index 0..K-1 (K training devices). The
    #: one label identity-invariant training may use (fl_client.trainer.train_invariant):
    #: a federated server knows which device sent what anyway.
    train_devices: np.ndarray


def device_indices(devices: np.ndarray) -> np.ndarray:
    """Device labels as indices 0..K-1 in sorted order of the labels."""
    return np.unique(np.asarray(devices), return_inverse=True)[1].astype(np.int64).reshape(-1)


# ------------------------------------------------------------------------------ synthetic


def synthetic_splits(targets: int, pop: int, clips_per_day: int, train_days: int, fit_days: int,
                     test_days: int, seed: int, image_size: int, frames: int) -> EvalSplits:
    """The synthetic benchmark (fleet seed = `seed`)."""
    from privacy.clips import ACTIVITIES
    from privacy.evaluation.harness import EvalData, Split
    from privacy.synthetic import FleetSpec, fleet_batch

    days = train_days + fit_days + test_days
    spec: FleetSpec = FleetSpec(seed=seed, num_devices=targets + pop, days=days,
                                clips_per_day=clips_per_day, frames=frames, image_size=image_size)
    target_ids = range(targets)
    train = fleet_batch(spec, target_ids, range(train_days))
    fit_range = range(train_days, train_days + fit_days)
    fit = fleet_batch(spec, target_ids, fit_range)
    test = fleet_batch(spec, target_ids, range(train_days + fit_days, days))
    pop_split = None
    if pop:
        p = fleet_batch(spec, range(targets, targets + pop), range(train_days, days))
        pop_split = Split(p.x, p.labels)
    data = EvalData(Split(fit.x, fit.labels), Split(test.x, test.labels), pop_split)
    description = (f"synthetic fleet seed {seed}: {targets} target devices (days 0-{train_days - 1} "
                   f"train, next {fit_days} attacker/probe fit, last {test_days} target) + {pop} "
                   f"attacker-population devices, {clips_per_day} clips/day, {frames}x{image_size}px")
    return EvalSplits(train.x, train.labels["activity"], data, SYNTHETIC, len(ACTIVITIES),
                      description, train_devices=device_indices(train.labels["device"]))


# ------------------------------------------------------------------------------ manifest


@dataclass(frozen=True)
class DaySplit:
    train: tuple[int, ...]
    fit: tuple[int, ...]
    test: tuple[int, ...]


@dataclass(frozen=True)
class ManifestPlan:
    """A manifest checked for an evaluation, before anything is decoded."""

    manifest: Manifest  # only the rows labelled with every evaluated label
    vocabulary: Vocabulary  # label ids (of the whole manifest)
    tasks: Tasks
    targets: tuple[str, ...]
    pop: tuple[str, ...]
    days: Mapping[str, DaySplit]  # per target device
    left_out: int  # rows without a value for an evaluated label

    @property
    def devices(self) -> tuple[str, ...]:
        return (*self.targets, *self.pop)


def _privacy_labels(manifest: Manifest, utility: str, privacy: Sequence[str] | None) -> tuple[str, ...]:
    known = (*manifest.label_columns, "device")
    if privacy is None:
        return tuple(c for c in known if c != utility)
    if not privacy:
        raise DatasetProblem("--privacy-labels", "is empty; name at least one label (e.g. device)")
    for name in privacy:
        if name == utility:
            raise DatasetProblem("--privacy-labels", f"{name!r} is the utility label; a label is "
                                                     "either the task or a private attribute")
        if name not in known:
            raise DatasetProblem("--privacy-labels", f"{name!r} is not a label of {manifest.source} "
                                                     f"(labels: {', '.join(known)})")
        if name in RESERVED_ATTRIBUTES:
            raise DatasetProblem("--privacy-labels", f"{name!r} is a name the leakage curves use; "
                                                     "rename the column")
    if len(set(privacy)) != len(privacy):
        raise DatasetProblem("--privacy-labels", f"names a label twice: {', '.join(privacy)}")
    return tuple(privacy)


def day_split(days: Sequence[int]) -> DaySplit:
    """A target device's own days, in order: the first third train, the next third fit,
    the rest test (``n // 3``, ``n // 3``, the remainder)."""
    d = sorted(set(days))
    a = len(d) // 3
    return DaySplit(tuple(d[:a]), tuple(d[a:2 * a]), tuple(d[2 * a:]))


def _option_of(label: str, utility: str) -> str:
    return "--utility-label" if label == utility else "--privacy-labels"


def plan_manifest(path: str | Path, utility_label: str | None = None,
                  privacy_labels: Sequence[str] | None = None) -> ManifestPlan:
    """Read and check the manifest at `path` for an evaluation (nothing is decoded).

    Raises :class:`DatasetProblem` naming the option at fault: an unreadable manifest
    (``--dataset``), a utility label it lacks (``--utility-label``), an unknown private
    label (``--privacy-labels``), a label with one class, too few devices or days."""
    try:
        manifest = read_manifest(path)
    except ManifestError as exc:
        raise DatasetProblem("--dataset", str(exc)) from None
    src = manifest.source
    utility = utility_label or DEFAULT_UTILITY
    if utility not in manifest.label_columns:
        cols = ", ".join(manifest.label_columns) or "none"
        hint = "" if utility_label else "; name the task with --utility-label"
        raise DatasetProblem("--utility-label", f"{src} has no label column {utility!r} "
                                                f"(label columns: {cols}){hint}")
    private = _privacy_labels(manifest, utility, privacy_labels)
    identity = "identity" if "identity" in private else ("device" if "device" in private else private[0])
    try:
        tasks = Tasks(utility=utility, unseen=(), multilabel=(), private=private, identity=identity)
    except ValueError as exc:
        raise DatasetProblem("--privacy-labels", str(exc)) from None
    wanted = [c for c in (utility, *private) if c != "device"]
    rows = tuple(r for r in manifest.rows if all(c in r.labels for c in wanted))
    if not rows:
        raise DatasetProblem("--dataset", f"{src}: no row has a value for every evaluated label "
                                          f"({', '.join(wanted)})")
    for c in wanted:
        values = {r.labels[c] for r in rows}
        if len(values) < 2:
            raise DatasetProblem(_option_of(c, utility), f"label {c!r} of {src} has one class "
                                                         f"({next(iter(values))!r}); a probe needs >= 2")
    kept = replace(manifest, rows=rows)
    devices = kept.devices()
    if len(devices) < 2:
        raise DatasetProblem("--dataset", f"{src} has {len(devices)} device with labelled footage; "
                                          "the identity attacks need >= 2")
    n_pop = len(devices) // 3 if len(devices) >= MIN_POP_DEVICES else 0
    targets, pop = devices[:len(devices) - n_pop], devices[len(devices) - n_pop:]
    days: dict[str, DaySplit] = {}
    for d in targets:
        own = {r.day for r in kept.for_device(d)}
        if len(own) < MIN_TARGET_DAYS:
            short = [t for t in targets if len({r.day for r in kept.for_device(t)}) < MIN_TARGET_DAYS]
            raise DatasetProblem("--dataset", f"{src}: device {d!r} has {len(own)} day(s) of labelled "
                                              f"footage ({len(short)} of {len(targets)} target devices "
                                              f"have too few); each needs >= {MIN_TARGET_DAYS} (train, "
                                              "attacker fit, 2 test days for cross-day linkage)")
        days[d] = day_split(sorted(own))
    fit_rows = [r for r in rows if r.device in days and r.day in days[r.device].fit]
    for c in (*wanted, *(["device"] if "device" in private else [])):
        values = {r.device if c == "device" else r.labels[c] for r in fit_rows}
        if len(values) < 2:
            raise DatasetProblem(_option_of(c, utility), f"label {c!r} of {src} has one class on the "
                                                         "attacker's fit days; a probe needs >= 2")
    return ManifestPlan(kept, manifest.vocabulary, tasks, targets, pop, days,
                        len(manifest.rows) - len(rows))


def _labels(batch: ClipBatch, tasks: Tasks) -> dict[str, np.ndarray]:
    """The harness's labels of a decoded batch: device, day, hour and every evaluated label
    under its manifest column name."""
    out = {k: batch.labels[k] for k in ("device", "day", "hour")}
    for c in (tasks.utility, *tasks.private):
        if c != "device":
            out[c] = batch.labels[LABEL_FIELDS.get(c, c)]
    return out


def _concat(parts: Sequence[tuple[np.ndarray, dict[str, np.ndarray]]]):
    from privacy.evaluation.harness import Split

    x = np.concatenate([p[0] for p in parts])
    labels = {k: np.concatenate([p[1][k] for p in parts]) for k in parts[0][1]}
    return Split(x, labels)


def manifest_splits(plan: ManifestPlan, params: DecodeParams,
                    on_device: Callable[[str], None] = lambda name: None) -> EvalSplits:
    """Decode the plan's recordings (each once, through the clip cache) into the splits;
    `on_device(name)` is called after each device. :class:`DatasetProblem` if a target
    device has no readable clip on a split's days."""
    from fl_client.manifest_source import ManifestSource
    from fl_client.recorded_footage import NoFootage
    from privacy.evaluation.harness import EvalData

    tasks = plan.tasks
    index = {d: i for i, d in enumerate(plan.devices)}
    parts: dict[str, list[tuple[np.ndarray, dict[str, np.ndarray]]]] = {
        "train": [], "fit": [], "test": [], "pop": []}
    for name in plan.devices:
        source = ManifestSource(plan.manifest, name, params=params, device=index[name],
                                vocabulary=plan.vocabulary)
        split = plan.days.get(name)
        wanted = (("train", split.train), ("fit", split.fit), ("test", split.test)) if split else (
            ("pop", source.days()),)
        for part, days in wanted:
            try:
                batch = source.clips(days)
            except NoFootage as exc:
                raise DatasetProblem("--dataset", f"{exc.reason}; the {part} split needs footage of "
                                                  "every target device") from None
            labels = _labels(batch, tasks)
            if part == "test":  # the linkage attack compares a device's earlier and later test days
                half = set(days[:len(days) // 2])
                labels["day"] = np.asarray([0 if d in half else 1 for d in labels["day"].tolist()],
                                           np.int64)
            parts[part].append((batch.x, labels))
        on_device(name)
    train, fit, test = (_concat(parts[k]) for k in ("train", "fit", "test"))
    pop = _concat(parts["pop"]) if parts["pop"] else fit
    for c in tasks.private:
        if len(np.unique(fit.labels[c])) < 2:
            raise DatasetProblem(_option_of(c, tasks.utility), f"label {c!r} of {plan.manifest.source} "
                                 "has one class among the readable clips of the attacker's fit days")
    classes = max(2, len(plan.vocabulary.columns[tasks.utility]))
    population = (f"{len(plan.pop)} attacker-population devices" if plan.pop else
                  "no population devices (the linkage metric is learned on the attacker's fit days)")
    description = (f"manifest {plan.manifest.source}: {len(plan.targets)} target devices (per device: "
                   f"first third of its days train, next third attacker/probe fit, the rest target) + "
                   f"{population}, {len(train.x)} training / {len(fit.x)} fit / {len(test.x)} target "
                   f"clips, {params.frames}x{params.image_size}px; utility label {tasks.utility!r}, "
                   f"private labels {', '.join(tasks.private)}"
                   + (f"; {plan.left_out} row(s) without an evaluated label left out"
                      if plan.left_out else ""))
    return EvalSplits(train.x, train.labels[tasks.utility], EvalData(fit, test, pop), tasks,
                      classes, description, train_devices=device_indices(train.labels["device"]))
