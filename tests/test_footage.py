"""Tests for real footage: the decoder (privacy.footage, via fl_client.footage's old name),
the device's folder and manifest sources, their decoded-clip cache and the footage spec."""

from __future__ import annotations

import os
import struct
import warnings
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
import pytest

from fl_client.clip_cache import ClipCache
from fl_client.clip_source import SyntheticSource, device_source, source_for
from fl_client.folder_source import FolderSource, container_time
from fl_client.footage import load_footage
from fl_client.manifest_source import ManifestSource
from fl_client.recorded_footage import NoFootage, split_days
from privacy.clips import Clip, ClipMeta, stack_clips
from privacy.footage import DecodeParams, decode_recording
from privacy.footage_manifest import Vocabulary, read_manifest
from privacy.footage_spec import FootageSpec
from privacy.synthetic import FleetSpec

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
    with pytest.warns(UserWarning, match="walk.avi"), pytest.raises(ValueError,
                                                                    match="no clip of 64 frames"):
        load_footage(video_dir, frames=64)
    only_broken = tmp_path / "broken"
    only_broken.mkdir()
    (only_broken / "x.mp4").write_bytes(b"\0" * 100)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no clip of 8 frames"):
        load_footage(only_broken)
    bad_img = tmp_path / "badimg"
    bad_img.mkdir()
    (bad_img / "f0.png").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="f0.png"), pytest.raises(ValueError, match="f0.png"):
        load_footage(bad_img)
    for kw in ({"frames": 0}, {"image_size": -1}, {"stride": 0}, {"max_clips": 0}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            load_footage(video_dir, **kw)


# --- real-footage sources: FolderSource, ManifestSource, the clip cache, FootageSpec ---

P = DecodeParams(frames=4, image_size=16)


def _at(path: Path, when: datetime) -> Path:
    os.utime(path, (when.timestamp(), when.timestamp()))
    return path


def _frame_folder(d: Path, n: int, level0: int = 0) -> Path:
    d.mkdir(parents=True)
    for i in range(n):
        cv2.imwrite(str(d / f"f{i}.png"), np.full((20, 24, 3), level0 + 5 * i, np.uint8))
    return d


@pytest.fixture()
def footage(tmp_path: Path) -> Path:
    """Day 0 (9:00): a.avi 20 frames; day 1 (14:00): frames/ 8 PNGs; day 2 (18:00): c.avi
    12 frames. With 4-frame clips: 5 + 2 + 3 clips."""
    root = tmp_path / "cam"
    root.mkdir()
    _at(_write_video(root / "a.avi", n=20, h=24, w=32), datetime(2026, 3, 1, 9, 0))
    folder = _frame_folder(root / "sub" / "frames", 8)
    for f in folder.iterdir():
        _at(f, datetime(2026, 3, 2, 14, 0))
    _at(_write_video(root / "c.avi", n=12, h=24, w=32), datetime(2026, 3, 3, 18, 0))
    (root / "notes.txt").write_text("not footage")
    return root


def test_folder_source_days_split_clips(footage: Path) -> None:
    src = FolderSource(footage, params=P)
    assert src.profile == "home-cam"
    assert src.days() == (0, 1, 2)
    assert src.split().train == (0, 1) and src.split().held_out == (2,)
    batch = src.clips([1, 0])  # day-major, in the order asked
    assert batch.x.shape == (7, 4, 16, 16, 3)
    assert list(batch.labels["day"]) == [1, 1, 0, 0, 0, 0, 0]
    assert list(batch.labels["hour"]) == [14, 14, 9, 9, 9, 9, 9]
    assert set(batch.labels["activity"]) == {-1} and set(batch.labels["wearer"]) == {-1}
    # PNG frames are lossless: the day-1 clips are frames 0-3 and 4-7 of the folder
    assert [float(v) for v in batch.x[1].reshape(4, -1).mean(1)] == [20.0, 25.0, 30.0, 35.0]
    np.testing.assert_allclose(_centre_level(batch.x[3]), [_grey(4 + i) for i in range(4)],
                               atol=4)
    ids = [m.clip_id for m in batch.metas]
    assert len(set(ids)) == 7 and not any("avi" in i or "frames" in i for i in ids)
    assert ids[2].endswith("-f000000") and ids[3].endswith("-f000004")
    keyed = FolderSource(footage, params=P, id_key=b"device secret").clips([0])
    assert keyed.metas[0].clip_id != batch.metas[2].clip_id  # the key changes the ids


def test_folder_source_capture_stream(footage: Path) -> None:
    src = FolderSource(footage, params=P, profile="glasses")
    assert src.profile == "glasses"
    one = src.capture(1, 2)
    assert one.frames.shape == (2, 4, 16, 16, 3)
    assert list(one.days) == [2, 2] and list(one.hours) == [18, 18]
    assert [i[-7:] for i in one.clip_ids] == ["f000000", "f000004"]
    two = src.capture(2, 2)  # the held-out day has 3 clips: collection 2 gets the last one
    assert len(two.clip_ids) == 1 and two.clip_ids[0].endswith("f000008")
    assert np.array_equal(two.frames[0], src.clips([2]).x[2])
    empty = src.capture(3, 2)
    assert empty.frames.shape == (0, 4, 16, 16, 3) and len(empty.clip_ids) == 0
    wider = FolderSource(footage, params=P, held_out_days=2)
    assert wider.split().held_out == (1, 2)
    assert list(wider.capture(1, 4).days) == [1, 1, 2, 2]


def test_split_days_keeps_a_training_day() -> None:
    assert split_days([3, 1, 1, 2], 1) == split_days([1, 2, 3], 1)
    assert split_days([1, 2, 3], 1).held_out == (3,)
    assert split_days([5], 1).train == (5,) and split_days([5], 1).held_out == ()
    assert split_days([1, 2], 5).train == (1,) and split_days([1, 2], 0).held_out == ()


def test_corrupt_recordings_skipped_and_named_once(footage: Path) -> None:
    (footage / "broken.avi").write_bytes(b"junk" * 50)
    _at(footage / "broken.avi", datetime(2026, 3, 1, 10, 0))
    bad = _frame_folder(footage / "badframes", 5)
    (bad / "f2.png").write_bytes(b"garbage")
    for f in bad.iterdir():
        _at(f, datetime(2026, 3, 1, 11, 0))
    src = FolderSource(footage, params=P, cache=ClipCache())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch = src.clips([0])
    assert len(batch) == 5  # a.avi only
    assert len(caught) == 1
    msg = str(caught[0].message)
    assert "skipped 2 unreadable" in msg and "broken.avi" in msg and "badframes" in msg
    assert "f2.png" in msg


def test_no_footage(tmp_path: Path, footage: Path) -> None:
    with pytest.raises(NoFootage, match="does not exist") as info:
        FolderSource(tmp_path / "missing")
    assert "does not exist" in info.value.reason
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoFootage, match="holds no recording"):
        FolderSource(tmp_path / "empty")
    src = FolderSource(footage, params=P)
    with pytest.raises(NoFootage, match=r"no readable clip on days \[7\].*covers days \[0, 1, 2\]"):
        src.clips([7])
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "x.mp4").write_bytes(b"\0" * 64)
    with pytest.warns(UserWarning, match="x.mp4"), pytest.raises(NoFootage, match="1 recording"):
        FolderSource(only_bad, params=P, cache=ClipCache()).clips([0])
    with pytest.raises(NoFootage, match="no row for device 'cam-z'"):
        ManifestSource(_manifest(footage), "cam-z")


