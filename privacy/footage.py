"""Real footage → clips: the one decoder that devices and the operator's evaluation share.

In `privacy` because both sides decode: a device its own recordings (`fl_client`'s folder
and manifest sources), the server the operator's labelled evaluation footage. OpenCV
(``cv2``) does the decoding; it is imported lazily, so importing this module is cheap.

A *recording* is a video file (``.avi .mp4 .mov .mkv .webm .m4v .mpg .mpeg .wmv``) or a
folder of frame images (``.png .jpg .jpeg`` directly inside it, in natural name order:
``f2`` before ``f10``, read as one continuous sequence).

Clip policy (:class:`DecodeParams`), the same for every source:

* every decoded frame is converted BGR → RGB, **centre-cropped to the largest square**
  (the middle of a wide frame is where a head-worn camera looks) and resized to
  ``image_size`` (``INTER_AREA`` when shrinking, ``INTER_LINEAR`` when enlarging);
  32 and 64 px are what the encoders use;
* ``frame_step`` keeps every k-th frame (temporal subsampling, e.g. 30 fps → 10 fps with 3);
* a clip is ``frames`` consecutive kept frames; a new clip starts every ``stride`` kept
  frames (default ``stride = frames``: back-to-back, no overlap). Clips never span two
  recordings; a tail shorter than ``frames`` is dropped. A clip's *start* is the index of
  its first frame in the recording's decoded frames (before subsampling).

A recording OpenCV cannot read, an unreadable frame image, or one too short for a single
clip raises :class:`UnreadableFootage`; sources skip it, count it and name it in one
warning (``load_footage`` does the same), they never crash on a corrupt file.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from privacy.checks import is_int
from privacy.clips import Clip, ClipMeta

__all__ = [
    "DEFAULT_PARAMS",
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "DecodeParams",
    "Decoded",
    "UnreadableFootage",
    "decode_recording",
    "frame_images",
    "is_recording",
    "load_footage",
    "unknown_meta",
    "warn_skipped",
]

VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {".avi", ".mp4", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}
)
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg"})
_UNKNOWN = "unknown"
_VIDEO_LIST = ", ".join(sorted(VIDEO_EXTENSIONS))


class UnreadableFootage(Exception):
    """A recording gives no clip: corrupt, unsupported, missing or too short (the reason)."""


def _positive(name: str, v: object) -> int:
    if not is_int(v) or v < 1:
        raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    return int(v)


@dataclass(frozen=True)
class DecodeParams:
    """How recordings are cut into clips (part of every cache key)."""

    frames: int = 8
    image_size: int = 32
    stride: int | None = None  # clip start step in kept frames; None: = frames
    frame_step: int = 1  # keep every k-th decoded frame

    def __post_init__(self) -> None:
        _positive("frames", self.frames)
        _positive("image_size", self.image_size)
        _positive("frame_step", self.frame_step)
        if self.stride is not None:
            _positive("stride", self.stride)

    @property
    def step(self) -> int:
        return self.frames if self.stride is None else int(self.stride)


DEFAULT_PARAMS = DecodeParams()


@dataclass(frozen=True)
class Decoded:
    """A recording's clips: ``clips`` uint8 [N, T, S, S, 3], ``starts`` int64 [N]."""

    clips: np.ndarray
    starts: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.clips.nbytes + self.starts.nbytes)


def _square(frame_bgr: np.ndarray, size: int) -> np.ndarray:
    import cv2

    h, w = frame_bgr.shape[:2]
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    crop = frame_bgr[y0 : y0 + s, x0 : x0 + s]
    interp = cv2.INTER_AREA if s >= size else cv2.INTER_LINEAR
    small = cv2.resize(crop, (size, size), interpolation=interp)
    return np.ascontiguousarray(small[..., ::-1])  # BGR → RGB


def _natural_key(p: Path) -> list[int | str]:
    """frame_2.png before frame_10.png (equals plain name order for zero-padded names)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


def frame_images(folder: Path) -> list[Path]:
    """The frame images directly in `folder`, in natural name order (hidden files skipped)."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    imgs = [p for p in entries if p.suffix.lower() in IMAGE_EXTENSIONS
            and not p.name.startswith(".") and p.is_file()]
    return sorted(imgs, key=_natural_key)


def is_recording(path: Path) -> bool:
    """A video file, or a folder that directly holds frame images."""
    if path.is_file():
        return path.suffix.lower() in VIDEO_EXTENSIONS
    return path.is_dir() and bool(frame_images(path))


def _video_frames(path: Path, frame_step: int,
                  size: int) -> Generator[tuple[int, np.ndarray], None, None]:
    import cv2

    cap = cv2.VideoCapture(str(path))
    i = 0
    try:
        while cap.isOpened():
            if i % frame_step:
                if not cap.grab():  # skipped frames are not converted
                    break
                i += 1
                continue
            ok, frame = cap.read()
            if not ok or frame is None:
                break
            if frame.ndim == 2:
                frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
            yield i, _square(frame[..., :3], size)
            i += 1
    finally:
        cap.release()


def _image_frames(paths: list[Path], frame_step: int,
                  size: int) -> Generator[tuple[int, np.ndarray], None, None]:
    import cv2

    for i, p in enumerate(paths):
        if i % frame_step:
            continue
        frame = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if frame is None:
            raise UnreadableFootage(f"cannot read frame image {p.name}")
        yield i, _square(frame, size)


