"""Clips and clip batches: what every footage source hands to training, evaluation and uploads.

The synthetic fleet (`privacy.synthetic`) and real footage (`privacy.footage`) both
produce :class:`Clip` objects, and the encoder, the probes and the upload path consume
:class:`ClipBatch` objects; neither side needs to know where the frames came from. The
label vocabularies live here, not with a generator, because a batch's integer labels
index into them whatever the source: ``activity`` into :data:`ACTIVITIES`, the
``objects`` multi-hot columns into :data:`OBJECTS`. A source that does not know a label
writes ``-1`` (``"unknown"`` for strings, no objects), so a stacked batch says *not
labelled*, never a wrong class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ACTIVITIES",
    "LABEL_KEYS",
    "OBJECTS",
    "Clip",
    "ClipBatch",
    "ClipMeta",
    "stack_clips",
]

ACTIVITIES: tuple[str, ...] = ("walk", "run", "eat", "type", "cook", "read", "clean", "phone")
OBJECTS: tuple[str, ...] = ("cup", "laptop", "book", "pan", "phone", "bag", "plant", "bike")
#: int64 [N] label arrays of a ClipBatch (plus "objects", multi-hot [N, len(OBJECTS)]).
LABEL_KEYS: tuple[str, ...] = ("activity", "wearer", "device", "location", "hour", "day", "indoor")

_OBJ = {o: i for i, o in enumerate(OBJECTS)}


@dataclass(frozen=True)
class ClipMeta:
    clip_id: str
    device: int
    wearer: int
    profile: str
    view: str
    day: int
    hour: int
    location: str
    location_id: int
    activity: str
    activity_id: int
    bystanders: tuple[int, ...]
    objects: tuple[str, ...]
    indoor: bool | int  # bool for synthetic clips; -1 (unknown) for real footage


@dataclass(frozen=True)
class Clip:
    frames: np.ndarray  # uint8 [T, H, W, 3]
    meta: ClipMeta
    #: labels beyond ClipMeta's, as (name, int id) pairs (e.g. a footage manifest's own
    #: label columns); a stacked batch gets one int64 array per name, -1 where a clip
    #: lacks it. On the clip, not the meta, so ClipMeta stays what the generator writes.
    extra_labels: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class ClipBatch:
    x: np.ndarray  # uint8 [N, T, H, W, 3]
    labels: dict[str, np.ndarray]
    metas: tuple[ClipMeta, ...]

    def __len__(self) -> int:
        return int(self.x.shape[0])


def stack_clips(clips: Sequence[Clip]) -> ClipBatch:
    """Stack clips of one shape into a ClipBatch (labels int64; unknown = -1)."""
    clips = list(clips)
    if not clips:
        raise ValueError("stack_clips: got no clips; pass at least one Clip")
    shape = clips[0].frames.shape
    for c in clips:
        if c.frames.shape != shape or c.frames.dtype != np.uint8:
            raise ValueError(
                f"stack_clips: clip {c.meta.clip_id} has frames {c.frames.dtype}{c.frames.shape}, "
                f"expected uint8{shape}; load all clips with the same frames/image_size"
            )
    x = np.stack([c.frames for c in clips])
    ms = tuple(c.meta for c in clips)
    lab = {
        "activity": [m.activity_id for m in ms],
        "wearer": [m.wearer for m in ms],
        "device": [m.device for m in ms],
        "location": [m.location_id for m in ms],
        "hour": [m.hour for m in ms],
        "day": [m.day for m in ms],
        "indoor": [int(m.indoor) for m in ms],
    }
    labels = {k: np.asarray(v, np.int64) for k, v in lab.items()}
    objs = np.zeros((len(ms), len(OBJECTS)), np.int64)
    for i, m in enumerate(ms):
        for o in m.objects:
            objs[i, _OBJ[o]] = 1
    labels["objects"] = objs
    extra = sorted({k for c in clips for k, _ in c.extra_labels})
    for k in extra:
        if k in labels:
            raise ValueError(f"stack_clips: extra label {k!r} would replace a batch label; "
                             "name it otherwise")
        labels[k] = np.asarray([dict(c.extra_labels).get(k, -1) for c in clips], np.int64)
    return ClipBatch(x, labels, ms)
