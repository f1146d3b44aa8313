"""The device's own clips for training or evaluation, through its footage source, cached.

Which footage a device uses is decided here, once for every handler:

* a node started with its own footage (``--node-config footage=DIR``: a folder of video
  files or frame folders) trains on that folder, whatever the server sends;
* a simulated node (Flower's ``partition-id``) in a run over a manifest plays the
  manifest's device at its index (the manifest's sorted ``device`` values);
* otherwise the node is its place in the run's synthetic fleet.

A real node (no ``partition-id``) refuses a manifest named by the server: the server must
never choose what a device's camera footage is.

Synthetic clips are cached because a simulated device regenerates them from the fleet
spec and is asked for the same days at every check-in and every round; real footage is
cached by its source (decoded recordings, bounded in bytes, invalidated when a file
changes). The cache key is (fleet spec, device, days) or (footage, device): nothing the
server could vary to learn more than the footage source gives.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from flwr.app import Context

from fl_client.clip_source import ClipSource, SyntheticSource, source_for
from fl_client.node import device_index
from privacy.clips import ClipBatch
from privacy.footage_manifest import LABEL_FIELDS, read_manifest
from privacy.footage_spec import FootageSpec
from privacy.synthetic import FleetSpec
from privacy.wire.instructions import Instructions

__all__ = ["TrainingClips", "local_clips", "own_clips", "own_source", "training_clip_count",
           "training_clips", "utility_labels"]

#: node config key of a real device's own footage folder
FOOTAGE_KEY = "footage"


@lru_cache(maxsize=8)
def local_clips(spec: FleetSpec, device: int, days: range) -> ClipBatch:
    """A synthetic device's footage for `days` (cached: it is asked every round)."""
    return SyntheticSource(spec, device).clips(days)


@lru_cache(maxsize=16)
def _cached_source(spec: FootageSpec, device: int, version: tuple[int, int]) -> ClipSource:
    """One source per (footage, device), rebuilt when the manifest or folder changes
    (`version`); decoded recordings are cached by the sources themselves."""
    return source_for(spec, device=device)


def _version(path: str) -> tuple[int, int]:
    """(size, mtime) of a manifest or folder: a changed one (a folder: an entry added or
    removed) is a new cache key."""
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def own_source(instructions: Instructions, context: Context) -> ClipSource:
    """This node's footage (see the module docstring for which)."""
    device = device_index(context)
    frames, size = instructions.model.frames, instructions.model.image_size
    folder = context.node_config.get(FOOTAGE_KEY)
    if isinstance(folder, str) and folder:
        path = str(Path(folder).expanduser().resolve())
        return _cached_source(FootageSpec("folder", path, frames=frames, image_size=size), device, _version(path))
    if instructions.dataset:
        if "partition-id" not in context.node_config:
            raise PermissionError("the server named a footage manifest; a real device trains "
                                  "only on its own footage (--node-config footage=DIR)")
        names = read_manifest(instructions.dataset).devices()
        if not 0 <= device < len(names):
            raise ValueError(f"device index {device} is not among the {len(names)} devices "
                             f"of manifest {instructions.dataset}")
        spec = FootageSpec("manifest", instructions.dataset, names[device], frames=frames,
                           image_size=size)
        return _cached_source(spec, device, _version(instructions.dataset))
    return SyntheticSource(instructions.fleet, device)


def _days(instructions: Instructions, source: ClipSource, split: str) -> Sequence[int]:
    if isinstance(source, SyntheticSource):
        return instructions.days(split)
    parts = source.split()  # type: ignore[attr-defined]  # real footage: its own split
    return parts.train if split == "train" else parts.held_out


def own_clips(instructions: Instructions, context: Context, split: str) -> ClipBatch:
    """This node's clips of its training days (`split` "train") or held-out days ("eval")."""
    return _clips_of(instructions, own_source(instructions, context), split)


def _clips_of(instructions: Instructions, source: ClipSource, split: str) -> ClipBatch:
    if isinstance(source, SyntheticSource):
        return local_clips(instructions.fleet, source.device, instructions.days(split))
    return source.clips(_days(instructions, source, split))


def utility_labels(instructions: Instructions, source: ClipSource,
                   batch: ClipBatch) -> np.ndarray | None:
    """The labels supervised training and the activity head use: the synthetic fleet's
    activities, or real footage's utility label column (-1 where a clip has none). None
    when the run names no utility label for real footage: it trains self-supervised."""
    if isinstance(source, SyntheticSource):
        return batch.labels["activity"]
    if not instructions.utility_label:
        return None
    key = LABEL_FIELDS.get(instructions.utility_label, instructions.utility_label)
    return batch.labels.get(key, np.full(batch.x.shape[0], -1, np.int64))


@dataclass(frozen=True)
class TrainingClips:
    """What a device trains on this round: clips, their utility labels, and the objective."""

    x: np.ndarray
    y: np.ndarray
    utility: str


def training_clips(instructions: Instructions, context: Context) -> TrainingClips:
    """The training days' clips. Real footage trains supervised on the clips that carry
    the run's utility label, and self-supervised when it has none (no label named, or no
    clip labelled): mixed fleets work. The check-in reports this count, so a DP-SGD
    sample rate is planned on the clips really used."""
    source = own_source(instructions, context)
    batch = _clips_of(instructions, source, "train")
    y = utility_labels(instructions, source, batch)
    if isinstance(source, SyntheticSource) and y is not None:
        return TrainingClips(batch.x, y, instructions.train.utility)
    keep = np.zeros(batch.x.shape[0], bool) if y is None else y >= 0
    if not keep.any():
        return TrainingClips(batch.x, np.zeros(batch.x.shape[0], np.int64), "ssl")
    return TrainingClips(batch.x[keep], np.asarray(y)[keep], instructions.train.utility)


def training_clip_count(instructions: Instructions, context: Context) -> int:
    """How many clips `training_clips` gives, for the check-in. A member of the synthetic
    fleet trains on every clip of its training days, `clips_per_day` a day, so it counts
    them without rendering a frame (a check-in of 1,000 simulated devices would otherwise
    render all their footage every round); real footage is read (and cached) as for
    training, since which clips carry the utility label is known only from the data."""
    source = own_source(instructions, context)
    if isinstance(source, SyntheticSource):
        return instructions.fleet.clips_per_day * len(instructions.days("train"))
    return int(training_clips(instructions, context).x.shape[0])