def _windows(frames: Iterator[tuple[int, np.ndarray]], T: int, stride: int,
             limit: int | None) -> Iterator[tuple[int, np.ndarray]]:
    """(start frame, [T, S, S, 3]) for kept-frame starts 0, stride, 2*stride, … while a full
    window fits. Invariant: when ``buf`` is non-empty, ``buf[0]`` is kept frame ``start``."""
    buf: list[tuple[int, np.ndarray]] = []
    start = n = 0
    for k, item in enumerate(frames):
        if k < start:  # stride > T: frames between two windows
            continue
        buf.append(item)
        if len(buf) == T:
            yield buf[0][0], np.stack([f for _, f in buf])
            n += 1
            if limit is not None and n >= limit:
                return
            start += stride
            buf = buf[stride:]


def decode_recording(path: str | Path, params: DecodeParams = DEFAULT_PARAMS, *,
                     max_clips: int | None = None) -> Decoded:
    """Cut the recording at `path` into clips; :class:`UnreadableFootage` if it gives none."""
    path = Path(path)
    T, S = params.frames, params.image_size
    if path.is_dir():
        images = frame_images(path)
        if not images:
            raise UnreadableFootage("holds no frame images (.png/.jpg/.jpeg)")
        stream = _image_frames(images, params.frame_step, S)
    elif path.is_file():
        if path.suffix.lower() not in VIDEO_EXTENSIONS:
            raise UnreadableFootage(f"unsupported file type {path.suffix or '(none)'!r}")
        stream = _video_frames(path, params.frame_step, S)
    else:
        raise UnreadableFootage("does not exist")
    starts: list[int] = []
    clips: list[np.ndarray] = []
    try:
        for start, arr in _windows(iter(stream), T, params.step, max_clips):
            starts.append(start)
            clips.append(arr)
    except OSError as exc:
        raise UnreadableFootage(f"read error: {exc}") from None
    finally:
        stream.close()  # releases an open cv2.VideoCapture
    if not clips:
        raise UnreadableFootage(f"no clip of {T} frames (OpenCV read too few frames)")
    out = np.stack(clips)
    out.setflags(write=False)
    return Decoded(out, np.asarray(starts, np.int64))


def warn_skipped(skipped: dict[str, str], what: str, stacklevel: int = 2) -> None:
    """One warning naming every skipped recording and why (none: no warning)."""
    if skipped:
        listed = "; ".join(f"{name}: {why}" for name, why in sorted(skipped.items()))
        warnings.warn(f"{what}: skipped {len(skipped)} unreadable recording(s): {listed}",
                      UserWarning, stacklevel=stacklevel + 1)


def unknown_meta(clip_id: str, device: int = -1, day: int = -1, hour: int = -1,
                 profile: str = _UNKNOWN, wearer: int = -1, location_id: int = -1,
                 location: str = _UNKNOWN, activity_id: int = -1,
                 activity: str = _UNKNOWN) -> ClipMeta:
    """A real clip's metadata: what the footage does not carry is unknown (-1 / "unknown")."""
    return ClipMeta(clip_id=clip_id, device=device, wearer=wearer, profile=profile,
                    view=_UNKNOWN, day=day, hour=hour, location=location,
                    location_id=location_id, activity=activity, activity_id=activity_id,
                    bystanders=(), objects=(), indoor=-1)


def load_footage(
    path: str | Path,
    *,
    frames: int = 8,
    image_size: int = 32,
    stride: int | None = None,
    device: int = -1,
    max_clips: int | None = None,
) -> list[Clip]:
    """Cut real footage at ``path`` into uint8 [frames, image_size, image_size, 3] RGB clips.

    ``path`` is a video file, or a folder of video files (in name order) and/or frame
    images (the folder's own frame sequence, after its videos). Unreadable recordings are
    skipped and named in one warning; no clip at all is a ``ValueError``. Metadata is
    unknown (-1 / ``"unknown"``, no objects); clip ids are
    ``[d{device:05d}-]{file or folder name}-f{start frame:06d}``.
    """
    try:
        params = DecodeParams(frames, image_size, stride)
        cap = None if max_clips is None else _positive("max_clips", max_clips)
    except ValueError as exc:
        raise ValueError(f"load_footage: {exc}") from None
    if not is_int(device):
        raise ValueError(f"load_footage: device must be an int (-1 = unknown), got {device!r}")
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(
            f"load_footage: {root} does not exist; expected a video file or a folder of "
            f"videos / frame images (.png/.jpg)")
    recordings: list[tuple[str, Path]] = []
    if root.is_file():
        if root.suffix.lower() not in VIDEO_EXTENSIONS:
            raise ValueError(
                f"load_footage: {root} is not a video file ({_VIDEO_LIST}); "
                f"pass a video or a folder of videos / frame images")
        recordings.append((root.name, root))
    else:
        videos = sorted(p for p in root.iterdir()
                        if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
        recordings += [(p.name, p) for p in videos]
        if frame_images(root):
            recordings.append((root.name or "frames", root))
        if not recordings:
            raise ValueError(
                f"load_footage: {root} holds no video files ({_VIDEO_LIST}) "
                f"and no frame images (.png/.jpg/.jpeg)")
    prefix = f"d{device:05d}-" if device >= 0 else ""
    out: list[Clip] = []
    skipped: dict[str, str] = {}
    for name, rec in recordings:
        left = None if cap is None else cap - len(out)
        try:
            decoded = decode_recording(rec, params, max_clips=left)
        except UnreadableFootage as exc:
            skipped[str(rec)] = str(exc)
            continue
        out += [Clip(arr, unknown_meta(f"{prefix}{name}-f{int(s):06d}", device=int(device)))
                for s, arr in zip(decoded.starts, decoded.clips)]
        if cap is not None and len(out) >= cap:
            break
    warn_skipped(skipped, "load_footage")
    if not out:
        why = "".join(f"; {n}: {w}" for n, w in sorted(skipped.items()))
        raise ValueError(f"load_footage: no clip of {frames} frames could be read from {root}; "
                         f"expected readable video(s) or at least {frames} frame images{why}")
    return out
