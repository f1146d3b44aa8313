"""A device's footage: the synthetic world's public entry points.

A clip is planned from its own random stream (``world.plan_clip``) and then rendered
from the same stream (``render.render_frames``); both entry points below go through
:func:`_clip`, so the metadata-only path reads exactly the metadata of the clip the
rendering path would draw, at a small fraction of the cost.
"""

from __future__ import annotations

from collections.abc import Sequence

from privacy.checks import is_int
from privacy.clips import Clip, ClipBatch, ClipMeta, stack_clips
from privacy.synthetic.render import render_frames
from privacy.synthetic.world import (
    DeviceWorld,
    FleetSpec,
    check_device,
    clip_meta,
    clip_rng,
    day_weather,
    device_world,
    plan_clip,
    shirt_of_day,
)


def _check_days(spec: FleetSpec, days: Sequence[int] | None) -> list[int]:
    if days is None:
        return list(range(spec.days))
    out = []
    for d in days:
        if not is_int(d) or not 0 <= d < spec.days:
            raise ValueError(f"days must hold ints in 0..{spec.days - 1} (FleetSpec.days={spec.days}), got {d!r}")
        out.append(int(d))
    return out


def _clip(spec: FleetSpec, dev: DeviceWorld, day: int, idx: int,
          render: bool = True) -> Clip | ClipMeta:
    # the plan (metadata) is the first thing drawn from the clip's stream, so the
    # metadata-only path gives exactly the metadata of the rendered clip
    rng = clip_rng(spec.seed, dev.index, day, idx)
    plan = plan_clip(spec, dev, rng)
    meta = clip_meta(spec, dev, day, idx, plan)
    if not render:
        return meta
    shirt = shirt_of_day(spec.seed, dev.index, day, len(dev.wearer.shirts))
    frames = render_frames(spec, dev, shirt, day_weather(spec.seed, day), plan, rng)
    frames.setflags(write=False)
    return Clip(frames, meta)


def device_clips(spec: FleetSpec, device: int, days: Sequence[int] | None = None) -> list[Clip]:
    """All clips of one device for the given days (default: every day), day-major."""
    device = check_device(spec, device)
    dev = device_world(spec, device)
    return [_clip(spec, dev, d, i) for d in _check_days(spec, days)  # type: ignore[misc]
            for i in range(spec.clips_per_day)]


def device_metas(spec: FleetSpec, device: int, days: Sequence[int] | None = None) -> list[ClipMeta]:
    """The metadata of :func:`device_clips` (same order, identical values) without
    rendering pixels: cheap labels for routine / linkage statistics."""
    device = check_device(spec, device)
    dev = device_world(spec, device)
    return [_clip(spec, dev, d, i, render=False) for d in _check_days(spec, days)  # type: ignore[misc]
            for i in range(spec.clips_per_day)]


def fleet_batch(spec: FleetSpec, devices: Sequence[int], days: Sequence[int]) -> ClipBatch:
    """Clips of the given devices and days, device-major, as one batch."""
    clips: list[Clip] = []
    for d in devices:
        clips.extend(device_clips(spec, d, days))
    if not clips:
        raise ValueError("fleet_batch: no clips; pass at least one device and one day")
    return stack_clips(clips)
