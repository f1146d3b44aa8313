"""A device's footage folder, decoded once and then served from the decoded-clip cache.

Writes 4 videos of 300 random 320x240 frames (MJPG) to a temporary folder, then for
32 and 64 px clips (8 frames, back-to-back) times ``FolderSource.clips`` over every day
twice with one cache: the first call decodes (the baseline), the second is what every
later round of the same process costs. Printed: both times, their ratio, cache bytes.

Usage: PYTHONPATH=. .venv/bin/python bench/footage_cache.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from fl_client.clip_cache import ClipCache
from fl_client.folder_source import FolderSource
from privacy.footage import DecodeParams


def main() -> None:
    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for k in range(4):
            vw = cv2.VideoWriter(str(root / f"v{k}.avi"), cv2.VideoWriter_fourcc(*"MJPG"),
                                 30.0, (320, 240))
            for _ in range(300):
                vw.write(rng.integers(0, 255, (240, 320, 3), np.uint8))
            vw.release()
        for size in (32, 64):
            cache = ClipCache()
            params = DecodeParams(frames=8, image_size=size)
            times, n = [], 0
            for _ in range(2):
                t0 = time.perf_counter()
                src = FolderSource(root, params=params, cache=cache)  # a source per message
                n = len(src.clips(src.days()))
                times.append(time.perf_counter() - t0)
            print(f"{size}px: {n} clips; decode {times[0]:.3f} s, cached {times[1]:.4f} s "
                  f"(x{times[0] / times[1]:.0f}); cache {cache.stats().bytes / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
