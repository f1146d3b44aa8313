"""A labelled real-pixel benchmark for `fedmsr eval --dataset`: people moving over photographs.

Why: the synthetic fleet (`privacy.synthetic`) is drawn shapes; this set puts real
handwriting in front of real photographs, keeps identity visible in the pixels, makes the
activity a matter of *motion*, and changes the scene on the attacked days, so the table
measures whether an encoder keeps the task and drops the person on scenes it never saw.
Everything comes from data scikit-learn installs with itself; nothing is fetched.

Material (licences as stated where noted):

* **People**: scikit-learn's digits (`sklearn.datasets.load_digits`, a copy of the test set
  of the UCI "Optical Recognition of Handwritten Digits" data set, E. Alpaydin and
  C. Kaynak, 1998; written by 43 people). The installed description
  (`sklearn/datasets/descr/digits.rst`) states no licence; the UCI repository's page for
  the data set (dataset 80) lists CC BY 4.0.
* **Scenes**: `sklearn.datasets.load_sample_images()`: `china.jpg` and `flower.jpg`, both
  CC BY 2.0 according to `sklearn/datasets/images/README.txt` (Flickr, china.jpg by
  danielbuechele, flower.jpg from the photostream of vultilion, the README's attribution
  line names danielbuechele for both).

Design, per device (= one person, filmed by their own camera):

* ``device`` ``person-NN``: one particular handwritten digit sample (8x8, smoothly
  upscaled to a sprite about a third of the frame wide) in a tint, with a dark rim so it
  shows on any scene, composited over the scene. The sprite is the person: the same
  pixels every day. Devices take the 6 tints in turn, so the first 6 people differ in
  colour too (a later one may share a tint and a digit class with an earlier one).
* ``digit`` (a private attribute several people share, like a soft biometric): the digit
  class of the person's sample. Devices take ``--digits`` classes in turn, so each class
  is held by several people and attacking it is digit recognition, not identity.
* ``activity`` (the utility label): how the sprite moves over the 8 frames: ``still``,
  ``left``, ``right``, ``up``, ``down``, ``jitter`` (a random offset each frame),
  ``circle`` (one turn). The path's centre is drawn uniformly from the same range for every
  activity, so one frame says little about it; ``left``/``right`` (and ``up``/``down``)
  show the same frames in opposite order, so only a model that sees frame order can tell
  them apart. A representation that pools frames without order can at best tell the five
  groups still / horizontal / vertical / jitter / circle.
* Scene: a random square crop of a photograph (a third to a half of its height) with
  camera jitter (a random walk of the crop, about a pixel of the frame per frame) and an
  exposure gain. On the days `fedmsr eval --dataset` trains the encoders on and fits its
  probes and attackers on (per device its first ``2 * (days // 3)`` days, as
  `fl_server.eval_splits` splits them) the photograph is ``china.jpg``; on the attacked
  days it is ``flower.jpg`` and the light is darker and warmer (gamma 1.4, a colour cast).
  The scene is not a label: it follows from the day. ``--no-scene-shift`` films every day
  on ``china.jpg`` in the same light (an in-scene reference).
* ``hour``: 8 plus the clip's index in its day.

Output: ``OUT/person-NN/dayD-JJ/f0.png .. f7.png`` (``--size`` px, 64 by default, so both
``--image-size 32`` and ``64`` work) and ``OUT/manifest.csv`` (``path, device, day, hour,
activity, digit``; docs/real-footage.md). Deterministic for a seed (the same PNG bytes).
With 6 or more devices `fedmsr eval` gives the last third of them to the attacker's
population. Run: ``python scripts/build_real_pixel_benchmark.py OUT [--devices 9 --days 6
--clips-per-day 16 --seed 0 --no-scene-shift]`` (a few seconds).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fl_server.eval_splits import day_split  # noqa: E402
from privacy.footage_samples import photographs  # noqa: E402

#: the activity labels (the utility task), in the order their motions are defined below
ACTIVITIES: tuple[str, ...] = ("still", "left", "right", "up", "down", "jitter", "circle")
#: sprite tints (RGB), one per person in turn: people differ in colour as well as handwriting
TINTS: tuple[tuple[int, int, int], ...] = ((235, 50, 45), (45, 205, 70), (50, 95, 240),
                                           (245, 205, 35), (200, 60, 220), (40, 215, 225))
FRAMES = 8
SCENES = ("china.jpg", "flower.jpg")  # the order load_sample_images() returns them in
#: the attacked days' light: gamma > 1 darkens, the cast warms (R, G, B gains)
TEST_GAMMA = 1.4
TEST_CAST = (1.08, 0.97, 0.8)


@dataclass(frozen=True)
class BenchmarkSpec:
    """What to build; the same spec and seed give the same bytes."""

    devices: int = 9
    days: int = 6
    clips_per_day: int = 16
    seed: int = 0
    size: int = 64  # frame side in pixels
    digits: int = 3  # digit classes the devices share
    scene_shift: bool = True  # attacked days on the other photograph, in other light

    def __post_init__(self) -> None:
        if self.devices < 2:
            raise ValueError(f"devices must be >= 2 (identity needs two people), got {self.devices}")
        if self.days < 4:
            raise ValueError(f"days must be >= 4 (fedmsr eval: train, fit, 2 test days), got {self.days}")
        if self.clips_per_day < 1:
            raise ValueError(f"clips_per_day must be >= 1, got {self.clips_per_day}")
        if self.size not in (32, 64):
            raise ValueError(f"size must be 32 or 64, got {self.size}")
        if not 2 <= self.digits <= 10:
            raise ValueError(f"digits must be in 2..10, got {self.digits}")

    def test_day(self, day: int) -> bool:
        """Whether `day` is attacked by `fedmsr eval --dataset` (its own day split,
        :func:`fl_server.eval_splits.day_split`); every device here has the same days."""
        return day in day_split(range(self.days)).test

    def shifted(self, day: int) -> bool:
        """Whether `day` is filmed on the other photograph, in the other light."""
        return self.scene_shift and self.test_day(day)


@dataclass(frozen=True)
class Person:
    """One device's wearer: a handwritten digit sample and a tint."""

    name: str
    digit: int
    sample: int  # index into load_digits()
    alpha: np.ndarray  # float32 [s, s] in [0, 1]: the upscaled handwriting
    shadow: np.ndarray  # float32 [s, s]: a dark rim around it, so it shows on any scene
    tint: tuple[int, int, int]


