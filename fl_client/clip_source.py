"""Where a device's clips come from: the one seam between the device app and its footage.

The ClientApp needs three things from the footage a device holds: the clips of the days
it trains or evaluates on (as a :class:`~privacy.clips.ClipBatch`), the device's capture
profile for its check-in, and the clips of an upload collection with their capture
times (:class:`Capture`). A :class:`ClipSource` answers exactly these; the app never
reaches behind it, so a device that films real footage is another ``ClipSource``, not a
change to the handlers.

A simulated member of the synthetic fleet (:class:`SyntheticSource`) regenerates its
clips from the fleet spec the server sends, so it holds no footage on disk and any
SuperNode can play any device. A device with real footage reads its own folder
(`fl_client.folder_source.FolderSource`) or its rows of a footage manifest
(`fl_client.manifest_source.ManifestSource`); :func:`source_for` builds the source a
:class:`~privacy.footage_spec.FootageSpec` names. Real sources raise
`fl_client.recorded_footage.NoFootage` (with a reason) when they have nothing usable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from privacy.clips import Clip, ClipBatch, stack_clips
from privacy.footage_spec import FootageSpec
from privacy.synthetic import FleetSpec, device_clips, device_profile

__all__ = ["Capture", "ClipSource", "SyntheticSource", "device_source", "source_for",
           "stream_slots"]


@dataclass(frozen=True)
class Capture:
    """Clips a device holds for one collection (frames never leave the device)."""

    frames: np.ndarray  # uint8 [R, T, H, W, 3], R <= M
    days: Sequence[int]
    hours: Sequence[int]
    clip_ids: Sequence[str]

    @classmethod
    def of(cls, clips: Sequence[Clip], frames: int, image_size: int) -> Capture:
        if not clips:
            return cls(np.zeros((0, frames, image_size, image_size, 3), np.uint8), (), (), ())
        return cls(np.stack([c.frames for c in clips]), [c.meta.day for c in clips],
                   [c.meta.hour for c in clips], [c.meta.clip_id for c in clips])


class ClipSource(Protocol):
    """A device's footage, as the ClientApp's handlers use it."""

    @property
    def profile(self) -> str:
        """The capture profile the device reports at check-in (``glasses``, ``bodycam``,
        ``home-cam``)."""
        ...

    def clips(self, days: Sequence[int]) -> ClipBatch:
        """The device's clips of `days` (training or evaluation days), day-major."""
        ...

    def capture(self, collection: int, count: int) -> Capture:
        """The clips captured for upload collection `collection` (at most `count`)."""
        ...


def stream_slots(spec: FleetSpec, collection: int, clips: int) -> list[tuple[int, int]]:
    """(day, clip index) of a synthetic device's clips for a collection.

    The capture stream starts on the first day after the fleet spec's days (days the
    device trained on and days the server holds out as the attacker's own data come
    before it) and runs on: collection c gets stream positions (c-1)*M .. c*M-1. Which
    clips a collection covers is fixed by (c, M): nothing about the content chooses them.
    """
    first = (collection - 1) * clips
    return [(spec.days + p // spec.clips_per_day, p % spec.clips_per_day)
            for p in range(first, first + clips)]


@dataclass(frozen=True)
class SyntheticSource:
    """Device `device` of the synthetic fleet `spec`: its clips are regenerated on demand."""

    spec: FleetSpec
    device: int

    def __post_init__(self) -> None:
        if not 0 <= self.device < self.spec.num_devices:
            raise ValueError(f"device index {self.device} is outside the fleet of "
                             f"{self.spec.num_devices}")

    @property
    def profile(self) -> str:
        return device_profile(self.spec, self.device)

    def clips(self, days: Sequence[int]) -> ClipBatch:
        return stack_clips(device_clips(self.spec, self.device, days=list(days)))

    def capture(self, collection: int, count: int) -> Capture:
        """Always `count` clips: a simulated device keeps filming."""
        spec = self.spec
        slots = stream_slots(spec, collection, count)
        wanted = sorted({day for day, _ in slots})
        longer = dataclasses.replace(spec, days=wanted[-1] + 1)
        rendered = device_clips(longer, self.device, wanted)  # day-major, clips_per_day per day
        by_slot = {(c.meta.day, k % spec.clips_per_day): c for k, c in enumerate(rendered)}
        return Capture.of([by_slot[s] for s in slots], spec.frames, spec.image_size)


def device_source(fleet: FleetSpec, device: int) -> ClipSource:
    """The footage of device `device` in a run over `fleet`: its place in the synthetic fleet."""
    return SyntheticSource(fleet, device)


def source_for(spec: FootageSpec, fleet: FleetSpec | None = None, device: int = -1, *,
               id_key: bytes = b"") -> ClipSource:
    """The ClipSource `spec` names. ``synthetic`` needs the run's `fleet` and the device's
    index; ``folder`` / ``manifest`` read the device's own storage (``device`` only fills
    the clips' ``device`` label; ``id_key`` keys their opaque clip ids: pass the device's
    secret). Raises `fl_client.recorded_footage.NoFootage` when the footage is unusable."""
    if spec.kind == "synthetic":
        if fleet is None:
            raise ValueError("a synthetic footage spec needs the run's fleet spec")
        return SyntheticSource(fleet, device)
    # imported here: the real-footage sources build on this module's Capture
    if spec.kind == "folder":
        from fl_client.folder_source import FolderSource

        return FolderSource(spec.path, params=spec.params, profile=spec.profile,
                            held_out_days=spec.held_out_days, device=device, id_key=id_key)
    from fl_client.manifest_source import ManifestSource

    return ManifestSource(spec.path, spec.device_name, params=spec.params,
                          profile=spec.profile, held_out_days=spec.held_out_days,
                          device=device, id_key=id_key)
