"""The server's own labelled clips, from an operator-owned manifest (`--eval-dataset`).

In a run over real footage the server never holds a device's footage, so its utility and
identity probes need clips of its own: a manifest (`privacy.footage_manifest`) of
consented, labelled recordings the operator keeps. They are decoded here with the same
decoder and clip shape the devices use. Labels the probes read:

* ``activity`` (the utility probe, and the model's head): the run's utility label, with
  ids from the *training* manifest's vocabulary so the head's classes line up (a value the
  devices never saw is -1 and left out); in a self-supervised run, the eval manifest's
  ``activity`` column;
* ``wearer`` (the identity probe): the ``identity`` column where the manifest has one,
  else the recording's ``device`` (re-identifying the camera).

Probes fit on the earlier half of the manifest's distinct days and score on the later
half, as on the synthetic fleet, so identity is cross-day re-identification.
"""

from __future__ import annotations

from collections.abc import Sequence


from fl_server.evaluation import HeldOut
from privacy.clips import Clip, ClipBatch, stack_clips
from privacy.footage import (
    DecodeParams,
    UnreadableFootage,
    decode_recording,
    unknown_meta,
    warn_skipped,
)
from privacy.footage_manifest import (
    LABEL_FIELDS,
    Manifest,
    ManifestRow,
    Vocabulary,
    read_manifest,
)

__all__ = ["eval_days_split", "held_out_from_manifest", "probe_label"]


def probe_label(utility_label: str) -> str:
    """The eval manifest's column the utility probe reads."""
    return utility_label or "activity"


def eval_days_split(manifest: Manifest) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(fit days, test days): the earlier half of the distinct days, and the rest."""
    days = sorted({r.day for r in manifest.rows})
    if len(days) < 2:
        raise ValueError(f"eval manifest {manifest.source} spans {len(days)} day(s); the "
                         "probes fit on earlier days and test on later ones: give it >= 2")
    cut = max(1, len(days) // 2)
    return tuple(days[:cut]), tuple(days[cut:])


def _clips(rows: Sequence[ManifestRow], params: DecodeParams, activity: Vocabulary,
           column: str, devices: Sequence[str], has_identity: bool, identities: Vocabulary,
           skipped: dict[str, str]) -> list[Clip]:
    out: list[Clip] = []
    for row in rows:
        try:
            decoded = decode_recording(row.path, params)
        except UnreadableFootage as exc:
            skipped[row.rel_path] = str(exc)
            continue
        device = devices.index(row.device)
        wearer = (identities.id_of("identity", row.labels.get("identity")) if has_identity
                  else device)
        label = activity.id_of(column, row.labels.get(column))
        # every other label column rides along for the leakage tracker's attribute probes
        extra = tuple((c, identities.id_of(c, v)) for c, v in sorted(row.labels.items())
                      if c != column and c not in LABEL_FIELDS)
        out += [Clip(frames, unknown_meta(f"eval-{row.row}-f{int(start):06d}", device=device,
                                          day=row.day, hour=row.hour, wearer=wearer,
                                          activity_id=label,
                                          location_id=identities.id_of(
                                              "location", row.labels.get("location"))),
                     extra)
                for frames, start in zip(decoded.clips, decoded.starts, strict=True)]
    return out


def held_out_from_manifest(path: str, utility_label: str, dataset: str, frames: int,
                           image_size: int) -> HeldOut:
    """Decode the eval manifest at `path` into the probes' fit and test batches."""
    manifest = read_manifest(path)
    column = probe_label(utility_label)
    # the head's classes are the training manifest's values of the utility label
    activity = (read_manifest(dataset).vocabulary if utility_label and dataset
                else manifest.vocabulary)
    fit_days, test_days = eval_days_split(manifest)
    params = DecodeParams(frames, image_size)
    devices = manifest.devices()
    has_identity = "identity" in manifest.label_columns
    skipped: dict[str, str] = {}
    batches: list[ClipBatch] = []
    for days in (fit_days, test_days):
        rows = [r for r in manifest.rows if r.day in days]
        clips = _clips(rows, params, activity, column, devices, has_identity,
                       manifest.vocabulary, skipped)
        if not clips:
            raise ValueError(f"eval manifest {path}: no readable clip on days "
                             f"{', '.join(map(str, days))}")
        batches.append(stack_clips(clips))
    warn_skipped(skipped, f"eval manifest {path}")
    return HeldOut(fit=batches[0], test=batches[1])


