"""Tests for the real-footage loader (fl_client.footage)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from fl_client.footage import load_footage
from privacy.clips import stack_clips

N_VIDEO = 30  # frames in the test video


def _grey(i: int) -> int:
    return 8 * i + 10  # frame i's brightness: tells frames apart after decoding


def _write_video(path: Path, n: int = N_VIDEO, h: int = 48, w: int = 64) -> Path:
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (w, h))
    assert vw.isOpened()
    for i in range(n):
        f = np.full((h, w, 3), _grey(i), np.uint8)
        f[: h // 4, :, :] = (0, 0, 255)  # BGR red band on top
        vw.write(f)
    vw.release()
    return path


@pytest.fixture()
def video_dir(tmp_path: Path) -> Path:
    d = tmp_path / "videos"
    d.mkdir()
    _write_video(d / "walk.avi")
    return d


@pytest.fixture()
def frames_dir(tmp_path: Path) -> Path:
    d = tmp_path / "frames"
    d.mkdir()
    for i in range(20):  # unpadded names: natural order f2 < f10
        cv2.imwrite(str(d / f"f{i}.png"), np.full((40, 30, 3), 10 * i, np.uint8))
    return d


def _centre_level(frames: np.ndarray) -> np.ndarray:
    """Per-frame mean grey level of the lower (un-banded) half."""
    return frames[:, frames.shape[1] // 2 :].astype(float).mean((1, 2, 3))


def test_video_folder_default_stride(video_dir: Path) -> None:
    clips = load_footage(video_dir)
    assert len(clips) == N_VIDEO // 8  # starts 0, 8, 16; a 6-frame tail is dropped
    for k, c in enumerate(clips):
        assert c.frames.shape == (8, 32, 32, 3) and c.frames.dtype == np.uint8
        assert c.meta.clip_id == f"walk.avi-f{8 * k:06d}"
        # frame content follows the source frame index (MJPG is lossy: tolerance)
        np.testing.assert_allclose(_centre_level(c.frames), [_grey(8 * k + i) for i in range(8)], atol=4)
    # BGR → RGB: the top band was written as BGR red
    top = clips[0].frames[0, :4].astype(int).mean((0, 1))
    assert top[0] > 200 and top[2] < 60


@pytest.mark.parametrize("stride,starts", [(4, [0, 4, 8, 12, 16, 20]), (12, [0, 12]), (1, list(range(23)))])
def test_video_stride(video_dir: Path, stride: int, starts: list[int]) -> None:
    clips = load_footage(video_dir / "walk.avi", stride=stride, image_size=16)
    assert [int(c.meta.clip_id.rsplit("-f", 1)[1]) for c in clips] == starts
    for s, c in zip(starts, clips):
        assert c.frames.shape == (8, 16, 16, 3)
        np.testing.assert_allclose(_centre_level(c.frames), [_grey(s + i) for i in range(8)], atol=4)
    if stride < 8:  # overlapping windows share decoded frames exactly
        assert np.array_equal(clips[1].frames[0], clips[0].frames[stride])


def test_image_folder_natural_order_and_stride(frames_dir: Path) -> None:
    clips = load_footage(frames_dir, frames=8, stride=6, image_size=32)
    assert len(clips) == 3  # starts 0, 6, 12 (12 + 8 = 20 frames)
    for k, c in enumerate(clips):
        assert c.frames.shape == (8, 32, 32, 3)
        assert c.meta.clip_id == f"frames-f{6 * k:06d}"
        levels = c.frames.reshape(8, -1).mean(1)
        assert list(levels) == [10.0 * (6 * k + i) for i in range(8)]  # PNG: lossless


def test_metadata_unknown_and_device_and_max_clips(video_dir: Path, frames_dir: Path) -> None:
    (frames_dir / "walk.avi").write_bytes((video_dir / "walk.avi").read_bytes())
    clips = load_footage(frames_dir, device=3, frames=8)
    # the video first (3 clips), then the image sequence (2 clips: starts 0, 8)
    assert [c.meta.clip_id for c in clips] == [
        "d00003-walk.avi-f000000", "d00003-walk.avi-f000008", "d00003-walk.avi-f000016",
        "d00003-frames-f000000", "d00003-frames-f000008",
    ]
    m = clips[0].meta
    assert m.device == 3
    assert (m.wearer, m.day, m.hour, m.location_id, m.activity_id, m.indoor) == (-1,) * 6
    assert (m.profile, m.view, m.location, m.activity) == ("unknown",) * 4
    assert m.bystanders == () and m.objects == ()
    assert len(load_footage(frames_dir, max_clips=2)) == 2
    batch = stack_clips(clips)
    assert batch.x.shape == (5, 8, 32, 32, 3)
    assert set(batch.labels["activity"]) == {-1} and set(batch.labels["device"]) == {3}
    assert batch.labels["objects"].sum() == 0


def test_unreadable_video_is_skipped_with_warning(video_dir: Path) -> None:
    (video_dir / "broken.avi").write_bytes(b"not a video at all" * 10)
    with pytest.warns(UserWarning, match="broken.avi"):
        clips = load_footage(video_dir)
    assert len(clips) == 3 and all(c.meta.clip_id.startswith("walk.avi") for c in clips)


def test_bad_paths_give_clear_errors(tmp_path: Path, video_dir: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope.*does not exist"):
        load_footage(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="empty.*no video files"):
        load_footage(empty)
    with pytest.raises(ValueError, match="notes.txt.*not a video file"):
        load_footage(empty / "notes.txt")
    with pytest.raises(ValueError, match="no clip of 64 frames"):
        load_footage(video_dir, frames=64)
    only_broken = tmp_path / "broken"
    only_broken.mkdir()
    (only_broken / "x.mp4").write_bytes(b"\0" * 100)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no clip of 8 frames"):
        load_footage(only_broken)
    bad_img = tmp_path / "badimg"
    bad_img.mkdir()
    (bad_img / "f0.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="f0.png"):
        load_footage(bad_img)
    for kw in ({"frames": 0}, {"image_size": -1}, {"stride": 0}, {"max_clips": 0}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            load_footage(video_dir, **kw)
