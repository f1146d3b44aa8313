"""Sample footage of real photographs: to try fedmsr on real pixels without a camera.

`fedmsr footage sample OUT` writes it (the README's deployment block and the tests use
it). The pixels are the two photographs scikit-learn ships (`sklearn.datasets.load_sample_images`:
china.jpg and flower.jpg, CC BY 2.0, see sklearn/datasets/images/README.txt), so nothing is
fetched. A recording is a camera panning across one photograph: the direction of the pan
is the ``activity`` (it takes motion to tell apart), the photograph and the window's
place in it are the scene. Recordings are written as MJPG .avi files (decoded by OpenCV
like any camera's footage) and, for every third one, as a folder of PNG frames. Each
recording's modification time is set to its day (day 0 is `days` days ago), so a device
reading the folder without the manifest (`fedmsr device start --footage`) finds the same
days. This is a smoke-test set (two photographs), not a benchmark.
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import cv2
import numpy as np

#: pan directions (dy, dx) in pixels per frame: the activity labels
PANS: dict[str, tuple[int, int]] = {"left": (0, -6), "right": (0, 6), "up": (-6, 0),
                                    "down": (6, 0)}


def photographs() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    return [np.asarray(img, np.uint8) for img in load_sample_images().images]


def _pan(photo: np.ndarray, y: int, x: int, pan: tuple[int, int], frames: int,
         size: int) -> list[np.ndarray]:
    dy, dx = pan
    return [cv2.cvtColor(photo[y + i * dy: y + i * dy + size, x + i * dx: x + i * dx + size],
                         cv2.COLOR_RGB2BGR) for i in range(frames)]


def write_recording(path: Path, frames: list[np.ndarray], as_images: bool) -> None:
    if as_images:
        path.mkdir(parents=True)
        for i, frame in enumerate(frames):
            cv2.imwrite(str(path / f"f{i}.png"), frame)
        return
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10.0, (w, h))
    for frame in frames:
        writer.write(frame)
    writer.release()


def write_pan_dataset(root: Path, devices: int, days: int, per_day: int, *, seed: int = 0,
                      frames: int = 16, size: int = 96, name: str = "manifest.csv") -> Path:
    """Write recordings and a manifest (path, device, day, hour, activity, identity) under
    `root`; each device films mostly one photograph (its `identity` is the photograph)."""
    rng = np.random.default_rng(seed)
    photos = photographs()
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    k = 0
    now = (time.time() // 86400) * 86400  # midnight UTC today: whole days apart
    for d in range(devices):
        for day in range(days):
            for j in range(per_day):
                activity = list(PANS)[(d + day + j) % len(PANS)]
                identity = (d + (j % 3 == 2)) % len(photos)
                photo = photos[identity]
                margin = 6 * frames + 1
                y = int(rng.integers(margin, photo.shape[0] - size - margin))
                x = int(rng.integers(margin, photo.shape[1] - size - margin))
                as_images = k % 3 == 2
                rel = f"cam-{d}/day{day}-{j}" + ("" if as_images else ".avi")
                (root / f"cam-{d}").mkdir(exist_ok=True)
                write_recording(root / rel, _pan(photo, y, x, PANS[activity], frames, size),
                                as_images)
                when = now - (days - day) * 86400 + (8 + j) * 3600
                for p in [root / rel, *(root / rel).glob("*")]:
                    os.utime(p, (when, when))
                rows.append({"path": rel, "device": f"cam-{d}", "day": day, "hour": 8 + j,
                             "activity": activity, "identity": f"photo-{identity}"})
                k += 1
    manifest = root / name
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest
