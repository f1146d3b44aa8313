"""scripts/build_real_pixel_benchmark.py: the manifest loads and splits as designed, the
frames are the photographs' pixels (the attacked days' from the other photograph), and a
seed gives the same bytes."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_real_pixel_benchmark",
                                                  ROOT / "scripts" / "build_real_pixel_benchmark.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


bench = _script()
SPEC = bench.BenchmarkSpec(devices=4, days=4, clips_per_day=3, seed=5, size=64, digits=3)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return bench.build(tmp_path_factory.mktemp("bench") / "a", SPEC)


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _frames(root: Path, rel: str) -> np.ndarray:
    files = sorted((root / rel).glob("f*.png"), key=lambda p: int(p.stem[1:]))
    return np.stack([np.asarray(cv2.imread(str(f))) for f in files])  # BGR uint8


def test_manifest_reads_and_splits_as_designed(built: Path):
    from fl_server.eval_splits import plan_manifest
    from privacy.footage_manifest import read_manifest

    m = read_manifest(built)
    assert m.label_columns == ("activity", "digit")
    assert m.devices() == tuple(f"person-{d:02d}" for d in range(SPEC.devices))
    assert len(m.rows) == SPEC.devices * SPEC.days * SPEC.clips_per_day
    assert set(m.vocabulary.columns["activity"]) <= set(bench.ACTIVITIES)
    digits = {}
    for d in m.devices():
        rows = m.for_device(d)
        assert sorted({r.day for r in rows}) == list(range(SPEC.days))
        assert len({r.labels["digit"] for r in rows}) == 1  # a person's handwriting is theirs
        digits[d] = rows[0].labels["digit"]
        acts = [r.labels["activity"] for r in rows]
        counts = [acts.count(a) for a in bench.ACTIVITIES]
        assert max(counts) - min(counts) <= 1  # each person does every activity about as often
    assert len(set(digits.values())) == SPEC.digits  # the attribute is shared: fewer classes than people
    for r in m.rows:
        assert len(list((built.parent / r.rel_path).glob("f*.png"))) == bench.FRAMES
    # the builder's scene switch falls exactly on the days fedmsr eval attacks
    plan = plan_manifest(built, "activity", ["device", "digit"])
    for d in plan.targets:
        split = plan.days[d]
        assert all(not SPEC.test_day(day) for day in (*split.train, *split.fit))
        assert all(SPEC.test_day(day) for day in split.test)


@pytest.mark.parametrize("days", [4, 5, 6, 7, 9])
def test_scene_shift_days_are_the_attacked_days(days: int, tmp_path: Path):
    """BenchmarkSpec.test_day agrees with fedmsr eval's own day split for any day count."""
    from fl_server.eval_splits import plan_manifest

    lines = ["path,device,day,activity"] + [f"p{d}-{day}-{a},p{d},{day},{a}" for d in range(2)
                                            for day in range(days) for a in ("left", "right")]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    plan = plan_manifest(tmp_path / "m.csv", "activity", ["device"])
    spec = replace(SPEC, days=days)
    assert list(plan.days["p0"].test) == [day for day in range(days) if spec.test_day(day)]


def _background_mask(frame: np.ndarray) -> np.ndarray:
    """uint8 mask of `frame` (BGR) without the sprite: pixels near any tint (in either
    light) and a rim around them, where the sprite's shadow darkens the scene, are 0."""
    rgb = frame[..., ::-1].astype(np.float32) / 255
    tints = np.asarray(bench.TINTS, np.float32) / 255
    lit = np.concatenate([tints, tints ** bench.TEST_GAMMA * np.asarray(bench.TEST_CAST, np.float32)])
    dist = np.linalg.norm(rgb[:, :, None, :] - lit[None, None], axis=-1).min(axis=-1)
    sprite = (dist < 0.25).astype(np.uint8)
    rim = frame.shape[0] // 16 * 2 + 1
    return np.asarray(1 - cv2.dilate(sprite, np.ones((rim, rim), np.uint8)), np.uint8)


def _best_match(frames: np.ndarray, photo: np.ndarray) -> float:
    """Highest normalised correlation of a few of `frames` (outside the sprite) with a window
    of `photo` at the crop sizes the builder draws (a third to a half of its height)."""
    pg = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY).astype(np.float32)
    size = frames.shape[1]
    scaled = [cv2.resize(pg, None, fx=size / crop, fy=size / crop, interpolation=cv2.INTER_AREA)
              for crop in np.linspace(photo.shape[0] / 3, photo.shape[0] / 2, 12)]
    best = -1.0
    for frame in frames[:: len(frames) // 2 - 1]:  # three frames are plenty
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY).astype(np.float32)
        mask = _background_mask(frame).astype(np.float32)
        for s in scaled:
            r = cv2.matchTemplate(s, gray, cv2.TM_CCOEFF_NORMED, mask=mask)
            best = max(best, float(np.nanmax(np.where(np.isfinite(r), r, -1))))
    return best


def test_frames_are_the_photographs_and_the_attacked_days_show_the_other_one(built: Path):
    from privacy.footage_manifest import read_manifest

    china, flower = bench.photographs()
    m = read_manifest(built)
    for r in m.rows[:: SPEC.clips_per_day]:  # one clip per device and day
        frames = _frames(built.parent, r.rel_path)
        assert frames.shape == (bench.FRAMES, SPEC.size, SPEC.size, 3)
        assert frames.std() > 5  # not a flat fill (the match below says what it is)
        assert np.abs(np.diff(frames.astype(np.int16), axis=0)).mean() > 1  # something moves
        on_china, on_flower = _best_match(frames, china), _best_match(frames, flower)
        shown, other = (on_flower, on_china) if SPEC.shifted(r.day) else (on_china, on_flower)
        assert shown > 0.9 and shown > other + 0.1, (r.rel_path, on_china, on_flower)


def test_same_seed_same_bytes_other_seed_other_pixels(built: Path, tmp_path: Path):
    again = bench.build(tmp_path / "b", SPEC)
    assert _digest(again.parent) == _digest(built.parent)
    other = bench.build(tmp_path / "c", replace(SPEC, seed=SPEC.seed + 1))
    assert _digest(other.parent) != _digest(built.parent)
    first = m_rows(built)[0]
    assert not np.array_equal(_frames(built.parent, first), _frames(other.parent, first))


def m_rows(manifest: Path) -> list[str]:
    from privacy.footage_manifest import read_manifest

    return [r.rel_path for r in read_manifest(manifest).rows]


@pytest.mark.parametrize("size", [32, 64])
def test_activities_differ_in_motion_only(size: int):
    """The path's centre has the same range for every activity (one frame says little), and
    each activity moves as named: y grows downwards, x to the right."""
    rng = np.random.default_rng(0)
    side = round(size * 10 / 32)
    paths = {a: np.stack([bench._path(a, size, side, rng) for _ in range(200)]) for a in bench.ACTIVITIES}
    lo, hi = min(p.min() for p in paths.values()), max(p.max() for p in paths.values())
    assert lo >= 0 and hi <= size - side  # the sprite never leaves the frame
    centres = {a: p.mean(axis=1) for a, p in paths.items()}
    for a, c in centres.items():  # the same spread of centres, whatever the activity
        assert np.allclose(c.mean(axis=0), centres["still"].mean(axis=0), atol=size / 16), a
        assert np.allclose(c.std(axis=0), centres["still"].std(axis=0), rtol=0.3), a
    step = {a: np.diff(p, axis=1) for a, p in paths.items()}  # [clips, frames - 1, (dy, dx)]
    assert np.all(step["still"] == 0)
    for a, axis, sign in (("left", 1, -1), ("right", 1, 1), ("up", 0, -1), ("down", 0, 1)):
        assert np.all(step[a][..., axis] * sign > 0) and np.all(step[a][..., 1 - axis] == 0), a
    assert np.ptp(step["jitter"]) > 0 and np.ptp(np.linalg.norm(step["circle"], axis=-1)) < 1e-6
    # left and right (up and down) visit the same places, in the opposite order
    assert np.allclose(np.sort(paths["left"][..., 1] - centres["left"][:, None, 1]),
                       np.sort(paths["right"][..., 1] - centres["right"][:, None, 1]))
