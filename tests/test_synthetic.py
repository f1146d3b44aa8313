"""Tests for the deterministic synthetic life-log generator (privacy.synthetic)."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import warnings

import numpy as np
import pytest

from privacy.synthetic import (
    ACTIVITIES,
    OBJECTS,
    PROFILES,
    SHARED_LOCATIONS,
    ClipBatch,
    FleetSpec,
    device_clips,
    device_metas,
    device_profile,
    fleet_batch,
    location_name,
    num_locations,
    people,
    raster,
    render,
    stack_clips,
    world,
)
from privacy.synthetic import fleet as syn_fleet

SPEC = FleetSpec(seed=0)  # the app's default fleet: 8 devices x 4 days x 8 clips x 8 frames, 32 px


def _clear_caches() -> None:
    """Drop every memoised per-fleet/per-device description, so a second generation
    really recomputes everything instead of reusing cached objects."""
    for module in (world, raster, people, render, syn_fleet):
        for name in dir(module):
            fn = getattr(module, name)
            if callable(getattr(fn, "cache_clear", None)):
                fn.cache_clear()


def _bytes(clips) -> list[bytes]:
    return [c.frames.tobytes() for c in clips]


@pytest.fixture(scope="module")
def fleet() -> ClipBatch:
    return fleet_batch(SPEC, range(SPEC.num_devices), range(SPEC.days))


# --------------------------------------------------------------------------- shape / type / range


@pytest.mark.parametrize("frames,size", [(8, 32), (12, 64), (16, 32)])
def test_shape_dtype_range(frames: int, size: int) -> None:
    spec = FleetSpec(seed=3, num_devices=3, days=2, clips_per_day=2, frames=frames, image_size=size)
    for d in range(spec.num_devices):
        clips = device_clips(spec, d)
        assert len(clips) == spec.days * spec.clips_per_day
        for c in clips:
            assert c.frames.shape == (frames, size, size, 3)
            assert c.frames.dtype == np.uint8
            # real images: use much of the range, and frames are not all the same
            assert int(c.frames.max()) - int(c.frames.min()) > 60
            assert np.abs(np.diff(c.frames.astype(np.int16), axis=0)).mean() > 0.5


def test_batch_labels(fleet: ClipBatch) -> None:
    n = SPEC.num_devices * SPEC.days * SPEC.clips_per_day
    assert fleet.x.shape == (n, SPEC.frames, SPEC.image_size, SPEC.image_size, 3)
    assert fleet.x.dtype == np.uint8
    assert len(fleet.metas) == n
    for k in ("activity", "wearer", "device", "location", "hour", "day", "indoor"):
        assert fleet.labels[k].shape == (n,) and fleet.labels[k].dtype == np.int64, k
    assert fleet.labels["objects"].shape == (n, len(OBJECTS))
    assert fleet.labels["objects"].dtype == np.int64
    for i, m in enumerate(fleet.metas):
        assert fleet.labels["activity"][i] == m.activity_id
        assert fleet.labels["location"][i] == m.location_id
        assert fleet.labels["indoor"][i] == int(m.indoor)
        assert set(np.flatnonzero(fleet.labels["objects"][i])) == {OBJECTS.index(o) for o in m.objects}
    # device-major order, as documented
    assert list(fleet.labels["device"]) == sorted(fleet.labels["device"])
    # every activity and object kind occurs somewhere in the default fleet
    assert set(fleet.labels["activity"]) == set(range(len(ACTIVITIES)))
    assert fleet.labels["objects"].sum(0).min() > 0


def test_stack_clips_errors() -> None:
    with pytest.raises(ValueError, match="at least one"):
        stack_clips([])
    a = device_clips(FleetSpec(num_devices=1, days=1, clips_per_day=1), 0)
    b = device_clips(FleetSpec(num_devices=1, days=1, clips_per_day=1, image_size=64), 0)
    with pytest.raises(ValueError, match="same frames/image_size"):
        stack_clips(a + b)


# --------------------------------------------------------------------------- determinism


def test_same_spec_bit_identical_across_calls_and_order() -> None:
    spec = FleetSpec(seed=11, num_devices=4, days=3, clips_per_day=3)
    first = {d: _bytes(device_clips(spec, d)) for d in range(4)}
    _clear_caches()
    # another spec object with equal fields, devices asked in another order
    spec2 = FleetSpec(seed=11, num_devices=4, days=3, clips_per_day=3)
    for d in (3, 1, 0, 2):
        assert _bytes(device_clips(spec2, d)) == first[d], d


def test_subset_of_days_and_devices_is_identical() -> None:
    spec = FleetSpec(seed=5, num_devices=4, days=4, clips_per_day=3)
    full = device_clips(spec, 2)
    _clear_caches()
    sub = device_clips(spec, 2, days=[3, 1])
    by_id = {c.meta.clip_id: c for c in full}
    assert [c.meta.day for c in sub] == [3, 3, 3, 1, 1, 1]
    for c in sub:
        assert c.frames.tobytes() == by_id[c.meta.clip_id].frames.tobytes()
        assert c.meta == by_id[c.meta.clip_id].meta
    batch = fleet_batch(spec, [2], [1])
    assert batch.x.tobytes() == b"".join(c.frames.tobytes() for c in full if c.meta.day == 1)


def test_metas_only_path_matches_rendered() -> None:
    spec = FleetSpec(seed=2, num_devices=3, days=2, clips_per_day=4)
    for d in range(3):
        assert device_metas(spec, d) == [c.meta for c in device_clips(spec, d)]


def _metas_json(metas) -> bytes:
    return json.dumps([dataclasses.asdict(m) for m in metas], sort_keys=True).encode()


def _batch_digest(batch: ClipBatch) -> str:
    h = hashlib.sha256()
    h.update(batch.x.tobytes())
    h.update(str(batch.x.shape).encode())
    for key in sorted(batch.labels):
        h.update(key.encode())
        h.update(str(batch.labels[key].dtype).encode())
        h.update(batch.labels[key].tobytes())
    h.update(_metas_json(batch.metas))
    return h.hexdigest()


#: Digests of whole batches (pixels, labels, metadata) as the generator draws them today.
#: A fleet is shared by the server (held-out and attacker footage) and every device (its
#: own clips, regenerated from the spec), and experiments are compared across versions:
#: a change here changes every dataset, so it must be deliberate, never a side effect of
#: refactoring. Pixels go through float32 NumPy maths; a NumPy upgrade that changes its
#: rounding would show here first.
GOLDEN: dict[FleetSpec, str] = {
    FleetSpec(seed=0, num_devices=3, days=2, clips_per_day=2):
        "97787a34bb774d6faceac07aea4eb209627e558159127dffc0e6ae4bf5411cb6",
    FleetSpec(seed=7, num_devices=4, days=2, clips_per_day=2, frames=12, image_size=64,
              num_bystanders=3):
        "b135d1a2faa2cdd1cb838c79956b15bd8d7d947aee8394b37023a1585aeca335",
}


@pytest.mark.parametrize("spec", list(GOLDEN), ids=["32px", "64px-12frames"])
def test_clips_are_the_pinned_ones(spec: FleetSpec) -> None:
    batch = fleet_batch(spec, range(spec.num_devices), range(spec.days))
    assert _batch_digest(batch) == GOLDEN[spec]


def test_default_fleet_metadata_is_the_pinned_one() -> None:
    metas = [m for d in range(SPEC.num_devices) for m in device_metas(SPEC, d)]
    assert hashlib.sha256(_metas_json(metas)).hexdigest() == (
        "589df7b7c6c0c510db2cec570afa2ecab8d99d7d5cc9a40b4cd5ec262ce104eb")


def test_different_seed_gives_different_fleet() -> None:
    a = FleetSpec(seed=0, num_devices=3, days=1, clips_per_day=4)
    b = FleetSpec(seed=1, num_devices=3, days=1, clips_per_day=4)
    for d in range(3):
        ca, cb = device_clips(a, d), device_clips(b, d)
        assert all(x.frames.tobytes() != y.frames.tobytes() for x, y in zip(ca, cb))
    # not only pixels: routines (metadata) differ too
    ma = [m.hour for d in range(3) for m in device_metas(a, d)]
    mb = [m.hour for d in range(3) for m in device_metas(b, d)]
    assert ma != mb


def test_frames_are_read_only() -> None:
    clip = device_clips(FleetSpec(num_devices=1, days=1, clips_per_day=1), 0)[0]
    with pytest.raises(ValueError):
        clip.frames[0, 0, 0, 0] = 1


# --------------------------------------------------------------------------- metadata


def test_metadata_consistency(fleet: ClipBatch) -> None:
    n = SPEC.num_devices
    ids = [m.clip_id for m in fleet.metas]
    assert len(set(ids)) == len(ids)
    assert num_locations(SPEC) == n + len(SHARED_LOCATIONS)
    profiles = set()
    for m in fleet.metas:
        assert m.clip_id == f"d{m.device:05d}-day{m.day:03d}-c{m.clip_id[-3:]}"
        assert m.wearer == m.device
        assert m.profile == device_profile(SPEC, m.device)
        assert m.view == ("third" if m.profile == "home-cam" else "first")
        profiles.add(m.profile)
        assert 0 <= m.hour <= 23 and 0 <= m.day < SPEC.days
        assert 0 <= m.activity_id < len(ACTIVITIES) and ACTIVITIES[m.activity_id] == m.activity
        assert 0 <= m.location_id < num_locations(SPEC)
        assert m.location == location_name(SPEC, m.location_id)
        if m.location_id < n:  # a home: only the device's own
            assert m.location_id == m.device and m.indoor is True
        else:
            assert m.indoor == (m.location not in ("park", "street"))
        if m.profile == "home-cam":  # a fixed camera in its own home
            assert m.location_id == m.device and m.activity != "run"
        assert set(m.objects) <= set(OBJECTS)
        assert list(m.objects) == sorted(m.objects, key=OBJECTS.index)
        assert all(0 <= b < SPEC.num_bystanders for b in m.bystanders)
        assert list(m.bystanders) == sorted(set(m.bystanders))
    assert profiles == set(PROFILES)


def test_device_profile_fixed_and_validated() -> None:
    assert [device_profile(SPEC, d) for d in range(3)] == list(PROFILES)
    assert device_profile(SPEC, 5) == device_profile(FleetSpec(seed=0, num_devices=6), 5)
    with pytest.raises(ValueError, match="device"):
        device_profile(SPEC, SPEC.num_devices)
    with pytest.raises(ValueError, match="device"):
        device_clips(SPEC, -1)


@pytest.mark.parametrize(
    "field,value",
    [("image_size", 48), ("frames", 7), ("frames", 17), ("seed", -1), ("num_devices", 0),
     ("days", 0), ("clips_per_day", 0), ("num_bystanders", -1), ("image_size", True)],
)
def test_spec_validation_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"FleetSpec.{field}"):
        FleetSpec(**{field: value})


def test_days_validated() -> None:
    with pytest.raises(ValueError, match="days"):
        device_clips(SPEC, 0, days=[SPEC.days])


# --------------------------------------------------------------------------- routines


def _hist(values: list[int], n: int) -> np.ndarray:
    h = np.bincount(values, minlength=n).astype(float)
    return h / h.sum()


def test_routines_repeat_across_days_and_differ_across_devices() -> None:
    """Histogram intersection of (device, day) hour / location distributions: pairs from
    the same device (different days) agree far more than pairs from different devices.
    Measured at seeds 0..5: hour 0.68-0.76 vs 0.45-0.53; location 0.82-0.85 vs 0.08-0.13."""
    spec = FleetSpec(seed=0, clips_per_day=16)
    hours, locs = {}, {}
    for d in range(spec.num_devices):
        for m_day in range(spec.days):
            ms = device_metas(spec, d, [m_day])
            hours[d, m_day] = _hist([m.hour // 3 for m in ms], 8)
            locs[d, m_day] = _hist([m.location_id for m in ms], num_locations(spec))
    same_h, diff_h, same_l, diff_l = [], [], [], []
    for a, b in itertools.combinations(hours, 2):
        h = np.minimum(hours[a], hours[b]).sum()
        lo = np.minimum(locs[a], locs[b]).sum()
        (same_h if a[0] == b[0] else diff_h).append(h)
        (same_l if a[0] == b[0] else diff_l).append(lo)
    assert np.mean(same_h) > np.mean(diff_h) + 0.1
    assert np.mean(same_l) > np.mean(diff_l) + 0.4
    # the modal (location) of a device's day recurs on its other days
    modal = {k: int(v.argmax()) for k, v in locs.items()}
    agree = [modal[d, a] == modal[d, b] for d in range(spec.num_devices)
             for a, b in itertools.combinations(range(spec.days), 2)]
    assert np.mean(agree) >= 0.5
    # and the devices' whole-fleet hour profiles are not all alike
    per_dev = [np.mean([hours[d, k] for k in range(spec.days)], 0) for d in range(spec.num_devices)]
    assert len({int(p.argmax()) for p in per_dev}) >= 3


# --------------------------------------------------------------------------- probes


def _probe_features(x: np.ndarray) -> np.ndarray:
    """Raw pixels, linearly pooled: the time-averaged frame at 8x8x3, plus the mean
    absolute frame difference (motion energy) at 8x8."""
    v = x.astype(np.float32) / 255.0
    n, _, h, _, c = v.shape
    f = h // 8
    mean = v.mean(1).reshape(n, 8, f, 8, f, c).mean((2, 4)).reshape(n, -1)
    g = v.mean(-1)
    diff = np.abs(np.diff(g, axis=1)).mean(1).reshape(n, 8, f, 8, f).mean((2, 4)).reshape(n, -1)
    return np.concatenate([mean, diff], 1)


def _fit_eval(xtr, ytr, xte, yte) -> tuple[float, float]:
    from sklearn.linear_model import RidgeClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), RidgeClassifier(alpha=10.0)).fit(xtr, ytr)
    acc = float((clf.predict(xte) == yte).mean())
    values, counts = np.unique(ytr, return_counts=True)
    majority = float((yte == values[counts.argmax()]).mean())  # chance: predict the train majority
    return acc, majority


@pytest.mark.parametrize(
    "label,margin",
    # measured at seeds 0..9 (this split, these features): activity 0.61-0.78 (majority
    # 0.11-0.30), wearer 0.85-0.95 (0.125), location 0.90-0.98 (0.09-0.21); seed 0:
    # activity 0.70 / 0.14, wearer 0.88 / 0.125, location 0.96 / 0.09
    [("activity", 0.25), ("wearer", 0.4), ("location", 0.4)],
)
def test_raw_pixel_linear_probe_beats_chance_on_held_out_days(fleet: ClipBatch, label: str,
                                                               margin: float) -> None:
    feats = _probe_features(fleet.x)
    tr = fleet.labels["day"] < 2
    te = ~tr
    y = fleet.labels[label]
    acc, majority = _fit_eval(feats[tr], y[tr], feats[te], y[te])
    chance = max(majority, 1.0 / len(np.unique(y)))
    assert acc >= chance + margin, (label, acc, chance)


def _controlled(spec: FleetSpec, device: int, activity: str, location: str, k: int) -> np.ndarray:
    """White-box: render one clip of `device` with a forced plan (activity, place)."""
    dev = world.device_world(spec, device)
    rng = np.random.default_rng([spec.seed, 77, device, k])
    plan = world.ClipPlan(hour=int(rng.integers(8, 18)),
                     location_id=spec.num_devices + SHARED_LOCATIONS.index(location),
                     activity=activity, bystanders=(), objects=())
    return render.render_frames(spec, dev, 0, 0.8, plan, rng)


def test_walk_vs_run_needs_motion_not_a_single_frame() -> None:
    """Same devices, places and hours: a probe on one frame is near chance, a probe
    on frame differences is not (measured: first frame 0.57, differences 0.875; chance 0.5)."""
    spec = FleetSpec(seed=0)
    devices = [d for d in range(spec.num_devices) if device_profile(spec, d) != "home-cam"]
    xs, ys, train = [], [], []
    for d in devices:
        for k in range(32):
            xs.append(_controlled(spec, d, ("walk", "run")[k % 2], ("street", "park")[(k // 2) % 2], k))
            ys.append(k % 2)
            train.append(k < 16)
    x = np.stack(xs).astype(np.float32) / 255.0
    y, tr = np.array(ys), np.array(train)
    n = len(x)
    first = x[:, 0].reshape(n, 8, 4, 8, 4, 3).mean((2, 4)).reshape(n, -1)
    g = x.mean(-1)
    diff = np.abs(np.diff(g, axis=1)).mean(1).reshape(n, 8, 4, 8, 4).mean((2, 4)).reshape(n, -1)
    acc_first, _ = _fit_eval(first[tr], y[tr], first[~tr], y[~tr])
    acc_diff, _ = _fit_eval(diff[tr], y[tr], diff[~tr], y[~tr])
    assert acc_diff >= 0.7, acc_diff
    assert acc_diff >= acc_first + 0.15, (acc_first, acc_diff)


def test_evening_is_darker_than_midday_outdoors() -> None:
    spec = FleetSpec(seed=0)
    dev = world.device_world(spec, 0)
    means = {}
    for hour in (13, 22):
        plan = world.ClipPlan(hour=hour, location_id=spec.num_devices + SHARED_LOCATIONS.index("park"),
                         activity="walk", bystanders=(), objects=())
        means[hour] = render.render_frames(spec, dev, 0, 1.0, plan, np.random.default_rng(1)).mean()
    assert means[22] < 0.7 * means[13], means


def test_bystanders_have_their_own_looks() -> None:
    spec = FleetSpec(seed=0)
    looks = set()
    for b in range(spec.num_bystanders):
        p = world.bystander_look(spec.seed, b)
        looks.add(tuple(np.round(np.concatenate([p.skin, p.shirts[0], p.pants]), 4)))
    assert len(looks) == spec.num_bystanders


def test_no_warnings_during_generation() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        device_clips(FleetSpec(seed=9, num_devices=3, days=1, clips_per_day=4, image_size=64), 2)