def _mvhd_mp4(path: Path, created: int, version: int = 0) -> Path:
    body = bytes([version, 0, 0, 0]) + (struct.pack(">QQ", created, created) if version
                                        else struct.pack(">II", created, created))
    mvhd = struct.pack(">I4s", 8 + len(body), b"mvhd") + body
    moov = struct.pack(">I4s", 8 + len(mvhd), b"moov") + mvhd
    mdat = struct.pack(">I4s", 8 + 100, b"mdat") + b"\0" * 100
    ftyp = struct.pack(">I4s", 16, b"ftyp") + b"isom\0\0\0\0"
    path.write_bytes(ftyp + mdat + moov)  # moov after the media data, as cameras write it
    return path


def test_container_time_else_mtime(tmp_path: Path) -> None:
    mp4_epoch = 2082844800
    when = datetime(2025, 6, 1, 12, 0)
    a = _mvhd_mp4(tmp_path / "a.mp4", int(when.timestamp()) + mp4_epoch)
    b = _mvhd_mp4(tmp_path / "b.mov", int(when.timestamp()) + mp4_epoch, version=1)
    assert container_time(a) == when.timestamp() == container_time(b)
    assert container_time(_mvhd_mp4(tmp_path / "c.mp4", 0)) is None  # no clock: 1904
    _at(tmp_path / "c.mp4", datetime(2025, 6, 4, 8, 0))
    assert container_time(tmp_path / "x.avi") is None
    src = FolderSource(tmp_path)
    assert src.days() == (0, 3)  # a, b on June 1 (container), c on June 4 (its mtime)


