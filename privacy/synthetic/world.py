"""The synthetic world: who wears each device, where they live, what they do when.

Each device has a *wearer* (stable look: skin, hair, body shape, accessory,
gait; a small wardrobe from which one shirt is worn per day), a *profile*
(first-person ``glasses`` / ``bodycam`` or third-person ``home-cam``), a
*home* (its own background) and a *daily routine* (a distribution over
(hour, location, activity) that repeats across days with noise).  A clip is
planned here (hour, place, activity, bystanders, objects: its :class:`ClipPlan`
and :class:`~privacy.clips.ClipMeta`) and drawn by ``render``.  See
``docs/synthetic-data.md``.

Determinism: every random draw comes from ``np.random.default_rng`` over a
``np.random.SeedSequence(spec.seed, spawn_key=(stream, a, b, c))``:

* fleet-level streams: shared places ``(PLACE, k)``, bystanders
  ``(BYSTANDER, b)``, weather ``(WEATHER, day)``;
* device-level: ``(DEVICE, device)`` (wearer, home, routine),
  ``(DAY, device, day)`` (today's shirt);
* clip-level: ``(CLIP, device, day, clip index)`` (everything in the clip).

So a clip depends only on ``(spec, device, day, idx)``: the same spec gives
bit-identical clips whatever the call order or the subset of devices/days.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from privacy.checks import is_int
from privacy.clips import ACTIVITIES, OBJECTS, ClipMeta

SHARED_LOCATIONS: tuple[str, ...] = ("office", "cafe", "park", "gym", "street", "store")
PROFILES: tuple[str, ...] = ("glasses", "bodycam", "home-cam")
VIEWS: dict[str, str] = {"glasses": "first", "bodycam": "first", "home-cam": "third"}
#: frames per second of the synthetic clips (T=8 → one second).
FPS: float = 8.0

_ACT = {a: i for i, a in enumerate(ACTIVITIES)}
OUTDOOR = frozenset({"park", "street"})

# SeedSequence stream tags (first element of the spawn key).
_S_DEVICE, _S_DAY, _S_CLIP, _S_PLACE, _S_BYSTANDER, _S_WEATHER = 1, 2, 3, 4, 5, 6


def _rng(seed: int, stream: int, a: int = 0, b: int = 0, c: int = 0) -> np.random.Generator:
    # fixed-length spawn key: no two (stream, a, b, c) tuples share a stream
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream, a, b, c)))


def clip_rng(seed: int, device: int, day: int, idx: int) -> np.random.Generator:
    """The stream every draw of one clip comes from: its plan first, then its pixels."""
    return _rng(seed, _S_CLIP, device, day, idx)


# --------------------------------------------------------------------------- the fleet


@dataclass(frozen=True)
class FleetSpec:
    """Everything that fixes a synthetic fleet. The server sends it with every instruction
    and a simulated device regenerates its own clips from it, so it is small, hashable
    and checked on construction (a bad field raises ``ValueError`` naming it)."""

    seed: int = 0
    num_devices: int = 8
    days: int = 4
    clips_per_day: int = 8
    frames: int = 8  # T, 8..16
    image_size: int = 32  # 32 or 64
    num_bystanders: int = 16

    def __post_init__(self) -> None:
        def _int(name: str, lo: int, hi: int | None = None) -> None:
            v = getattr(self, name)
            if not is_int(v):
                raise ValueError(f"FleetSpec.{name} must be an int, got {v!r}")
            if v < lo or (hi is not None and v > hi):
                rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
                raise ValueError(f"FleetSpec.{name} must be {rng}, got {v}")

        _int("seed", 0)
        _int("num_devices", 1)
        _int("days", 1)
        _int("clips_per_day", 1)
        _int("frames", 8, 16)
        _int("num_bystanders", 0)
        if isinstance(self.image_size, bool) or self.image_size not in (32, 64):
            raise ValueError(f"FleetSpec.image_size must be 32 or 64, got {self.image_size!r}")


def num_locations(spec: FleetSpec) -> int:
    """Homes ``0..num_devices-1`` then the shared places."""
    return spec.num_devices + len(SHARED_LOCATIONS)


def location_name(spec: FleetSpec, location_id: int) -> str:
    if not 0 <= location_id < num_locations(spec):
        raise ValueError(
            f"location_id must be in 0..{num_locations(spec) - 1}, got {location_id}"
        )
    if location_id < spec.num_devices:
        return f"home-{location_id}"
    return SHARED_LOCATIONS[location_id - spec.num_devices]


def check_device(spec: FleetSpec, device: int) -> int:
    if not is_int(device):
        raise ValueError(f"device must be an int, got {device!r}")
    if not 0 <= device < spec.num_devices:
        raise ValueError(f"device must be in 0..{spec.num_devices - 1}, got {device}")
    return int(device)


def device_profile(spec: FleetSpec, device: int) -> str:
    """Fixed per device; profiles rotate through the fleet (offset by the seed)."""
    device = check_device(spec, device)
    return PROFILES[(device + spec.seed) % len(PROFILES)]


# --------------------------------------------------------------------------- colours


def hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32)


_SKINS = np.array(
    [
        [0.96, 0.80, 0.69],
        [0.92, 0.72, 0.58],
        [0.80, 0.60, 0.45],
        [0.68, 0.48, 0.33],
        [0.52, 0.36, 0.24],
        [0.38, 0.26, 0.18],
    ],
    np.float32,
)
_HAIRS = np.array(
    [
        [0.08, 0.06, 0.05],
        [0.30, 0.20, 0.12],
        [0.55, 0.38, 0.20],
        [0.85, 0.72, 0.45],
        [0.60, 0.60, 0.60],
        [0.55, 0.18, 0.08],
    ],
    np.float32,
)
_ACCESSORIES = ("hat", "scarf", "bag", "watch")


def _jitter(rng: np.random.Generator, c: np.ndarray, s: float) -> np.ndarray:
    return np.clip(c + rng.normal(0.0, s, 3), 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------- scene descriptions


@dataclass(frozen=True)
class _Feat:
    kind: str  # "rect" | "ellipse"
    colour: np.ndarray
    w: float
    h: float
    yc: float
    period: float
    phase: float
    glow: bool = False  # window: colour follows daylight


@dataclass(frozen=True)
class Look:
    kind: str  # "home" or a SHARED_LOCATIONS entry
    top: np.ndarray
    bottom: np.ndarray
    horizon: float
    wall_stripe: tuple[float, float, float]  # amplitude, frequency, angle (rad)
    floor_stripe: tuple[float, float]  # amplitude, frequency (planks / tiles / lanes)
    feats: tuple[_Feat, ...]
    surface: np.ndarray  # table / counter colour used by desk activities

    @property
    def outdoor(self) -> bool:
        return self.kind in OUTDOOR


@dataclass(frozen=True)
class PersonLook:
    skin: np.ndarray
    hair: np.ndarray
    pants: np.ndarray
    shirts: tuple[np.ndarray, ...]
    long_sleeves: tuple[bool, ...]
    body_w: float
    body_h: float
    accessory: str
    acc_colour: np.ndarray
    step_hz: float
    bob: float
    swing: float
    speed: float


@dataclass(frozen=True)
class _Slot:
    hour: int
    location_id: int
    activity_id: int


@dataclass(frozen=True)
class DeviceWorld:
    """One device's fixed world, drawn once from its own stream: wearer, home, routine,
    household and colleagues (the bystanders it meets), workplace, home-cam mounting."""

    index: int
    profile: str
    wearer: PersonLook
    home: Look
    routine: tuple[_Slot, ...]
    weights: np.ndarray
    off_routine: float
    household: tuple[int, ...]
    colleagues: tuple[int, ...]
    workplace: int  # location id
    cam_horizon: float  # home-cam pose
    cam_x: float


_ALLOWED: dict[str, tuple[str, ...]] = {
    "home": ("eat", "cook", "clean", "read", "phone", "type", "walk"),
    "office": ("type", "read", "phone", "eat", "walk"),
    "cafe": ("eat", "read", "type", "phone", "cook", "clean"),
    "park": ("walk", "run", "read", "eat", "phone"),
    "gym": ("run", "walk", "clean", "phone"),
    "street": ("walk", "run", "phone"),
    "store": ("walk", "clean", "phone", "read"),
}
ACTIVITY_OBJECT = {"eat": "cup", "type": "laptop", "read": "book", "cook": "pan", "phone": "phone"}
_DISTRACTORS: dict[str, dict[str, float]] = {
    "home": {"plant": 0.5, "book": 0.3, "cup": 0.3, "bag": 0.2, "laptop": 0.15},
    "office": {"laptop": 0.5, "cup": 0.4, "plant": 0.4, "book": 0.2, "bag": 0.2, "phone": 0.2},
    "cafe": {"cup": 0.6, "laptop": 0.3, "book": 0.2, "bag": 0.2, "phone": 0.2, "plant": 0.3},
    "park": {"bike": 0.4, "bag": 0.2, "plant": 0.5, "phone": 0.1},
    "gym": {"bag": 0.5, "phone": 0.2, "cup": 0.2},
    "street": {"bike": 0.4, "bag": 0.3, "plant": 0.3, "phone": 0.1},
    "store": {"bag": 0.5, "plant": 0.2, "cup": 0.2, "book": 0.2},
}
TABLE_OBJECTS = frozenset({"cup", "laptop", "book", "phone", "pan"})


def _kind(spec: FleetSpec, location_id: int) -> str:
    return "home" if location_id < spec.num_devices else SHARED_LOCATIONS[location_id - spec.num_devices]


@lru_cache(maxsize=64)
def _place_look(seed: int, k: int) -> Look:
    """Canonical look of shared place k with a small seed-dependent perturbation."""
    rng = _rng(seed, _S_PLACE, k)
    name = SHARED_LOCATIONS[k]
    def J(c: list[float], s: float = 0.04) -> np.ndarray:
        return _jitter(rng, np.array(c, np.float32), s)

    F = _Feat
    if name == "office":
        return Look(name, J([0.72, 0.76, 0.80]), J([0.30, 0.33, 0.40]), 0.52, (0.0, 1.0, 0.0), (0.05, 9.0),
                     (F("rect", J([0.9, 0.9, 0.9]), 0.12, 0.04, 0.06, 0.45, 0.1),
                      F("rect", J([0.8, 0.85, 0.95]), 0.28, 0.22, 0.28, 0.9, 0.3, True),
                      F("rect", J([0.45, 0.45, 0.48]), 0.5, 0.07, 0.6, 1.1, 0.0)),
                     J([0.55, 0.55, 0.58]))
    if name == "cafe":
        return Look(name, J([0.56, 0.38, 0.24]), J([0.36, 0.22, 0.12]), 0.58, (0.08, 14.0, 0.0), (0.12, 6.0),
                     (F("ellipse", J([1.0, 0.85, 0.4]), 0.05, 0.04, 0.1, 0.4, 0.2),
                      F("rect", J([0.12, 0.14, 0.12]), 0.3, 0.2, 0.3, 1.3, 0.5),
                      F("rect", J([0.28, 0.16, 0.08]), 0.9, 0.16, 0.62, 1.8, 0.1)),
                     J([0.45, 0.28, 0.15]))
    if name == "park":
        return Look(name, J([0.45, 0.65, 0.95]), J([0.25, 0.52, 0.20]), 0.48, (0.0, 1.0, 0.0), (0.06, 5.0),
                     (F("rect", J([0.35, 0.22, 0.12]), 0.04, 0.18, 0.42, 0.55, 0.1),
                      F("ellipse", J([0.12, 0.40, 0.12]), 0.13, 0.12, 0.3, 0.55, 0.1),
                      F("rect", J([0.75, 0.68, 0.50]), 3.0, 0.07, 0.72, 4.0, 0.0)),
                     J([0.50, 0.40, 0.28]))
    if name == "gym":
        return Look(name, J([0.86, 0.86, 0.80]), J([0.14, 0.14, 0.16]), 0.56, (0.0, 1.0, 0.0), (0.0, 1.0),
                     (F("rect", J([0.80, 0.15, 0.12]), 3.0, 0.05, 0.22, 4.0, 0.0),
                      F("rect", J([0.70, 0.78, 0.82]), 0.35, 0.28, 0.36, 1.0, 0.6),
                      F("rect", J([0.25, 0.25, 0.28]), 0.04, 0.3, 0.45, 0.5, 0.25)),
                     J([0.30, 0.30, 0.33]))
    if name == "street":
        return Look(name, J([0.45, 0.65, 0.95]), J([0.33, 0.33, 0.35]), 0.5, (0.0, 1.0, 0.0), (0.0, 1.0),
                     (F("rect", J([0.65, 0.45, 0.38]), 0.3, 0.42, 0.29, 0.62, 0.0),
                      F("rect", J([0.55, 0.58, 0.62]), 0.2, 0.3, 0.35, 0.62, 0.31),
                      F("rect", J([0.95, 0.95, 0.90]), 0.09, 0.015, 0.78, 0.22, 0.0),
                      F("rect", J([0.6, 0.6, 0.58]), 3.0, 0.06, 0.53, 4.0, 0.0)),
                     J([0.45, 0.45, 0.45]))
    # store
    return Look(name, J([0.93, 0.93, 0.90]), J([0.78, 0.78, 0.74]), 0.6, (0.0, 1.0, 0.0), (0.08, 10.0),
                 (F("rect", J([0.55, 0.45, 0.35]), 0.45, 0.42, 0.36, 0.6, 0.0),
                  F("rect", J([0.85, 0.25, 0.20]), 0.4, 0.05, 0.26, 0.6, 0.0),
                  F("rect", J([0.20, 0.45, 0.80]), 0.4, 0.05, 0.38, 0.6, 0.0),
                  F("rect", J([0.95, 0.80, 0.20]), 0.4, 0.05, 0.5, 0.6, 0.0)),
                 J([0.80, 0.80, 0.80]))


def _home_look(rng: np.random.Generator) -> Look:
    wall = hsv(rng.random(), rng.uniform(0.12, 0.45), rng.uniform(0.55, 0.92))
    floor = (hsv(rng.uniform(0.05, 0.11), rng.uniform(0.35, 0.7), rng.uniform(0.3, 0.6))
             if rng.random() < 0.6 else hsv(rng.random(), rng.uniform(0.0, 0.2), rng.uniform(0.35, 0.8)))
    angle = float(rng.choice([0.0, math.pi / 2, math.pi / 4]))
    period = float(rng.uniform(1.3, 1.7))
    feats = [
        _Feat("rect", np.zeros(3, np.float32), rng.uniform(0.18, 0.3), rng.uniform(0.18, 0.28),
              rng.uniform(0.2, 0.3), period, rng.uniform(0.0, period), True),  # window
        _Feat("rect", hsv(rng.random(), rng.uniform(0.3, 0.8), rng.uniform(0.2, 0.7)),
              rng.uniform(0.25, 0.45), rng.uniform(0.12, 0.2), rng.uniform(0.5, 0.6),
              period, rng.uniform(0.0, period)),  # sofa / shelf
        _Feat("rect" if rng.random() < 0.5 else "ellipse",
              hsv(rng.random(), rng.uniform(0.4, 0.9), rng.uniform(0.4, 0.9)),
              rng.uniform(0.08, 0.15), rng.uniform(0.08, 0.14), rng.uniform(0.15, 0.3),
              period, rng.uniform(0.0, period)),  # picture / lamp
    ]
    return Look("home", wall, floor, float(rng.uniform(0.5, 0.62)),
                 (float(rng.uniform(0.0, 0.14)), float(rng.uniform(4.0, 12.0)), angle),
                 (float(rng.uniform(0.03, 0.12)), float(rng.uniform(5.0, 12.0))),
                 tuple(feats),
                 hsv(rng.uniform(0.05, 0.12), rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.75)))


def _person_look(rng: np.random.Generator, wardrobe: int) -> PersonLook:
    return PersonLook(
        skin=_jitter(rng, _SKINS[rng.integers(len(_SKINS))], 0.02),
        hair=_jitter(rng, _HAIRS[rng.integers(len(_HAIRS))], 0.03),
        pants=hsv(rng.random(), rng.uniform(0.1, 0.6), rng.uniform(0.15, 0.5)),
        shirts=tuple(hsv(rng.random(), rng.uniform(0.35, 0.95), rng.uniform(0.35, 0.95))
                     for _ in range(wardrobe)),
        long_sleeves=tuple(bool(rng.random() < 0.5) for _ in range(wardrobe)),
        body_w=float(rng.uniform(0.8, 1.25)),
        body_h=float(rng.uniform(0.85, 1.12)),
        accessory=str(rng.choice(_ACCESSORIES)),
        acc_colour=hsv(rng.random(), rng.uniform(0.5, 1.0), rng.uniform(0.3, 1.0)),
        step_hz=float(rng.uniform(1.5, 2.2)),
        bob=float(rng.uniform(0.012, 0.035)),
        swing=float(rng.uniform(0.7, 1.3)),
        speed=float(rng.uniform(0.16, 0.3)),
    )


@lru_cache(maxsize=256)
def bystander_look(seed: int, b: int) -> PersonLook:
    return _person_look(_rng(seed, _S_BYSTANDER, b), 1)


@lru_cache(maxsize=64)
def day_weather(seed: int, day: int) -> float:
    """Fleet-wide cloudiness of a day: multiplies daylight (1 = clear)."""
    return float(_rng(seed, _S_WEATHER, day).uniform(0.55, 1.0))


def _routine(rng: np.random.Generator, spec: FleetSpec, home: int, homecam: bool,
             workplace: int) -> tuple[tuple[_Slot, ...], np.ndarray]:
    n = spec.num_devices
    wake = int(rng.integers(5, 10))
    def pick(opts: list[str]) -> int:
        return _ACT[str(rng.choice(opts))]

    slots: list[_Slot] = []
    if homecam:
        slots.append(_Slot(wake, home, pick(["eat", "cook"])))
        slots.append(_Slot(wake + 1, home, pick(["clean", "phone", "read"])))
        if rng.random() < 0.5:
            slots.append(_Slot(int(rng.integers(10, 16)), home, pick(["type", "read"])))
        slots.append(_Slot(int(rng.integers(16, 19)), home, pick(["cook", "clean"])))
        slots.append(_Slot(int(rng.integers(18, 21)), home, _ACT["eat"]))
        slots.append(_Slot(int(rng.integers(20, 24)), home, pick(["read", "phone", "walk", "type"])))
    else:
        wk = SHARED_LOCATIONS[workplace - n]
        work_acts = {"office": ["type", "read", "phone"], "cafe": ["cook", "clean", "eat"],
                     "store": ["walk", "clean", "phone"], "gym": ["clean", "run", "walk"]}[wk]
        slots.append(_Slot(wake, home, pick(["eat", "cook"])))
        slots.append(_Slot(wake + 1, n + SHARED_LOCATIONS.index("street"), _ACT["walk"]))
        slots.append(_Slot(wake + 2 + int(rng.integers(0, 2)), workplace, pick(work_acts)))
        slots.append(_Slot(wake + 4 + int(rng.integers(0, 2)), workplace, pick(work_acts)))
        lunch = str(rng.choice(["cafe", "park", wk]))
        slots.append(_Slot(int(rng.choice([12, 13])), n + SHARED_LOCATIONS.index(lunch), _ACT["eat"]))
        ex = str(rng.choice(["park", "gym", "street"]))
        slots.append(_Slot(int(rng.integers(16, 20)), n + SHARED_LOCATIONS.index(ex),
                           pick(["run", "walk"])))
        slots.append(_Slot(int(rng.integers(19, 23)), home, pick(["read", "phone", "cook", "clean", "type"])))
    slots = [_Slot(min(s.hour, 23), s.location_id, s.activity_id) for s in slots]
    w = rng.dirichlet(np.full(len(slots), 2.0))
    return tuple(slots), w


@lru_cache(maxsize=1024)
def device_world(spec: FleetSpec, device: int) -> DeviceWorld:
    rng = _rng(spec.seed, _S_DEVICE, device)
    profile = device_profile(spec, device)
    wearer = _person_look(rng, 2)
    home = _home_look(rng)
    n = spec.num_devices
    workplace = n + SHARED_LOCATIONS.index(
        str(rng.choice(["office", "cafe", "store", "gym"], p=[0.5, 0.2, 0.15, 0.15])))
    routine, weights = _routine(rng, spec, device, profile == "home-cam", workplace)
    nb = spec.num_bystanders
    household = tuple(int(b) for b in rng.choice(nb, size=min(nb, int(rng.integers(0, 3))), replace=False))
    colleagues = tuple(int(b) for b in rng.choice(nb, size=min(nb, 3), replace=False))
    return DeviceWorld(device, profile, wearer, home, routine, weights, float(rng.uniform(0.06, 0.15)),
                   household, colleagues, workplace, float(rng.uniform(0.42, 0.52)),
                   float(rng.uniform(0.0, 1.0)))


def location_look(spec: FleetSpec, location_id: int) -> Look:
    if location_id < spec.num_devices:
        return device_world(spec, location_id).home
    return _place_look(spec.seed, location_id - spec.num_devices)


# --------------------------------------------------------------------------- clip planning


@dataclass(frozen=True)
class ClipPlan:
    """What happens in one clip, drawn before any pixel: its labels come from here, which
    is what lets the metadata-only path skip rendering."""

    hour: int
    location_id: int
    activity: str
    bystanders: tuple[int, ...]
    objects: tuple[str, ...]  # distractors (world-fixed) + activity object


def plan_clip(spec: FleetSpec, dev: DeviceWorld, rng: np.random.Generator) -> ClipPlan:
    n = spec.num_devices
    homecam = dev.profile == "home-cam"
    if rng.random() < dev.off_routine:
        hour = int(rng.integers(7, 23))
        loc = dev.index if (homecam or rng.random() < 0.4) else n + int(rng.integers(len(SHARED_LOCATIONS)))
        act = str(rng.choice(_ALLOWED[_kind(spec, loc)]))
    else:
        slot = dev.routine[int(rng.choice(len(dev.routine), p=dev.weights))]
        hour = int(np.clip(slot.hour + rng.choice([-1, 0, 0, 0, 1]), 0, 23))
        loc = slot.location_id
        act = ACTIVITIES[slot.activity_id]
        if rng.random() > 0.85:
            act = str(rng.choice(_ALLOWED[_kind(spec, loc)]))
    if homecam and act == "run":
        act = "walk"
    kind = _kind(spec, loc)
    nb = spec.num_bystanders
    bys: set[int] = set()
    if nb:
        if kind == "home":
            if loc == dev.index:
                bys.update(b for b in dev.household if rng.random() < 0.45)
        else:
            for _ in range(int(rng.choice([0, 1, 1, 2, 2, 3]))):
                if loc == dev.workplace and rng.random() < 0.6:
                    bys.add(int(rng.choice(dev.colleagues)))
                else:
                    bys.add(int(rng.integers(nb)))
    objs = [o for o, pr in _DISTRACTORS[kind].items() if rng.random() < pr][:3]
    if act in ACTIVITY_OBJECT and ACTIVITY_OBJECT[act] not in objs:
        objs.append(ACTIVITY_OBJECT[act])
    return ClipPlan(hour, loc, act, tuple(sorted(bys)),
                 tuple(sorted(set(objs), key=OBJECTS.index)))


@lru_cache(maxsize=4096)
def shirt_of_day(seed: int, device: int, day: int, wardrobe: int) -> int:
    """Today's shirt: one draw per (device, day) from the wearer's wardrobe."""
    return int(_rng(seed, _S_DAY, device, day).integers(wardrobe))


def clip_meta(spec: FleetSpec, dev: DeviceWorld, day: int, idx: int, plan: ClipPlan) -> ClipMeta:
    return ClipMeta(
        clip_id=f"d{dev.index:05d}-day{day:03d}-c{idx:03d}",
        device=dev.index,
        wearer=dev.index,
        profile=dev.profile,
        view=VIEWS[dev.profile],
        day=day,
        hour=plan.hour,
        location=location_name(spec, plan.location_id),
        location_id=plan.location_id,
        activity=plan.activity,
        activity_id=_ACT[plan.activity],
        bystanders=plan.bystanders,
        objects=plan.objects,
        indoor=_kind(spec, plan.location_id) not in OUTDOOR,
    )
