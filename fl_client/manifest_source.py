"""The rows of a footage manifest that belong to one device, as a ClipSource.

For a device whose footage comes with a manifest (`privacy.footage_manifest`), and for a
simulation over a real dataset: one virtual device per manifest ``device`` value, each a
``ManifestSource`` over the same file. Day and hour are the manifest's; labels map onto a
batch's labels: ``activity`` → ``activity``, ``identity`` → ``wearer``, ``location`` →
``location`` (ids from the manifest's :class:`~privacy.footage_manifest.Vocabulary`, or
the one passed in so that every device and the operator's eval set agree), and every
other label column becomes a batch label of its own name (-1 where a row has no value).
A clip's ``activity`` id indexes the vocabulary, not :data:`privacy.clips.ACTIVITIES`.
Within a day, recordings are ordered by capture time (``captured_at``), else hour, then
relative path. Split and capture stream: :mod:`fl_client.recorded_footage`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fl_client.clip_cache import ClipCache
from fl_client.clip_source import Capture
from fl_client.recorded_footage import FootageSplit, NoFootage, RecordedFootage, Recording
from privacy.clips import ClipBatch
from privacy.footage import DEFAULT_PARAMS, DecodeParams
from privacy.footage_manifest import (
    LABEL_FIELDS,
    Manifest,
    ManifestRow,
    Vocabulary,
    read_manifest,
)

__all__ = ["ManifestSource"]


def _recording(row: ManifestRow, vocab: Vocabulary, extra: Sequence[str]) -> Recording:
    lab = row.labels

    def text(column: str) -> str:
        return str(lab[column]) if column in lab else "unknown"

    order = row.captured_at.timestamp() if row.captured_at is not None else row.hour * 3600.0
    return Recording(
        row.path, row.rel_path, row.day, row.hour, order,
        wearer=vocab.id_of("identity", lab.get("identity")),
        activity_id=vocab.id_of("activity", lab.get("activity")), activity=text("activity"),
        location_id=vocab.id_of("location", lab.get("location")), location=text("location"),
        extra_labels=tuple((c, vocab.id_of(c, lab.get(c))) for c in extra))


class ManifestSource:
    """Device `device_name`'s rows of `manifest` (a parsed Manifest or its file); a ClipSource."""

    def __init__(self, manifest: Manifest | str | Path, device_name: str, *,
                 params: DecodeParams = DEFAULT_PARAMS, profile: str = "home-cam",
                 held_out_days: int = 1, device: int = -1, cache: ClipCache | None = None,
                 id_key: bytes = b"", vocabulary: Vocabulary | None = None) -> None:
        if not isinstance(manifest, Manifest):
            manifest = read_manifest(manifest)
        self.manifest = manifest
        self.device_name = device_name
        self.vocabulary = manifest.vocabulary if vocabulary is None else vocabulary
        rows = manifest.for_device(device_name)
        if not rows:
            known = ", ".join(repr(d) for d in manifest.devices()[:10]) or "none"
            raise NoFootage(f"manifest {manifest.source} has no row for device "
                            f"{device_name!r} (devices: {known})")
        extra = [c for c in manifest.label_columns if c not in LABEL_FIELDS]
        self.footage = RecordedFootage(
            [_recording(r, self.vocabulary, extra) for r in rows],
            f"device {device_name!r} of manifest {manifest.source}", params=params,
            profile=profile, held_out_days=held_out_days, device=device, cache=cache,
            id_key=id_key)

    @property
    def profile(self) -> str:
        return self.footage.profile

    def days(self) -> tuple[int, ...]:
        return self.footage.days()

    def split(self) -> FootageSplit:
        return self.footage.split()

    def clips(self, days: Sequence[int]) -> ClipBatch:
        return self.footage.clips(days)

    def capture(self, collection: int, count: int) -> Capture:
        return self.footage.capture(collection, count)