def _manifest(root: Path) -> Path:
    (root / "manifest.csv").write_text(
        "path,device,day,hour,activity,identity,location,scene\n"
        "a.avi,cam-a,0,9,walk,alice,kitchen,3\n"
        "sub/frames,cam-a,1,,eat,,garden,\n"
        "c.avi,cam-a,2,18,walk,alice,,7\n"
        "broken-or-missing.avi,cam-b,0,1,cook,bob,hall,\n")
    return root / "manifest.csv"


def test_manifest_source_labels_split_capture(footage: Path) -> None:
    src = ManifestSource(_manifest(footage), "cam-a", params=P)
    assert src.days() == (0, 1, 2) and src.split().held_out == (2,)
    batch = src.clips([0, 1])
    assert len(batch) == 7
    vocab = read_manifest(footage / "manifest.csv").vocabulary
    assert vocab.columns["activity"] == ("cook", "eat", "walk")
    assert list(batch.labels["activity"]) == [2] * 5 + [1] * 2
    assert list(batch.labels["wearer"]) == [0] * 5 + [-1] * 2  # identity: alice, bob
    assert list(batch.labels["location"]) == [2] * 5 + [0] * 2  # garden, hall, kitchen
    assert list(batch.labels["scene"]) == [0] * 5 + [-1] * 2  # an extra label column
    assert list(batch.labels["hour"]) == [9] * 5 + [-1] * 2
    assert batch.metas[0].activity == "walk" and batch.metas[5].location == "garden"
    cap = src.capture(1, 5)
    assert list(cap.days) == [2, 2, 2] and list(cap.hours) == [18, 18, 18]
    # a vocabulary shared with other manifests gives the ids it says
    shared = Vocabulary({"activity": ("eat", "walk"), "identity": ("alice",)})
    pinned = ManifestSource(footage / "manifest.csv", "cam-a", params=P, vocabulary=shared)
    assert list(pinned.clips([2]).labels["activity"]) == [1, 1, 1]
    assert list(pinned.clips([2]).labels["location"]) == [-1, -1, -1]


def test_cache_hit_avoids_decoding(footage: Path) -> None:
    cache = ClipCache()
    src = FolderSource(footage, params=P, cache=cache)
    first = src.clips([0, 1, 2])
    assert cache.stats().decodes == 3 and cache.stats().hits == 0
    again = FolderSource(footage, params=P, cache=cache).clips([0, 1, 2])  # a new message
    assert cache.stats().decodes == 3 and cache.stats().hits == 3
    assert np.array_equal(first.x, again.x)
    FolderSource(footage, params=DecodeParams(frames=4, image_size=32), cache=cache).clips([0])
    assert cache.stats().decodes == 4  # other decode parameters: another entry
    calls: list[Path] = []

    def counting(path: Path, params: DecodeParams):  # type: ignore[no-untyped-def]
        calls.append(path)
        return decode_recording(path, params)

    cache.get(footage / "a.avi", P, counting)
    assert calls == []  # a hit never calls the decoder


