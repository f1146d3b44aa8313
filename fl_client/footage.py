"""Real footage → :class:`~privacy.clips.Clip`, the clip type every footage source produces.

``load_footage(path)`` accepts

* a folder of video files (``.avi .mp4 .mov .mkv .webm .m4v .mpg .mpeg .wmv``,
  read with OpenCV ``cv2.VideoCapture``, in name order; a file OpenCV cannot
  read is skipped with a warning), and/or frame images (``.png .jpg .jpeg``,
  sorted by name in natural order — ``f2`` before ``f10`` — and read as one
  continuous sequence; an unreadable image is an error);
* or a single video file.

Every frame is converted BGR → RGB, centre-cropped to a square and resized to
``image_size`` (``INTER_AREA``).  Clips are ``frames`` consecutive frames; a new
clip starts every ``stride`` frames (default ``stride = frames``: back-to-back,
no overlap).  Clips never span two videos; a tail shorter than ``frames`` is
dropped.  Clip ids are ``[d{device:05d}-]{file or folder name}-f{start frame:06d}``.  Frames are read as a stream, so long videos are not held in memory.

Metadata the footage does not carry is unknown: ``-1`` for ints (``wearer``,
``day``, ``hour``, ``location_id``, ``activity_id``, ``indoor``) and
``"unknown"`` for strings; ``bystanders`` and ``objects`` are empty (so a
stacked batch's ``objects`` multi-hot row is all zero: *not labelled*, not
*absent*).  ``device`` is what the caller passes (default ``-1``).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Generator, Iterator
from pathlib import Path

import numpy as np

from privacy.checks import is_int
from privacy.clips import Clip, ClipMeta

__all__ = ["IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "load_footage"]

VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {".avi", ".mp4", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}
)
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg"})
_UNKNOWN = "unknown"


def _positive(name: str, v: object) -> int:
    if not is_int(v) or v < 1:
        raise ValueError(f"load_footage: {name} must be an int >= 1, got {v!r}")
    return int(v)


def _square(frame_bgr: np.ndarray, size: int) -> np.ndarray:
    import cv2

    h, w = frame_bgr.shape[:2]
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    crop = frame_bgr[y0 : y0 + s, x0 : x0 + s]
    interp = cv2.INTER_AREA if s >= size else cv2.INTER_LINEAR
    small = cv2.resize(crop, (size, size), interpolation=interp)
    return np.ascontiguousarray(small[..., ::-1])  # BGR → RGB


def _video_frames(path: Path, size: int) -> Generator[np.ndarray, None, None]:
    import cv2

    cap = cv2.VideoCapture(str(path))
    n = 0
    try:
        while cap.isOpened():
            ok, frame = cap.read()
            if not ok or frame is None:
                break
            if frame.ndim == 2:
                frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
            n += 1
            yield _square(frame[..., :3], size)
    finally:
        cap.release()
    if n == 0:
        warnings.warn(f"load_footage: skipped {path}: OpenCV could not read any frame from it",
                      stacklevel=2)


def _natural_key(p: Path) -> list:
    """frame_2.png before frame_10.png (equals plain name order for zero-padded names)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


def _image_frames(paths: list[Path], size: int) -> Generator[np.ndarray, None, None]:
    import cv2

    for p in paths:
        frame = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if frame is None:
            raise ValueError(f"load_footage: cannot read image {p}; expected a readable PNG/JPEG frame")
        yield _square(frame, size)


def _windows(frames: Iterator[np.ndarray], T: int, stride: int) -> Iterator[tuple[int, np.ndarray]]:
    """(start index, [T, S, S, 3]) for starts 0, stride, 2*stride, … while a full window fits.
    Invariant: when ``buf`` is non-empty, ``buf[0]`` is frame number ``start``."""
    buf: list[np.ndarray] = []
    start = 0
    for i, f in enumerate(frames):
        if i < start:  # stride > T: frames between two windows
            continue
        buf.append(f)
        if len(buf) == T:
            yield start, np.stack(buf)
            start += stride
            buf = buf[stride:]


def load_footage(
    path: str | Path,
    *,
    frames: int = 8,
    image_size: int = 32,
    stride: int | None = None,
    device: int = -1,
    max_clips: int | None = None,
) -> list[Clip]:
    """Cut real footage at ``path`` into uint8 [frames, image_size, image_size, 3] RGB clips."""
    T = _positive("frames", frames)
    S = _positive("image_size", image_size)
    step = T if stride is None else _positive("stride", stride)
    cap = None if max_clips is None else _positive("max_clips", max_clips)
    if not is_int(device):
        raise ValueError(
            f"load_footage: device must be an int (-1 = unknown), got {device!r}"
        )
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(
            f"load_footage: {root} does not exist; expected a video file or a folder of "
            f"videos / frame images (.png/.jpg)"
        )

    sources: list[tuple[str, Generator[np.ndarray, None, None]]] = []
    if root.is_file():
        if root.suffix.lower() not in VIDEO_EXTENSIONS:
            raise ValueError(
                f"load_footage: {root} is not a video file ({', '.join(sorted(VIDEO_EXTENSIONS))}); "
                f"pass a video or a folder of videos / frame images"
            )
        sources.append((root.name, _video_frames(root, S)))
    else:
        entries = sorted(p for p in root.iterdir() if p.is_file())
        videos = [p for p in entries if p.suffix.lower() in VIDEO_EXTENSIONS]
        images = [p for p in entries if p.suffix.lower() in IMAGE_EXTENSIONS]
        if not videos and not images:
            raise ValueError(
                f"load_footage: {root} holds no video files ({', '.join(sorted(VIDEO_EXTENSIONS))}) "
                f"and no frame images (.png/.jpg/.jpeg)"
            )
        sources += [(p.name, _video_frames(p, S)) for p in videos]
        images.sort(key=_natural_key)
        if images:
            sources.append((root.name or "frames", _image_frames(images, S)))

    prefix = f"d{device:05d}-" if device >= 0 else ""
    out: list[Clip] = []
    try:
        for name, stream in sources:
            for start, arr in _windows(stream, T, step):
                arr.setflags(write=False)
                meta = ClipMeta(
                    clip_id=f"{prefix}{name}-f{start:06d}",
                    device=int(device),
                    wearer=-1,
                    profile=_UNKNOWN,
                    view=_UNKNOWN,
                    day=-1,
                    hour=-1,
                    location=_UNKNOWN,
                    location_id=-1,
                    activity=_UNKNOWN,
                    activity_id=-1,
                    bystanders=(),
                    objects=(),
                    indoor=-1,
                )
                out.append(Clip(arr, meta))
                if cap is not None and len(out) >= cap:
                    return out
    finally:
        for _, stream in sources:
            stream.close()  # releases any open cv2.VideoCapture
    if not out:
        raise ValueError(
            f"load_footage: no clip of {T} frames could be read from {root}; expected readable "
            f"video(s) or at least {T} frame images"
        )
    return out
