"""A device's own footage folder as a ClipSource: what a real camera leaves on its storage.

Every video file under the folder (recursively; hidden files and folders skipped, symlinked
folders not followed) is a recording, and so is every folder that directly holds frame
images (see `privacy.footage`). No labels: a folder's clips train self-supervised.

Capture time of a recording: the MP4/QuickTime ``mvhd`` creation time when the container
has a plausible one (read from the box headers, a few small reads, no decoding), else the
file's modification time (a frame folder: its first frame's). Times are turned into the
device's *local* calendar date and hour; ``day`` = calendar days since the earliest
capture in the folder, so day 0 is the first day of footage. The train / held-out split
and the capture stream are :mod:`fl_client.recorded_footage`'s.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from fl_client.clip_cache import ClipCache
from fl_client.clip_source import Capture
from fl_client.recorded_footage import FootageSplit, NoFootage, RecordedFootage, Recording
from privacy.clips import ClipBatch
from privacy.footage import DEFAULT_PARAMS, VIDEO_EXTENSIONS, DecodeParams, frame_images

__all__ = ["FolderSource", "container_time", "find_recordings"]

_MP4_EPOCH = -2082844800  # 1904-01-01T00:00:00Z as POSIX seconds
_QT_EXTENSIONS = frozenset({".mp4", ".mov", ".m4v"})
_MIN_PLAUSIBLE = 946684800  # 2000-01-01: cameras write 0 or 1904 when they have no clock


def _boxes(f: BinaryIO, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, box end) of the boxes in [start, end) (at most 64)."""
    pos = start
    for _ in range(64):
        if pos + 8 > end:
            return
        f.seek(pos)
        head = f.read(8)
        if len(head) < 8:
            return
        size, kind = struct.unpack(">I4s", head)
        payload = pos + 8
        if size == 1:
            big = f.read(8)
            if len(big) < 8:
                return
            size = struct.unpack(">Q", big)[0]
            payload += 8
        elif size == 0:
            size = end - pos
        if size < payload - pos:
            return
        yield kind, payload, pos + size
        pos += size


def container_time(path: Path) -> float | None:
    """The MP4/MOV ``mvhd`` creation time (POSIX seconds), None when absent or implausible."""
    if path.suffix.lower() not in _QT_EXTENSIONS:
        return None
    try:
        end = path.stat().st_size
        with path.open("rb") as f:
            for kind, payload, box_end in _boxes(f, 0, end):
                if kind != b"moov":
                    continue
                for inner, at, _ in _boxes(f, payload, box_end):
                    if inner != b"mvhd":
                        continue
                    f.seek(at)
                    version = f.read(4)[:1]
                    raw = f.read(8 if version == b"\x01" else 4)
                    if len(raw) not in (4, 8):
                        return None
                    created = int.from_bytes(raw, "big") + _MP4_EPOCH
                    now = datetime.now().timestamp()
                    return float(created) if _MIN_PLAUSIBLE <= created <= now + 86400 else None
                return None
    except OSError:
        return None
    return None


def _capture_time(path: Path) -> float:
    if path.is_dir():
        frames = frame_images(path)
        return (frames[0] if frames else path).stat().st_mtime
    stamp = container_time(path)
    return stamp if stamp is not None else path.stat().st_mtime


def find_recordings(root: Path) -> list[tuple[str, Path]]:
    """(name relative to `root`, path) of every recording under `root`, in name order."""
    if root.is_file():
        return [(root.name, root)] if root.suffix.lower() in VIDEO_EXTENSIONS else []
    found: list[tuple[str, Path]] = []
    for here, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        folder = Path(here)
        rel = folder.relative_to(root)
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in VIDEO_EXTENSIONS:
                found.append(((rel / name).as_posix(), folder / name))
        if frame_images(folder):
            found.append((rel.as_posix(), folder))
    return sorted(found)


class FolderSource:
    """The recordings in `folder` (see the module docstring); a ClipSource."""

    def __init__(self, folder: str | Path, *, params: DecodeParams = DEFAULT_PARAMS,
                 profile: str = "home-cam", held_out_days: int = 1, device: int = -1,
                 cache: ClipCache | None = None, id_key: bytes = b"") -> None:
        root = Path(folder)
        if not root.exists():
            raise NoFootage(f"footage folder {root} does not exist")
        stamped: list[tuple[str, Path, datetime]] = []
        for name, path in find_recordings(root):
            try:
                stamped.append((name, path, datetime.fromtimestamp(_capture_time(path))))
            except (OSError, ValueError, OverflowError):
                continue  # vanished or unstat-able: not a recording of this device
        first = min((t.date() for _, _, t in stamped), default=None)
        recordings = [Recording(path, name, (t.date() - first).days, t.hour, t.timestamp())
                      for name, path, t in stamped if first is not None]
        self.footage = RecordedFootage(recordings, f"footage folder {root}", params=params,
                                       profile=profile, held_out_days=held_out_days,
                                       device=device, cache=cache, id_key=id_key)
        self.folder = root

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