def _people(spec: BenchmarkSpec, rng: np.random.Generator) -> list[Person]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.asarray(digits.images, np.float32) / 16.0
    target = np.asarray(digits.target)
    classes = sorted(int(c) for c in rng.choice(10, size=spec.digits, replace=False))
    side = round(spec.size * 10 / 32)
    taken: set[int] = set()
    people = []
    for d in range(spec.devices):
        digit = classes[d % spec.digits]
        pool = [int(i) for i in np.flatnonzero(target == digit) if int(i) not in taken]
        sample = pool[int(rng.integers(len(pool)))]
        taken.add(sample)
        alpha = np.clip(cv2.resize(images[sample], (side, side), interpolation=cv2.INTER_CUBIC),
                        0.0, 1.0)
        shadow = 0.6 * cv2.GaussianBlur(cv2.dilate(alpha, np.ones((3, 3), np.uint8)), (3, 3), 0)
        people.append(Person(f"person-{d:02d}", digit, sample, alpha, shadow,
                             TINTS[d % len(TINTS)]))
    return people


def _path(activity: str, size: int, side: int, rng: np.random.Generator) -> np.ndarray:
    """The sprite's top-left corner in each frame, [FRAMES, 2] (y, x) floats."""
    u = size / 32
    t = np.arange(FRAMES, dtype=np.float64) - (FRAMES - 1) / 2
    reach = 2 * u * (FRAMES - 1) / 2  # the farthest any motion goes from the path's centre
    centre = rng.uniform(reach, size - side - reach, size=2)
    step = 2 * u
    if activity == "still":
        off = np.zeros((FRAMES, 2))
    elif activity in ("left", "right"):
        off = np.stack([np.zeros(FRAMES), t * step * (1 if activity == "right" else -1)], 1)
    elif activity in ("up", "down"):
        off = np.stack([t * step * (1 if activity == "down" else -1), np.zeros(FRAMES)], 1)
    elif activity == "jitter":
        off = rng.uniform(-reach / 2, reach / 2, size=(FRAMES, 2))
    elif activity == "circle":
        phase = rng.uniform(0, 2 * math.pi)
        turn = 1 if rng.random() < 0.5 else -1
        a = phase + turn * 2 * math.pi * np.arange(FRAMES) / FRAMES
        off = reach / 1.5 * np.stack([np.sin(a), np.cos(a)], 1)
    else:
        raise ValueError(f"unknown activity {activity!r}")
    return np.asarray(centre + off)


