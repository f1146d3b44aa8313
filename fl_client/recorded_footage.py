"""What the real-footage sources share: recordings on days, the day split, clips and captures.

`fl_client.folder_source` and `fl_client.manifest_source` differ only in how they find a
device's recordings and when each was captured; both then hand a list of
:class:`Recording` to :class:`RecordedFootage`, which answers the
:class:`~fl_client.clip_source.ClipSource` questions through the decoded-clip cache.

Day split (:func:`split_days`): a real device decides its own split. Its distinct days,
in order; the last ``held_out_days`` of them are *held out* (evaluation, and the capture
stream that upload collections draw from), the earlier ones train. A device with too few
days keeps at least one training day: with ``n <= held_out_days`` days, the last
``n - 1`` are held out (none with one day).

Capture stream: the held-out days' clips in (day, capture time, recording, start frame)
order; upload collection ``c`` of ``M`` clips is stream positions ``(c-1)*M .. c*M-1``, so
which clips a collection covers is fixed by ``(c, M)``, as on a simulated device; a
collection past the end of the footage gets fewer clips (possibly none).

Clip ids are opaque: a keyed BLAKE2b of the recording's relative name plus the start
frame (``{16 hex}-f{start:06d}``). They leave the device with uploads, and a file name
(``alice-bathroom.mp4``) must not; pass the device's own secret as ``id_key`` so the
server cannot test guessed names either.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fl_client.clip_cache import SHARED_CACHE, ClipCache
from fl_client.clip_source import Capture
from privacy.clips import Clip, ClipBatch, stack_clips
from privacy.footage import (
    DEFAULT_PARAMS,
    DecodeParams,
    UnreadableFootage,
    unknown_meta,
    warn_skipped,
)

__all__ = ["FootageSplit", "NoFootage", "RecordedFootage", "Recording", "split_days"]


class NoFootage(Exception):
    """The device has no usable footage for what was asked; `reason` says why (so the
    handler can decline the round naming it, instead of failing)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Recording:
    """One video file or frame folder of a device, with when it was captured and its labels."""

    path: Path
    name: str  # relative to the footage root: messages, clip ids, ordering
    day: int
    hour: int  # -1: unknown
    order: float = 0.0  # capture time (POSIX seconds) or row number: order within a day
    wearer: int = -1
    activity_id: int = -1
    activity: str = "unknown"
    location_id: int = -1
    location: str = "unknown"
    extra_labels: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class FootageSplit:
    train: tuple[int, ...]
    held_out: tuple[int, ...]


def split_days(days: Sequence[int], held_out_days: int = 1) -> FootageSplit:
    """The last `held_out_days` distinct days are held out, keeping >= 1 training day."""
    if held_out_days < 0:
        raise ValueError(f"held_out_days must be >= 0, got {held_out_days}")
    ordered = tuple(sorted(set(days)))
    k = min(held_out_days, max(len(ordered) - 1, 0))
    return FootageSplit(ordered[:len(ordered) - k], ordered[len(ordered) - k:])


class RecordedFootage:
    """A device's recordings as a ClipSource (see the module docstring)."""

    def __init__(self, recordings: Sequence[Recording], what: str, *,
                 params: DecodeParams = DEFAULT_PARAMS, profile: str = "home-cam",
                 held_out_days: int = 1, device: int = -1, cache: ClipCache | None = None,
                 id_key: bytes = b"") -> None:
        if not recordings:
            raise NoFootage(f"{what} holds no recording (video file or frame folder)")
        self.what = what
        self.params = params
        self._profile = profile
        self.device = device
        self.cache = SHARED_CACHE if cache is None else cache
        self.id_key = id_key[:64]
        self.recordings = tuple(sorted(recordings, key=lambda r: (r.day, r.order, r.name)))
        self._split = split_days([r.day for r in self.recordings], held_out_days)

    @property
    def profile(self) -> str:
        return self._profile

    def days(self) -> tuple[int, ...]:
        """The days this device has recordings on (readable or not: decoding is lazy)."""
        return tuple(sorted({r.day for r in self.recordings}))

    def split(self) -> FootageSplit:
        return self._split

    def _clip_id(self, rec: Recording, start: int) -> str:
        digest = hashlib.blake2b(rec.name.encode(), key=self.id_key, digest_size=8).hexdigest()
        return f"{digest}-f{start:06d}"

    def _clips_of(self, rec: Recording, skipped: dict[str, str]) -> list[Clip]:
        try:
            decoded = self.cache.get(rec.path, self.params)
        except UnreadableFootage as exc:
            skipped[rec.name] = str(exc)
            return []
        return [Clip(arr, unknown_meta(
                    self._clip_id(rec, int(start)), device=self.device, day=rec.day,
                    hour=rec.hour, profile=self._profile, wearer=rec.wearer,
                    location_id=rec.location_id, location=rec.location,
                    activity_id=rec.activity_id, activity=rec.activity), rec.extra_labels)
                for start, arr in zip(decoded.starts, decoded.clips)]

    def clips(self, days: Sequence[int]) -> ClipBatch:
        """The clips of `days`, day-major in the order given; :class:`NoFootage` if none."""
        wanted = list(dict.fromkeys(int(d) for d in days))
        skipped: dict[str, str] = {}
        out: list[Clip] = []
        for day in wanted:
            for rec in self.recordings:
                if rec.day == day:
                    out += self._clips_of(rec, skipped)
        warn_skipped(skipped, self.what)
        if not out:
            shown = f"{wanted[0]}..{wanted[-1]}" if len(wanted) > 3 else str(wanted)
            why = f"; {len(skipped)} recording(s) unreadable" if skipped else ""
            raise NoFootage(f"{self.what} has no readable clip on days {shown} "
                            f"(its footage covers days {list(self.days())}{why})")
        return stack_clips(out)

    def capture(self, collection: int, count: int) -> Capture:
        """Collection `collection`'s clips: held-out stream positions (c-1)*count .. c*count-1."""
        if collection < 1 or count < 0:
            raise ValueError(f"collection must be >= 1 and count >= 0, got {collection}, {count}")
        first, end = (collection - 1) * count, collection * count
        held = set(self._split.held_out)
        skipped: dict[str, str] = {}
        picked: list[Clip] = []
        position = 0
        for rec in self.recordings:
            if rec.day not in held or position >= end:
                continue
            clips = self._clips_of(rec, skipped)
            if position + len(clips) > first:
                picked += clips[max(first - position, 0):end - position]
            position += len(clips)
        warn_skipped(skipped, self.what)
        return Capture.of(picked, self.params.frames, self.params.image_size)