def test_cache_invalidates_on_change(footage: Path) -> None:
    cache = ClipCache()
    src = FolderSource(footage, params=P, cache=cache)
    before = src.clips([2])
    assert len(before) == 3
    _write_video(footage / "c.avi", n=16, h=24, w=32)  # replaced: 4 clips now
    _at(footage / "c.avi", datetime(2026, 3, 3, 18, 0))  # even with the same mtime (size differs)
    after = FolderSource(footage, params=P, cache=cache).clips([2])
    assert len(after) == 4 and cache.stats().decodes == 2
    folder = footage / "sub" / "frames"
    n0 = len(src.clips([1]))
    cv2.imwrite(str(folder / "f8.png"), np.full((20, 24, 3), 200, np.uint8))
    for i in range(9, 12):
        cv2.imwrite(str(folder / f"f{i}.png"), np.full((20, 24, 3), 210, np.uint8))
    for f in folder.iterdir():
        _at(f, datetime(2026, 3, 2, 14, 0))
    assert (n0, len(FolderSource(footage, params=P, cache=cache).clips([1]))) == (2, 3)


def test_cache_stays_under_its_byte_bound(footage: Path) -> None:
    one = decode_recording(footage / "a.avi", P).nbytes  # 5 clips, the largest recording
    cache = ClipCache(max_bytes=one + 10)
    src = FolderSource(footage, params=P, cache=cache)
    for day in (0, 1, 2, 0, 1):
        src.clips([day])
        assert cache.stats().bytes <= cache.max_bytes
    assert cache.stats().entries == 1 and cache.stats().decodes == 5  # LRU: each evicted
    tiny = ClipCache(max_bytes=100)
    assert len(FolderSource(footage, params=P, cache=tiny).clips([0])) == 5
    assert tiny.stats().entries == 0 and tiny.stats().bytes == 0  # too large to keep


def test_stack_clips_extra_labels() -> None:
    meta = ClipMeta("x", 0, 0, "p", "v", 0, 0, "l", 0, "a", 0, (), (), 0)
    f = np.zeros((2, 4, 4, 3), np.uint8)
    batch = stack_clips([Clip(f, meta, (("scene", 2),)), Clip(f, meta)])
    assert list(batch.labels["scene"]) == [2, -1]
    assert "scene" not in stack_clips([Clip(f, meta)]).labels
    with pytest.raises(ValueError, match="'day'"):
        stack_clips([Clip(f, meta, (("day", 1),))])


def test_footage_spec_and_source_for(footage: Path) -> None:
    fleet = FleetSpec(seed=0, num_devices=2, days=1, clips_per_day=2)
    syn = source_for(FootageSpec(), fleet, 1)
    assert isinstance(syn, SyntheticSource) and syn == device_source(fleet, 1)
    folder = FootageSpec("folder", str(footage), frames=4, image_size=16, profile="bodycam")
    src = source_for(folder)
    assert isinstance(src, FolderSource) and src.profile == "bodycam"
    assert src.clips([0]).x.shape[1:] == (4, 16, 16, 3)
    man = FootageSpec("manifest", str(_manifest(footage)), "cam-a", frames=4, image_size=16,
                      held_out_days=2)
    msrc = source_for(man, device=3)
    assert isinstance(msrc, ManifestSource) and msrc.split().held_out == (1, 2)
    assert set(msrc.clips([0]).labels["device"]) == {3}
    for spec in (FootageSpec(), folder, man, FootageSpec("folder", "x", stride=2)):
        assert FootageSpec.from_flat(spec.to_flat()) == spec
    for bad in ({"kind": "camera"}, {"kind": "folder"}, {"kind": "manifest", "path": "m"},
                {"frames": 0}, {"frames": True}, {"stride": -1}, {"held-out-days": -1},
                {"path": 3}):
        with pytest.raises(ValueError, match="footage|frames|stride"):
            FootageSpec.from_flat(bad)
    with pytest.raises(ValueError, match="fleet"):
        source_for(FootageSpec())