def _backgrounds(photo: np.ndarray, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """FRAMES crops of `photo` (float32 RGB in [0, 1], size x size): one random square, moved
    by a random walk of about one output pixel per frame (a hand-held camera)."""
    h, w = photo.shape[:2]
    crop = int(rng.integers(h // 3, h // 2 + 1))
    px = crop / size  # photo pixels per output pixel
    walk = np.cumsum(rng.normal(0.0, px, size=(FRAMES, 2)), axis=0)
    lo = np.abs(walk).max() + 1
    y0 = rng.uniform(lo, h - crop - lo)
    x0 = rng.uniform(lo, w - crop - lo)
    out = []
    for dy, dx in walk:
        y, x = int(round(y0 + dy)), int(round(x0 + dx))
        out.append(cv2.resize(photo[y:y + crop, x:x + crop], (size, size),
                              interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0)
    return out


def _composite(bg: np.ndarray, person: Person, corner: np.ndarray) -> np.ndarray:
    """`bg` with the person's sprite drawn at sub-pixel position `corner` (y, x)."""
    size = bg.shape[0]
    m = np.array([[1, 0, corner[1]], [0, 1, corner[0]]], np.float32)
    alpha, shadow = (cv2.warpAffine(a, m, (size, size), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_CONSTANT, borderValue=0)[..., None]
                     for a in (person.alpha, person.shadow))
    tint = np.asarray(person.tint, np.float32) / 255.0
    return np.asarray(bg * (1 - shadow) * (1 - alpha) + tint * alpha, np.float32)


def _light(frame: np.ndarray, gain: float, test_day: bool) -> np.ndarray:
    out = np.clip(frame * gain, 0, 1)
    if test_day:
        out = np.clip(out ** TEST_GAMMA * np.asarray(TEST_CAST, np.float32), 0, 1)
    return out


def clip_frames(spec: BenchmarkSpec, person: Person, activity: str, day: int,
                photos: Sequence[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """One recording: FRAMES uint8 RGB frames of `person` doing `activity` on `day`."""
    test_day = spec.shifted(day)
    bgs = _backgrounds(photos[1 if test_day else 0], spec.size, rng)
    path = _path(activity, spec.size, person.alpha.shape[0], rng)
    gain = float(rng.uniform(0.85, 1.15))
    return [np.round(_light(_composite(bg, person, p), gain, test_day) * 255).astype(np.uint8)
            for bg, p in zip(bgs, path, strict=True)]


def build(out: Path, spec: BenchmarkSpec) -> Path:
    """Write the benchmark under `out` (created; files of an earlier build are overwritten)
    and return its manifest."""
    rng = np.random.default_rng(spec.seed)
    photos = photographs()
    people = _people(spec, rng)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, str | int]] = []
    for person in people:
        first = int(rng.integers(len(ACTIVITIES)))  # activities cycle over the person's clips
        for day in range(spec.days):
            for j in range(spec.clips_per_day):
                activity = ACTIVITIES[(first + day * spec.clips_per_day + j) % len(ACTIVITIES)]
                rel = f"{person.name}/day{day}-{j:02d}"
                folder = out / rel
                folder.mkdir(parents=True, exist_ok=True)
                for i, frame in enumerate(clip_frames(spec, person, activity, day, photos, rng)):
                    cv2.imwrite(str(folder / f"f{i}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
                rows.append({"path": rel, "device": person.name, "day": day, "hour": 8 + j,
                             "activity": activity, "digit": person.digit})
    manifest = out / "manifest.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("out", type=Path, help="output folder (manifest.csv and one folder per device)")
    p.add_argument("--devices", type=int, default=BenchmarkSpec.devices)
    p.add_argument("--days", type=int, default=BenchmarkSpec.days)
    p.add_argument("--clips-per-day", type=int, default=BenchmarkSpec.clips_per_day)
    p.add_argument("--seed", type=int, default=BenchmarkSpec.seed)
    p.add_argument("--size", type=int, default=BenchmarkSpec.size, help="frame side, 32 or 64")
    p.add_argument("--digits", type=int, default=BenchmarkSpec.digits,
                   help="digit classes the people share (the `digit` attribute)")
    p.add_argument("--no-scene-shift", action="store_true",
                   help="film the attacked days like the others (china.jpg, same light)")
    a = p.parse_args(argv)
    try:
        spec = BenchmarkSpec(a.devices, a.days, a.clips_per_day, a.seed, a.size, a.digits,
                             not a.no_scene_shift)
    except ValueError as exc:
        p.error(str(exc))
    print(build(a.out, spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
