"""Deterministic synthetic life-log video for a simulated device fleet.

Each device has a *wearer* (stable look: skin, hair, body shape, accessory,
gait; a small wardrobe from which one shirt is worn per day), a *profile*
(first-person ``glasses`` / ``bodycam`` or third-person ``home-cam``), a
*home* (its own background) and a *daily routine* (a distribution over
(hour, location, activity) that repeats across days with noise).  Clips show
activities as motion over frames, at homes or shared places, under
hour-dependent lighting, with bystanders, objects, camera jitter and sensor
noise.  See ``docs/synthetic-data.md``.

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
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = [
    "ACTIVITIES",
    "FPS",
    "LABEL_KEYS",
    "OBJECTS",
    "PROFILES",
    "SHARED_LOCATIONS",
    "VIEWS",
    "Clip",
    "ClipBatch",
    "ClipMeta",
    "FleetSpec",
    "device_clips",
    "device_metas",
    "device_profile",
    "fleet_batch",
    "location_name",
    "num_locations",
    "stack_clips",
]

ACTIVITIES: tuple[str, ...] = ("walk", "run", "eat", "type", "cook", "read", "clean", "phone")
SHARED_LOCATIONS: tuple[str, ...] = ("office", "cafe", "park", "gym", "street", "store")
OBJECTS: tuple[str, ...] = ("cup", "laptop", "book", "pan", "phone", "bag", "plant", "bike")
PROFILES: tuple[str, ...] = ("glasses", "bodycam", "home-cam")
VIEWS: dict[str, str] = {"glasses": "first", "bodycam": "first", "home-cam": "third"}
#: int64 [N] label arrays of a ClipBatch (plus "objects", multi-hot [N, len(OBJECTS)]).
LABEL_KEYS: tuple[str, ...] = ("activity", "wearer", "device", "location", "hour", "day", "indoor")
#: frames per second of the synthetic clips (T=8 → one second).
FPS: float = 8.0

_ACT = {a: i for i, a in enumerate(ACTIVITIES)}
_OBJ = {o: i for i, o in enumerate(OBJECTS)}
_OUTDOOR = frozenset({"park", "street"})

# SeedSequence stream tags (first element of the spawn key).
_S_DEVICE, _S_DAY, _S_CLIP, _S_PLACE, _S_BYSTANDER, _S_WEATHER = 1, 2, 3, 4, 5, 6


def _rng(seed: int, stream: int, a: int = 0, b: int = 0, c: int = 0) -> np.random.Generator:
    # fixed-length spawn key: no two (stream, a, b, c) tuples share a stream
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream, a, b, c)))


# --------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class FleetSpec:
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
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"FleetSpec.{name} must be an int, got {v!r}")  # noqa: TRY004
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


@dataclass(frozen=True)
class ClipMeta:
    clip_id: str
    device: int
    wearer: int
    profile: str
    view: str
    day: int
    hour: int
    location: str
    location_id: int
    activity: str
    activity_id: int
    bystanders: tuple[int, ...]
    objects: tuple[str, ...]
    indoor: bool | int  # bool for synthetic clips; -1 (unknown) for real footage


@dataclass(frozen=True)
class Clip:
    frames: np.ndarray  # uint8 [T, H, W, 3]
    meta: ClipMeta


@dataclass(frozen=True)
class ClipBatch:
    x: np.ndarray  # uint8 [N, T, H, W, 3]
    labels: dict[str, np.ndarray]
    metas: tuple[ClipMeta, ...]

    def __len__(self) -> int:
        return int(self.x.shape[0])


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


def _check_device(spec: FleetSpec, device: int) -> int:
    if isinstance(device, bool) or not isinstance(device, (int, np.integer)):
        raise ValueError(f"device must be an int, got {device!r}")  # noqa: TRY004
    if not 0 <= device < spec.num_devices:
        raise ValueError(f"device must be in 0..{spec.num_devices - 1}, got {device}")
    return int(device)


def device_profile(spec: FleetSpec, device: int) -> str:
    """Fixed per device; profiles rotate through the fleet (offset by the seed)."""
    device = _check_device(spec, device)
    return PROFILES[(device + spec.seed) % len(PROFILES)]


# --------------------------------------------------------------------------- colours


def _hsv(h: float, s: float, v: float) -> np.ndarray:
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
class _Look:
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
        return self.kind in _OUTDOOR


@dataclass(frozen=True)
class _PersonLook:
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
class _Device:
    index: int
    profile: str
    wearer: _PersonLook
    home: _Look
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
_ACTIVITY_OBJECT = {"eat": "cup", "type": "laptop", "read": "book", "cook": "pan", "phone": "phone"}
_DISTRACTORS: dict[str, dict[str, float]] = {
    "home": {"plant": 0.5, "book": 0.3, "cup": 0.3, "bag": 0.2, "laptop": 0.15},
    "office": {"laptop": 0.5, "cup": 0.4, "plant": 0.4, "book": 0.2, "bag": 0.2, "phone": 0.2},
    "cafe": {"cup": 0.6, "laptop": 0.3, "book": 0.2, "bag": 0.2, "phone": 0.2, "plant": 0.3},
    "park": {"bike": 0.4, "bag": 0.2, "plant": 0.5, "phone": 0.1},
    "gym": {"bag": 0.5, "phone": 0.2, "cup": 0.2},
    "street": {"bike": 0.4, "bag": 0.3, "plant": 0.3, "phone": 0.1},
    "store": {"bag": 0.5, "plant": 0.2, "cup": 0.2, "book": 0.2},
}
_TABLE_OBJECTS = frozenset({"cup", "laptop", "book", "phone", "pan"})


def _kind(spec: FleetSpec, location_id: int) -> str:
    return "home" if location_id < spec.num_devices else SHARED_LOCATIONS[location_id - spec.num_devices]


@lru_cache(maxsize=64)
def _place_look(seed: int, k: int) -> _Look:
    """Canonical look of shared place k with a small seed-dependent perturbation."""
    rng = _rng(seed, _S_PLACE, k)
    name = SHARED_LOCATIONS[k]
    def J(c: list[float], s: float = 0.04) -> np.ndarray:
        return _jitter(rng, np.array(c, np.float32), s)

    F = _Feat
    if name == "office":
        return _Look(name, J([0.72, 0.76, 0.80]), J([0.30, 0.33, 0.40]), 0.52, (0.0, 1.0, 0.0), (0.05, 9.0),
                     (F("rect", J([0.9, 0.9, 0.9]), 0.12, 0.04, 0.06, 0.45, 0.1),
                      F("rect", J([0.8, 0.85, 0.95]), 0.28, 0.22, 0.28, 0.9, 0.3, True),
                      F("rect", J([0.45, 0.45, 0.48]), 0.5, 0.07, 0.6, 1.1, 0.0)),
                     J([0.55, 0.55, 0.58]))
    if name == "cafe":
        return _Look(name, J([0.56, 0.38, 0.24]), J([0.36, 0.22, 0.12]), 0.58, (0.08, 14.0, 0.0), (0.12, 6.0),
                     (F("ellipse", J([1.0, 0.85, 0.4]), 0.05, 0.04, 0.1, 0.4, 0.2),
                      F("rect", J([0.12, 0.14, 0.12]), 0.3, 0.2, 0.3, 1.3, 0.5),
                      F("rect", J([0.28, 0.16, 0.08]), 0.9, 0.16, 0.62, 1.8, 0.1)),
                     J([0.45, 0.28, 0.15]))
    if name == "park":
        return _Look(name, J([0.45, 0.65, 0.95]), J([0.25, 0.52, 0.20]), 0.48, (0.0, 1.0, 0.0), (0.06, 5.0),
                     (F("rect", J([0.35, 0.22, 0.12]), 0.04, 0.18, 0.42, 0.55, 0.1),
                      F("ellipse", J([0.12, 0.40, 0.12]), 0.13, 0.12, 0.3, 0.55, 0.1),
                      F("rect", J([0.75, 0.68, 0.50]), 3.0, 0.07, 0.72, 4.0, 0.0)),
                     J([0.50, 0.40, 0.28]))
    if name == "gym":
        return _Look(name, J([0.86, 0.86, 0.80]), J([0.14, 0.14, 0.16]), 0.56, (0.0, 1.0, 0.0), (0.0, 1.0),
                     (F("rect", J([0.80, 0.15, 0.12]), 3.0, 0.05, 0.22, 4.0, 0.0),
                      F("rect", J([0.70, 0.78, 0.82]), 0.35, 0.28, 0.36, 1.0, 0.6),
                      F("rect", J([0.25, 0.25, 0.28]), 0.04, 0.3, 0.45, 0.5, 0.25)),
                     J([0.30, 0.30, 0.33]))
    if name == "street":
        return _Look(name, J([0.45, 0.65, 0.95]), J([0.33, 0.33, 0.35]), 0.5, (0.0, 1.0, 0.0), (0.0, 1.0),
                     (F("rect", J([0.65, 0.45, 0.38]), 0.3, 0.42, 0.29, 0.62, 0.0),
                      F("rect", J([0.55, 0.58, 0.62]), 0.2, 0.3, 0.35, 0.62, 0.31),
                      F("rect", J([0.95, 0.95, 0.90]), 0.09, 0.015, 0.78, 0.22, 0.0),
                      F("rect", J([0.6, 0.6, 0.58]), 3.0, 0.06, 0.53, 4.0, 0.0)),
                     J([0.45, 0.45, 0.45]))
    # store
    return _Look(name, J([0.93, 0.93, 0.90]), J([0.78, 0.78, 0.74]), 0.6, (0.0, 1.0, 0.0), (0.08, 10.0),
                 (F("rect", J([0.55, 0.45, 0.35]), 0.45, 0.42, 0.36, 0.6, 0.0),
                  F("rect", J([0.85, 0.25, 0.20]), 0.4, 0.05, 0.26, 0.6, 0.0),
                  F("rect", J([0.20, 0.45, 0.80]), 0.4, 0.05, 0.38, 0.6, 0.0),
                  F("rect", J([0.95, 0.80, 0.20]), 0.4, 0.05, 0.5, 0.6, 0.0)),
                 J([0.80, 0.80, 0.80]))


def _home_look(rng: np.random.Generator) -> _Look:
    wall = _hsv(rng.random(), rng.uniform(0.12, 0.45), rng.uniform(0.55, 0.92))
    floor = (_hsv(rng.uniform(0.05, 0.11), rng.uniform(0.35, 0.7), rng.uniform(0.3, 0.6))
             if rng.random() < 0.6 else _hsv(rng.random(), rng.uniform(0.0, 0.2), rng.uniform(0.35, 0.8)))
    angle = float(rng.choice([0.0, math.pi / 2, math.pi / 4]))
    period = float(rng.uniform(1.3, 1.7))
    feats = [
        _Feat("rect", np.zeros(3, np.float32), rng.uniform(0.18, 0.3), rng.uniform(0.18, 0.28),
              rng.uniform(0.2, 0.3), period, rng.uniform(0.0, period), True),  # window
        _Feat("rect", _hsv(rng.random(), rng.uniform(0.3, 0.8), rng.uniform(0.2, 0.7)),
              rng.uniform(0.25, 0.45), rng.uniform(0.12, 0.2), rng.uniform(0.5, 0.6),
              period, rng.uniform(0.0, period)),  # sofa / shelf
        _Feat("rect" if rng.random() < 0.5 else "ellipse",
              _hsv(rng.random(), rng.uniform(0.4, 0.9), rng.uniform(0.4, 0.9)),
              rng.uniform(0.08, 0.15), rng.uniform(0.08, 0.14), rng.uniform(0.15, 0.3),
              period, rng.uniform(0.0, period)),  # picture / lamp
    ]
    return _Look("home", wall, floor, float(rng.uniform(0.5, 0.62)),
                 (float(rng.uniform(0.0, 0.14)), float(rng.uniform(4.0, 12.0)), angle),
                 (float(rng.uniform(0.03, 0.12)), float(rng.uniform(5.0, 12.0))),
                 tuple(feats),
                 _hsv(rng.uniform(0.05, 0.12), rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.75)))


def _person_look(rng: np.random.Generator, wardrobe: int) -> _PersonLook:
    return _PersonLook(
        skin=_jitter(rng, _SKINS[rng.integers(len(_SKINS))], 0.02),
        hair=_jitter(rng, _HAIRS[rng.integers(len(_HAIRS))], 0.03),
        pants=_hsv(rng.random(), rng.uniform(0.1, 0.6), rng.uniform(0.15, 0.5)),
        shirts=tuple(_hsv(rng.random(), rng.uniform(0.35, 0.95), rng.uniform(0.35, 0.95))
                     for _ in range(wardrobe)),
        long_sleeves=tuple(bool(rng.random() < 0.5) for _ in range(wardrobe)),
        body_w=float(rng.uniform(0.8, 1.25)),
        body_h=float(rng.uniform(0.85, 1.12)),
        accessory=str(rng.choice(_ACCESSORIES)),
        acc_colour=_hsv(rng.random(), rng.uniform(0.5, 1.0), rng.uniform(0.3, 1.0)),
        step_hz=float(rng.uniform(1.5, 2.2)),
        bob=float(rng.uniform(0.012, 0.035)),
        swing=float(rng.uniform(0.7, 1.3)),
        speed=float(rng.uniform(0.16, 0.3)),
    )


@lru_cache(maxsize=256)
def _bystander(seed: int, b: int) -> _PersonLook:
    return _person_look(_rng(seed, _S_BYSTANDER, b), 1)


@lru_cache(maxsize=64)
def _weather(seed: int, day: int) -> float:
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
def _device(spec: FleetSpec, device: int) -> _Device:
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
    return _Device(device, profile, wearer, home, routine, weights, float(rng.uniform(0.06, 0.15)),
                   household, colleagues, workplace, float(rng.uniform(0.42, 0.52)),
                   float(rng.uniform(0.0, 1.0)))


def _look(spec: FleetSpec, location_id: int) -> _Look:
    if location_id < spec.num_devices:
        return _device(spec, location_id).home
    return _place_look(spec.seed, location_id - spec.num_devices)


# --------------------------------------------------------------------------- rasteriser


_GRID_CACHE: dict[int, np.ndarray] = {}


def _centres(s: int) -> np.ndarray:
    g = _GRID_CACHE.get(s)
    if g is None:
        g = (np.arange(s, dtype=np.float32) + 0.5) / s
        _GRID_CACHE[s] = g
    return g


class _Canvas:
    """Float RGB frames, channel-first [T, 3, S, S] in [0, 1] (channel-first keeps the
    per-pixel broadcasts contiguous); soft-edged (≈1 px) shapes drawn with mask
    arithmetic on the bounding box of the shape over all frames."""

    def __init__(self, T: int, S: int) -> None:
        self.T, self.S = T, S
        self.img = np.empty((T, 3, S, S), np.float32)
        self.c = _centres(S)

    @staticmethod
    def tv(v) -> np.ndarray:
        return np.asarray(v, np.float32)

    @staticmethod
    def _p(v) -> tuple[np.ndarray, float, float]:
        a = np.asarray(v, np.float32)
        if a.ndim == 0:
            f = float(a)
            return a.reshape(1, 1, 1), f, f
        return a.reshape(-1, 1, 1), float(a.min()), float(a.max())

    def _span(self, lo: float, hi: float) -> tuple[int, int]:
        a = max(0, math.floor(lo * self.S) - 1)
        b = min(self.S, math.ceil(hi * self.S) + 1)
        return a, b

    def _blend(self, y0: int, y1: int, x0: int, x1: int, alpha: np.ndarray, colour) -> None:
        reg = self.img[:, :, y0:y1, x0:x1]
        col = np.asarray(colour, np.float32).reshape(1, 3, 1, 1)
        reg += alpha[:, None] * (col - reg)

    def ellipse(self, cx, cy, rx: float, ry: float, colour, opacity: float = 1.0) -> None:
        cx, xl, xh = self._p(cx)
        cy, yl, yh = self._p(cy)
        x0, x1 = self._span(xl - rx, xh + rx)
        y0, y1 = self._span(yl - ry, yh + ry)
        if x0 >= x1 or y0 >= y1:
            return
        dx = (self.c[None, None, x0:x1] - cx) * (1.0 / rx)
        dy = (self.c[None, y0:y1, None] - cy) * (1.0 / ry)
        d = np.sqrt(dx * dx + dy * dy)
        a = _sat((1.0 - d) * (min(rx, ry) * self.S) + 0.5)
        if opacity != 1.0:
            a *= opacity
        self._blend(y0, y1, x0, x1, a, colour)

    def ring(self, cx, cy, r: float, width: float, colour) -> None:
        cx, xl, xh = self._p(cx)
        cy, yl, yh = self._p(cy)
        x0, x1 = self._span(xl - r - width, xh + r + width)
        y0, y1 = self._span(yl - r - width, yh + r + width)
        if x0 >= x1 or y0 >= y1:
            return
        dx = self.c[None, None, x0:x1] - cx
        dy = self.c[None, y0:y1, None] - cy
        d = np.abs(np.sqrt(dx * dx + dy * dy) - r)
        a = _sat((0.5 * width - d) * self.S + 0.5)
        self._blend(y0, y1, x0, x1, a, colour)

    def rect(self, cx, cy, w: float, h: float, colour, opacity: float = 1.0) -> None:
        cx, xl, xh = self._p(cx)
        cy, yl, yh = self._p(cy)
        x0, x1 = self._span(xl - w / 2, xh + w / 2)
        y0, y1 = self._span(yl - h / 2, yh + h / 2)
        if x0 >= x1 or y0 >= y1:
            return
        ax = _sat((0.5 * w - np.abs(self.c[None, None, x0:x1] - cx)) * self.S + 0.5)
        ay = _sat((0.5 * h - np.abs(self.c[None, y0:y1, None] - cy)) * self.S + 0.5)
        a = ax * ay
        if opacity != 1.0:
            a *= opacity
        self._blend(y0, y1, x0, x1, a, colour)

    def segment(self, xa, ya, xb, yb, width: float, colour) -> None:
        xa, xal, xah = self._p(xa)
        ya, yal, yah = self._p(ya)
        xb, xbl, xbh = self._p(xb)
        yb, ybl, ybh = self._p(yb)
        r = 0.5 * width
        x0, x1 = self._span(min(xal, xbl) - r, max(xah, xbh) + r)
        y0, y1 = self._span(min(yal, ybl) - r, max(yah, ybh) + r)
        if x0 >= x1 or y0 >= y1:
            return
        px = self.c[None, None, x0:x1] - xa
        py = self.c[None, y0:y1, None] - ya
        dx = xb - xa
        dy = yb - ya
        inv = 1.0 / (dx * dx + dy * dy + 1e-9)
        u = _sat((px * dx + py * dy) * inv)
        qx = px - u * dx
        qy = py - u * dy
        d = np.sqrt(qx * qx + qy * qy)
        a = _sat((r - d) * self.S + 0.5)
        self._blend(y0, y1, x0, x1, a, colour)


    def capsules(self, caps: list) -> None:
        """Many thick round-capped segments in one vectorised pass, blended in order.
        caps: [(xa, ya, xb, yb, width, colour)], coords scalars or [T]; a circle is a
        zero-length capsule."""
        K, T = len(caps), self.T
        P = np.empty((4, K, T), np.float32)
        r = np.empty(K, np.float32)
        for k, cap in enumerate(caps):
            P[0, k], P[1, k], P[2, k], P[3, k] = cap[0], cap[1], cap[2], cap[3]
            r[k] = 0.5 * cap[4]
        lo = np.minimum(P[0:2], P[2:4]) - r[None, :, None]
        hi = np.maximum(P[0:2], P[2:4]) + r[None, :, None]
        x0, x1 = self._span(float(lo[0].min()), float(hi[0].max()))
        y0, y1 = self._span(float(lo[1].min()), float(hi[1].max()))
        if x0 >= x1 or y0 >= y1:
            return
        xa, ya, xb, yb = (q[:, :, None, None] for q in P)
        px = self.c[None, None, None, x0:x1] - xa
        py = self.c[None, None, y0:y1, None] - ya
        dx = xb - xa
        dy = yb - ya
        inv = 1.0 / (dx * dx + dy * dy + 1e-9)
        u = _sat((px * (dx * inv)) + py * (dy * inv))
        qx = u * dx
        np.subtract(px, qx, out=qx)
        qy = u * dy
        np.subtract(py, qy, out=qy)
        qx *= qx
        qy *= qy
        qx += qy
        a = np.sqrt(qx, out=qx)
        a *= -float(self.S)
        a += (r * self.S + 0.5)[:, None, None, None]
        _sat(a)
        # painter's order in closed form: weight_k = a_k * prod_{j>k} (1 - a_j)
        keep = 1.0 - a[K - 1]  # prod_{j>k} (1 - a_j), built from the top layer down
        for k in range(K - 2, -1, -1):
            ak = a[k]
            ak *= keep
            keep -= ak  # keep * (1 - a_k) == keep - a_k * keep
        cols = np.asarray([cap[5] for cap in caps], np.float32)  # [K, 3]
        h, w = y1 - y0, x1 - x0
        paint = (cols.T @ a.reshape(K, -1)).reshape(3, T, h, w)
        reg = self.img[:, :, y0:y1, x0:x1]
        reg *= keep[:, None]
        reg += paint.transpose(1, 0, 2, 3)


def _sat(a: np.ndarray) -> np.ndarray:
    """Clamp to [0, 1] in place (ufuncs: cheaper than np.clip on small arrays)."""
    np.maximum(a, 0.0, out=a)
    np.minimum(a, 1.0, out=a)
    return a


# --------------------------------------------------------------------------- lighting


def _daylight(hour: float) -> float:
    return max(0.0, math.sin(math.pi * (hour - 6.0) / 14.0)) if 6.0 <= hour <= 20.0 else 0.0


def _sky(day_l: float) -> np.ndarray:
    day = np.array([0.45, 0.65, 0.95], np.float32)
    dusk = np.array([0.85, 0.55, 0.38], np.float32)
    night = np.array([0.05, 0.07, 0.16], np.float32)
    if day_l <= 0.0:
        return night
    if day_l < 0.4:
        f = day_l / 0.4
        return (1 - f) * dusk + f * day if f > 0.5 else (1 - 2 * f) * night + 2 * f * dusk
    return day


def _lighting(kind: str, hour: int, weather: float) -> tuple[float, np.ndarray]:
    dl = _daylight(hour) * weather
    if kind in _OUTDOOR:
        g = 0.3 + 0.7 * dl
        tint = (1.0, 1.0, 1.0) if dl > 0.35 else ((1.08, 0.96, 0.84) if dl > 0 else (1.12, 0.95, 0.72))
    elif kind == "home":
        g = 0.62 + 0.33 * dl
        tint = (1.0, 1.0, 0.98) if dl > 0.3 else (1.12, 0.98, 0.8)
    elif kind == "cafe":
        g, tint = 0.74 + 0.1 * dl, (1.1, 0.97, 0.82)
    else:  # office, gym, store: fluorescent
        g, tint = 0.9 + 0.06 * dl, (0.95, 1.0, 1.07)
    return g, np.array(tint, np.float32)


# --------------------------------------------------------------------------- scene drawing


class _View:
    """World ↔ screen for a camera with per-frame offset (cu, cv) and field of view fov."""

    def __init__(self, cu: np.ndarray, cv: np.ndarray, fov: float) -> None:
        self.cu, self.cv, self.fov = cu.astype(np.float32), cv.astype(np.float32), fov
        self.mu, self.mv = float(cu.mean()), float(cv.mean())

    def sx(self, xw) -> np.ndarray:
        return ((np.asarray(xw, np.float32) - self.cu - 0.5) / self.fov + 0.5).astype(np.float32)

    def sy(self, yw) -> np.ndarray:
        return ((np.asarray(yw, np.float32) - self.cv - 0.5) / self.fov + 0.5).astype(np.float32)

    def wx(self, sx: float) -> float:  # screen x at the mean pose → world x
        return (sx - 0.5) * self.fov + 0.5 + self.mu

    def wy(self, sy: float) -> float:
        return (sy - 0.5) * self.fov + 0.5 + self.mv


def _background(cv: _Canvas, look: _Look, view: _View, dl: float) -> None:
    S, c, fov = cv.S, cv.c, view.fov
    uw = (c[None, :] - 0.5) * fov + 0.5 + view.cu[:, None]  # [T, S] (columns)
    vw = (c[None, :] - 0.5) * fov + 0.5 + view.cv[:, None]  # [T, S] (rows)
    top = _sky(dl) if look.outdoor else look.top
    k = S / fov
    floor_a = _sat((vw - look.horizon) * k + 0.5)  # [T, S] rows
    fa = floor_a[:, None, :, None]  # [T, 1, S, 1]
    if look.outdoor:  # sky brightens toward the horizon
        hz = np.clip(1.0 - (look.horizon - vw) * 1.5, 0.6, 1.0)[:, None, :, None]
        top_c = top[None, :, None, None] * (0.75 + 0.25 * hz) + 0.12 * hz * (1 - hz)
    else:
        top_c = top[None, :, None, None]
    cv.img[...] = top_c + fa * (look.bottom[None, :, None, None] - top_c)
    amp, freq, ang = look.wall_stripe
    if amp > 0:
        ca, sa = math.cos(ang), math.sin(ang)
        pat = np.sign(np.sin((2 * math.pi * freq) * (uw[:, None, :] * ca + vw[:, :, None] * sa)))
        pat *= amp * (1.0 - floor_a)[:, :, None]
        pat += 1.0
        cv.img *= pat[:, None]
    famp, ffreq = look.floor_stripe
    if famp > 0:
        # planks / tiles / lanes: stripes that get denser toward the horizon (perspective)
        inv_depth = np.maximum(vw - look.horizon + 0.05, 0.05)
        pat = np.sign(np.sin((2 * math.pi * ffreq) * (uw[:, None, :] - 0.5) * inv_depth[:, :, None]))
        pat *= famp * floor_a[:, :, None]
        pat += 1.0
        cv.img *= pat[:, None]
    for f in look.feats:
        colour = f.colour
        if f.glow:
            colour = 0.15 * np.array([0.1, 0.12, 0.2], np.float32) + (0.85 * dl + 0.12) * np.array(
                [0.85, 0.92, 1.0], np.float32)
        ylo = f.yc - f.h / 2
        yhi = f.yc + f.h / 2
        y0, y1 = cv._span(float(((ylo - view.cv - 0.5) / fov + 0.5).min()),
                          float(((yhi - view.cv - 0.5) / fov + 0.5).max()))
        if y0 >= y1:
            continue
        du = np.mod(uw - f.phase, f.period) - 0.5 * f.period  # [T, S]
        dv = vw[:, y0:y1] - f.yc
        if f.kind == "rect":
            a = (_sat((0.5 * f.w - np.abs(du)) * k + 0.5)[:, None, :]
                 * _sat((0.5 * f.h - np.abs(dv)) * k + 0.5)[:, :, None])
        else:
            ex = (du / (0.5 * f.w))[:, None, :]
            ey = (dv / (0.5 * f.h))[:, :, None]
            a = _sat((1.0 - np.sqrt(ex * ex + ey * ey)) * (0.5 * min(f.w, f.h) * k) + 0.5)
        cv._blend(y0, y1, 0, S, a, colour)


def _draw_object(cv: _Canvas, kind: str, x, y, s: float, rng: np.random.Generator) -> None:
    """Small object centred at screen (x, y) [T], scale s (1 ≈ nominal size)."""
    x, y = cv.tv(x), cv.tv(y)
    if kind == "cup":
        col = _hsv(rng.random(), rng.uniform(0.3, 0.9), rng.uniform(0.6, 1.0))
        cv.ellipse(x + 0.035 * s, y, 0.018 * s, 0.02 * s, col)
        cv.rect(x, y, 0.055 * s, 0.07 * s, col)
        cv.ellipse(x, y - 0.035 * s, 0.027 * s, 0.01 * s, col * 0.45)
    elif kind == "laptop":
        body = np.full(3, rng.choice([0.15, 0.7]), np.float32)
        cv.rect(x, y + 0.06 * s, 0.26 * s, 0.035 * s, body)
        cv.rect(x, y - 0.03 * s, 0.22 * s, 0.15 * s, body)
        cv.rect(x, y - 0.03 * s, 0.19 * s, 0.12 * s, _hsv(rng.uniform(0.5, 0.65), 0.35, 0.95))
    elif kind == "book":
        col = _hsv(rng.random(), rng.uniform(0.5, 0.9), rng.uniform(0.3, 0.85))
        cv.rect(x, y, 0.16 * s, 0.11 * s, col)
        cv.rect(x, y, 0.012 * s, 0.11 * s, col * 0.5)
        cv.rect(x + 0.04 * s, y, 0.05 * s, 0.08 * s, np.array([0.95, 0.93, 0.85], np.float32), 0.7)
    elif kind == "pan":
        cv.segment(x - 0.07 * s, y, x - 0.16 * s, y + 0.02 * s, 0.02 * s, np.array([0.1, 0.1, 0.1], np.float32))
        cv.ellipse(x, y, 0.085 * s, 0.05 * s, np.array([0.16, 0.16, 0.18], np.float32))
        cv.ellipse(x, y, 0.065 * s, 0.035 * s, np.array([0.55, 0.42, 0.22], np.float32))
    elif kind == "phone":
        cv.rect(x, y, 0.045 * s, 0.08 * s, np.array([0.05, 0.05, 0.06], np.float32))
        cv.rect(x, y, 0.035 * s, 0.06 * s, _hsv(rng.uniform(0.5, 0.7), 0.5, 0.9))
    elif kind == "bag":
        col = _hsv(rng.random(), rng.uniform(0.3, 0.8), rng.uniform(0.25, 0.7))
        cv.ring(x, y - 0.05 * s, 0.03 * s, 0.012 * s, col * 0.6)
        cv.rect(x, y, 0.12 * s, 0.09 * s, col)
    elif kind == "plant":
        cv.rect(x, y + 0.04 * s, 0.06 * s, 0.06 * s, np.array([0.7, 0.38, 0.22], np.float32))
        cv.ellipse(x, y - 0.03 * s, 0.065 * s, 0.07 * s, _hsv(rng.uniform(0.25, 0.38), 0.7, 0.5))
    elif kind == "bike":
        col = _hsv(rng.random(), 0.8, 0.8)
        dark = np.array([0.08, 0.08, 0.08], np.float32)
        cv.ring(x - 0.07 * s, y + 0.03 * s, 0.045 * s, 0.014 * s, dark)
        cv.ring(x + 0.07 * s, y + 0.03 * s, 0.045 * s, 0.014 * s, dark)
        cv.segment(x - 0.07 * s, y + 0.03 * s, x + 0.02 * s, y - 0.03 * s, 0.014 * s, col)
        cv.segment(x + 0.02 * s, y - 0.03 * s, x + 0.07 * s, y + 0.03 * s, 0.014 * s, col)
    else:  # pragma: no cover - OBJECTS is closed
        raise ValueError(f"unknown object kind {kind!r}")


def _figure(cv: _Canvas, j: dict[str, tuple[np.ndarray, np.ndarray]], h: float,
            p: _PersonLook, shirt: int) -> None:
    """A person from joint positions (screen coords, arrays [T]); h = height on screen."""
    bw = p.body_w
    sc, ls = p.shirts[shirt], p.long_sleeves[shirt]
    (hx, hy), (nx, ny), (qx, qy) = j["hip"], j["neck"], j["head"]
    caps: list = []
    for foot in ("footL", "footR"):
        fx, fy = j[foot]
        caps.append((hx, hy, fx, fy, 0.085 * h * bw, p.pants))
    if p.accessory == "bag":
        bx = nx - 0.1 * h * bw
        caps.append((bx, ny + 0.1 * h, bx, hy - 0.04 * h, 0.09 * h, p.acc_colour))
    caps.append((hx, hy, nx, ny + 0.04 * h, 0.21 * h * bw, sc))
    for hand in ("handL", "handR"):
        ax, ay = j[hand]
        sx, sy = nx, ny + 0.05 * h
        if ls:
            caps.append((sx, sy, ax, ay, 0.06 * h * bw, sc))
        else:
            caps.append((sx, sy, ax, ay, 0.05 * h * bw, p.skin))
            caps.append((sx, sy, sx + 0.4 * (ax - sx), sy + 0.4 * (ay - sy), 0.065 * h * bw, sc))
        caps.append((ax, ay, ax, ay, 0.064 * h, p.skin))
    if p.accessory == "watch":
        ax, ay = j["handL"]
        caps.append((ax - 0.015 * h, ay - 0.035 * h, ax + 0.015 * h, ay - 0.035 * h, 0.036 * h, p.acc_colour))
    cv.capsules(caps)
    caps = []  # the head in its own (small) pass: drawn on top, so the order is kept
    if p.accessory == "scarf":
        caps.append((nx - 0.06 * h, ny + 0.03 * h, nx + 0.06 * h, ny + 0.03 * h, 0.05 * h, p.acc_colour))
    caps.append((qx, qy - 0.015 * h, qx, qy - 0.015 * h, 0.155 * h, p.hair))
    caps.append((qx, qy + 0.008 * h, qx, qy + 0.008 * h, 0.134 * h, p.skin))
    if p.accessory == "hat":
        caps.append((qx - 0.09 * h, qy - 0.06 * h, qx + 0.09 * h, qy - 0.06 * h, 0.035 * h, p.acc_colour))
        caps.append((qx - 0.04 * h, qy - 0.09 * h, qx + 0.04 * h, qy - 0.09 * h, 0.06 * h, p.acc_colour))
    cv.capsules(caps)


def _pose(activity: str, x0: float, yf: float, h: float, direction: float, t: np.ndarray,
          p: _PersonLook, rng: np.random.Generator) -> tuple[dict, list]:
    """Third-person joints [T] for an activity; returns (joints, props) where props are
    (kind, x, y, scale) to draw before the figure ("table", "counter", "broom") or objects."""
    T = t.shape[0]
    zero = np.zeros(T, np.float32)
    phi = rng.uniform(0, 2 * math.pi)
    d = direction
    x = zero + x0
    y_hip = zero + (yf - 0.47 * h)
    sway = zero
    props: list = []
    seated = activity in ("eat", "type", "read")
    if activity in ("walk", "run"):
        run = activity == "run"
        f = p.step_hz * (1.45 if run else 1.0)
        ph = 2 * math.pi * f * t + phi
        x = x0 + d * p.speed * (2.6 if run else 1.0) * (t - t.mean())
        amp = 0.13 * h * p.swing * (1.6 if run else 1.0)
        bob = (0.05 if run else 0.025) * h * np.abs(np.sin(ph))
        y_hip = y_hip - bob
        feet = (x + amp * np.sin(ph), x - amp * np.sin(ph))
        feet_y = (yf - (0.06 * h if run else 0.02 * h) * np.maximum(0, np.cos(ph)),
                  yf - (0.06 * h if run else 0.02 * h) * np.maximum(0, -np.cos(ph)))
        hand_y = y_hip - (0.12 * h if run else 0.0)
        hands = ((x - 0.8 * amp * np.sin(ph), hand_y), (x + 0.8 * amp * np.sin(ph), hand_y))
    else:
        feet = (x - 0.06 * h, x + 0.06 * h)
        feet_y = (zero + yf, zero + yf)
        if seated:
            y_hip = zero + (yf - 0.3 * h)
        neck_y = y_hip - 0.32 * h
        front = x + d * 0.22 * h
        if activity == "eat":
            s = 0.5 + 0.5 * np.sin(2 * math.pi * 0.6 * t + phi)
            hands = ((x + d * 0.18 * h, zero + yf - 0.42 * h),
                     (front - d * s * 0.15 * h, yf - 0.42 * h - s * 0.38 * h))
            props += [("table", x0 + d * 0.3 * h, yf - 0.38 * h, h), ("cup", x0 + d * 0.32 * h, yf - 0.45 * h, h)]
        elif activity == "type":
            jit = rng.normal(0, 0.012 * h, (2, T)).astype(np.float32)
            hands = ((front - 0.03 * h, yf - 0.43 * h + jit[0]), (front + 0.03 * h, yf - 0.43 * h + jit[1]))
            props += [("table", x0 + d * 0.3 * h, yf - 0.38 * h, h),
                      ("laptop", x0 + d * 0.32 * h, yf - 0.5 * h, 0.7 * h)]
        elif activity == "read":
            drift = 0.01 * h * np.sin(2 * math.pi * 0.2 * t + phi)
            hands = ((front - 0.04 * h, neck_y + 0.14 * h + drift), (front + 0.04 * h, neck_y + 0.14 * h + drift))
            props += [("book", front, neck_y + 0.12 * h + drift, 0.6 * h)]
        elif activity == "cook":
            ph = 2 * math.pi * 0.9 * t + phi
            hands = ((front - d * 0.02 * h, zero + yf - 0.5 * h),
                     (front + d * 0.08 * h + 0.05 * h * np.cos(ph), yf - 0.53 * h + 0.02 * h * np.sin(ph)))
            props += [("counter", x0 + d * 0.35 * h, yf - 0.45 * h, h), ("pan", front + d * 0.08 * h, yf - 0.5 * h, 0.7 * h)]
        elif activity == "clean":
            ph = 2 * math.pi * 0.75 * t + phi
            x = x0 + 0.05 * h * np.sin(0.5 * ph)
            hx = x + d * 0.12 * h + 0.16 * h * np.sin(ph)
            hands = ((hx - 0.03 * h, yf - 0.45 * h + zero), (hx + 0.03 * h, yf - 0.38 * h + zero))
            props += [("broom", hx, yf - 0.4 * h, h, x + d * 0.25 * h + 0.3 * h * np.sin(ph))]
            feet = (x - 0.06 * h, x + 0.06 * h)
        else:  # phone
            tremor = rng.normal(0, 0.004 * h, T).astype(np.float32)
            hands = ((x - d * 0.1 * h, zero + yf - 0.48 * h), (x + d * 0.07 * h, neck_y - 0.08 * h + tremor))
            props += [("phone", x + d * 0.09 * h, neck_y - 0.1 * h + tremor, 0.6 * h)]
        sway = 0.006 * h * np.sin(2 * math.pi * 0.3 * t + phi)
    neck = (x + sway, y_hip - 0.32 * h)
    head = (x + sway, y_hip - 0.43 * h)
    j = {"hip": (x, y_hip), "neck": neck, "head": head, "footL": (feet[0], feet_y[0]),
         "footR": (feet[1], feet_y[1]), "handL": hands[0], "handR": hands[1]}
    j = {k: (_arr(v[0], T), _arr(v[1], T)) for k, v in j.items()}
    return j, props


def _arr(v, T: int) -> np.ndarray:
    a = np.asarray(v, np.float32)
    return np.broadcast_to(a, (T,)).copy() if a.ndim == 0 else a


def _bystander_joints(x: np.ndarray, yf: float, h: float, walking: bool, t: np.ndarray,
                      p: _PersonLook, phi: float) -> dict:
    T = t.shape[0]
    if walking:
        ph = 2 * math.pi * p.step_hz * t + phi
        amp = 0.12 * h * p.swing * np.sin(ph)
    else:
        amp = np.zeros(T, np.float32)
    y_hip = np.full(T, yf - 0.47 * h, np.float32)
    z = np.full(T, yf, np.float32)
    return {"hip": (x, y_hip), "neck": (x, y_hip - 0.32 * h), "head": (x, y_hip - 0.43 * h),
            "footL": (x + amp - 0.04 * h, z), "footR": (x - amp + 0.04 * h, z),
            "handL": (x - 0.8 * amp - 0.08 * h, y_hip), "handR": (x + 0.8 * amp + 0.08 * h, y_hip)}


# first-person: hand trajectories (screen coords) and camera motion per activity

def _fp_motion(activity: str, p: _PersonLook, t: np.ndarray, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray, list, list, bool]:
    """Returns (cam_u, cam_v, hands, held, desk): hands = [(x[T], y[T])...], held =
    [(kind, x, y, scale)] objects moving with the view, desk = draw a table/counter."""
    T = t.shape[0]
    z = np.zeros(T, np.float32)
    phi = rng.uniform(0, 2 * math.pi)
    direction = 1.0 if rng.random() < 0.5 else -1.0
    cu, cv = z.copy(), z.copy()
    held: list = []
    desk = False
    if activity in ("walk", "run"):
        run = activity == "run"
        f = p.step_hz * (1.45 if run else 1.0)
        ph = 2 * math.pi * f * t + phi
        # walk and run share the look of a single frame (hand layout, bob range, places);
        # they differ in speed and step frequency, i.e. only over frames
        cu = direction * p.speed * (2.6 if run else 1.0) * t + 0.012 * np.sin(0.5 * ph)
        cv = p.bob * rng.uniform(0.8, 1.6) * np.sin(ph) - 0.02
        sw = 0.08 * p.swing * rng.uniform(0.7, 1.3) * np.sin(0.5 * ph)
        hx, hy = rng.uniform(0.18, 0.28), rng.uniform(0.92, 1.0)
        hands = [(hx + z, hy + sw), (1.0 - hx + z, hy - sw)]
    elif activity == "eat":
        s = 0.5 + 0.5 * np.sin(2 * math.pi * 0.55 * t + phi)
        cv = 0.12 + 0.02 * s
        hands = [(0.22 + z, 0.86 + z), (0.56 - 0.06 * s, 0.74 + 0.42 * s)]
        desk = True
    elif activity == "type":
        jit = rng.normal(0, 0.013, (4, T)).astype(np.float32)
        cv = 0.1 + z
        hands = [(0.39 + jit[0], 0.84 + jit[1]), (0.61 + jit[2], 0.84 + jit[3])]
        desk = True
    elif activity == "cook":
        ph = 2 * math.pi * 0.9 * t + phi
        cv = 0.08 + z
        hands = [(0.24 + z, 0.78 + z), (0.53 + 0.07 * np.cos(ph), 0.72 + 0.045 * np.sin(ph))]
        desk = True
    elif activity == "read":
        drift = 0.01 * np.sin(2 * math.pi * 0.15 * t + phi)
        cv = 0.12 + z
        hands = [(0.35 + z, 0.76 + drift), (0.65 + z, 0.76 + drift)]
        held.append(("book", 0.5 + z, 0.7 + drift, 1.8))
        if rng.random() < 0.5:  # page turn: right hand sweeps left mid-clip
            k = int(rng.integers(0, max(1, T - 3)))
            sweep = np.clip((np.arange(T) - k) / 3.0, 0, 1).astype(np.float32)
            hands[1] = (0.65 - 0.25 * sweep * (1 - sweep) * 4, hands[1][1] - 0.04 * sweep * (1 - sweep) * 4)
    elif activity == "clean":
        ph = 2 * math.pi * 0.75 * t + phi
        cv = 0.18 + z
        cu = 0.04 * np.sin(ph)
        hx = 0.5 + 0.22 * np.sin(ph)
        hands = [(hx - 0.05, 0.84 + 0.03 * np.cos(ph)), (hx + 0.05, 0.92 + 0.03 * np.cos(ph))]
        held.append(("broom", hx, 0.84 + z, 1.0, 0.5 + 0.38 * np.sin(ph)))
    else:  # phone: hand raised to the (right) side of the head
        walk = np.cumsum(rng.normal(0, 0.006, (2, T)), axis=1).astype(np.float32)
        cu, cv = walk[0], walk[1] - 0.02
        trem = rng.normal(0, 0.006, T).astype(np.float32)
        hands = [(0.88 + trem, 0.36 + trem)]
        held.append(("phone", 0.86 + trem, 0.3 + trem, 1.6))
    return cu.astype(np.float32), cv.astype(np.float32), hands, held, desk


# --------------------------------------------------------------------------- clip planning + rendering


@dataclass(frozen=True)
class _Plan:
    hour: int
    location_id: int
    activity: str
    bystanders: tuple[int, ...]
    objects: tuple[str, ...]  # distractors (world-fixed) + activity object


def _plan(spec: FleetSpec, dev: _Device, rng: np.random.Generator) -> _Plan:
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
    if act in _ACTIVITY_OBJECT and _ACTIVITY_OBJECT[act] not in objs:
        objs.append(_ACTIVITY_OBJECT[act])
    return _Plan(hour, loc, act, tuple(sorted(bys)),
                 tuple(sorted(set(objs), key=OBJECTS.index)))


def _render(spec: FleetSpec, dev: _Device, shirt: int, weather: float, plan: _Plan,
            rng: np.random.Generator) -> np.ndarray:
    T, S = spec.frames, spec.image_size
    t = (np.arange(T, dtype=np.float32) / FPS)
    cv = _Canvas(T, S)
    look = _look(spec, plan.location_id)
    dl = _daylight(plan.hour) * weather
    first = dev.profile != "home-cam"
    p = dev.wearer
    act = plan.activity
    # the activity's own object is drawn by the activity (held, on the desk, a prop)
    distract = [o for o in plan.objects if o != _ACTIVITY_OBJECT.get(act)]

    if first:
        fov = 1.0 if dev.profile == "glasses" else 1.35
        cu, cvv, hands, held, desk = _fp_motion(act, p, t, rng)
        jit = rng.normal(0, 0.35 / S * (2.0 if dev.profile == "bodycam" else 1.0), (2, T)).astype(np.float32)
        u0 = float(rng.uniform(0, 8))
        tilt = 0.02 if dev.profile == "bodycam" else 0.0
        view = _View(cu + u0 + jit[0], cvv + tilt + jit[1], fov)
    else:
        fov = 1.0
        jit = rng.normal(0, 0.15 / S, (2, T)).astype(np.float32)
        view = _View(dev.cam_x + jit[0], jit[1] + (0.5 - dev.cam_horizon) * 0.3, fov)
    _background(cv, look, view, dl)

    # world-fixed distractor objects and bystanders
    floor_y = look.horizon + 0.08
    for o in distract:
        if first:
            xw = view.wx(float(rng.uniform(0.12, 0.88)))
            yw = (floor_y + float(rng.uniform(0.0, 0.22)) if o not in _TABLE_OBJECTS or not desk
                  else view.wy(float(rng.uniform(0.56, 0.64))))
            s = (1.0 if o in ("bike", "plant", "bag") else 0.8) / fov
        else:
            xw = float(rng.uniform(0.08, 0.92)) + view.mu
            yw = floor_y + float(rng.uniform(0.05, 0.3))
            s = 0.8
        _draw_object(cv, o, view.sx(xw), view.sy(yw), s, rng)
    for b in plan.bystanders:
        bp = _bystander(spec.seed, b)
        depth = float(rng.uniform(0.45, 0.85)) if first else float(rng.uniform(0.7, 0.95))
        h = 0.6 * depth * bp.body_h / fov
        walking = rng.random() < 0.5
        vx = float(rng.choice([-1.0, 1.0])) * bp.speed * 0.8 * walking
        xw0 = view.wx(float(rng.uniform(0.1, 0.9)))
        yfw = look.horizon + 0.3 * depth * (1.2 if not first else 1.0)
        xs = view.sx(xw0 + vx * (t - t.mean()))
        j = _bystander_joints(xs, 0.0, h, walking, t, bp, float(rng.uniform(0, 2 * math.pi)))
        ys = view.sy(yfw)
        j = {k: (v[0], (v[1] + ys).astype(np.float32)) for k, v in j.items()}
        _figure(cv, j, h, bp, 0)

    if first:
        if desk:
            top_w = view.wy(0.62 if act != "cook" else 0.6)
            sy_top = view.sy(top_w)
            h_desk = 1.5 - float(sy_top.min())
            cv.rect(0.5, sy_top + h_desk / 2, 2.0, h_desk, look.surface)
            if act == "eat":
                cv.ellipse(view.sx(view.wx(0.57)), view.sy(view.wy(0.76)), 0.12, 0.06,
                           np.array([0.93, 0.93, 0.9], np.float32))
                _draw_object(cv, "cup", view.sx(view.wx(0.3)), view.sy(view.wy(0.72)), 1.4, rng)
            elif act == "type":
                _draw_object(cv, "laptop", view.sx(view.wx(0.5)), view.sy(view.wy(0.62)), 1.7, rng)
            elif act == "cook":
                _draw_object(cv, "pan", view.sx(view.wx(0.52)), view.sy(view.wy(0.73)), 1.6, rng)
        for it in held:
            if it[0] == "broom":
                _, hx, hy, _s, bx = it
                cv.segment(hx, hy, bx, 0.5, 0.025, np.array([0.45, 0.3, 0.15], np.float32))
                cv.rect(bx, 0.5, 0.12, 0.04, np.array([0.8, 0.7, 0.3], np.float32))
        # forearms from below the frame, sleeves, hands, accessory
        sc, ls = p.shirts[shirt], p.long_sleeves[shirt]
        arm_w = 0.1 * p.body_w
        caps: list = []
        for k, (hx, hy) in enumerate(hands):
            side = -1.0 if hx.mean() < 0.5 else 1.0
            ex, ey = hx + side * 0.12, hy + 0.55
            caps.append((ex, ey, hx, hy + 0.02, arm_w, sc if ls else p.skin))
            if not ls:
                caps.append((ex, ey, ex + 0.6 * (hx - ex), ey + 0.6 * (hy - ey), arm_w * 1.15, sc))
            if p.accessory == "watch" and k == 0:
                caps.append((hx + side * 0.025, hy + 0.06, hx + side * 0.035, hy + 0.09, 0.06 * p.body_w,
                             p.acc_colour))
            caps.append((hx, hy, hx, hy, 0.1 * p.body_w, p.skin))
        cv.capsules(caps)
        for it in held:
            if it[0] != "broom":
                kind_, hx, hy, s_ = it
                _draw_object(cv, kind_, hx, hy, s_, rng)
        if p.accessory == "hat":  # cap brim at the top edge
            cv.ellipse(0.5, -0.02, 0.7, 0.07, p.acc_colour)
        elif p.accessory == "scarf":
            cv.ellipse(0.5, 1.07, 0.22, 0.1, p.acc_colour)
        elif p.accessory == "bag":  # shoulder strap
            cv.segment(0.05, 0.75, 0.2, 1.1, 0.06, p.acc_colour)
    else:
        h = 0.58 * p.body_h
        yf = 0.86 + float(rng.uniform(-0.03, 0.03))
        x0 = float(rng.uniform(0.3, 0.7))
        direction = 1.0 if rng.random() < 0.5 else -1.0
        if act == "walk":
            x0 = float(np.clip(x0, 0.25 + p.speed * 0.6, 0.75 - p.speed * 0.6))
        j, props = _pose(act, x0, yf, h, direction, t, p, rng)
        j = {k: (view.sx(v[0] + view.mu), view.sy(v[1] + view.mv)) for k, v in j.items()}
        post = []
        for pr in props:
            kind_ = pr[0]
            if kind_ in ("table", "counter"):
                _, px, py, ph_ = pr
                w = 0.34 * ph_
                col = look.surface if kind_ == "table" else look.surface * 0.8
                cv.rect(view.sx(px + view.mu), view.sy(py + view.mv), w, 0.04 * ph_, col)
                cv.rect(view.sx(px + view.mu), view.sy(py + 0.2 * ph_ + view.mv), 0.04 * ph_, 0.4 * ph_, col * 0.7)
                if kind_ == "counter":
                    cv.rect(view.sx(px + view.mu), view.sy(py + 0.22 * ph_ + view.mv), w, 0.42 * ph_, col * 0.85)
            else:  # broom and objects go in front of the figure
                post.append(pr)
        _figure(cv, j, h, p, shirt)
        for pr in post:
            if pr[0] == "broom":
                _, hx, hy, ph_, bx = pr
                cv.segment(view.sx(hx + view.mu), view.sy(hy + view.mv), view.sx(bx + view.mu),
                           view.sy(yf + view.mv), 0.02, np.array([0.45, 0.3, 0.15], np.float32))
                cv.rect(view.sx(bx + view.mu), view.sy(yf + view.mv), 0.1, 0.03,
                        np.array([0.8, 0.7, 0.3], np.float32))
            else:
                kind_, px, py, s_ = pr
                _draw_object(cv, kind_, view.sx(np.asarray(px) + view.mu), view.sy(np.asarray(py) + view.mv),
                             float(s_) * 1.6, rng)

    # profile overlays
    if dev.profile == "home-cam":  # timestamp box
        cv.rect(0.2, 0.05, 0.32, 0.06, np.array([0.95, 0.95, 0.95], np.float32), 0.85)
    elif dev.profile == "bodycam":  # REC dot
        cv.ellipse(0.92, 0.07, 0.035, 0.035, np.array([0.95, 0.1, 0.1], np.float32))

    # lighting: hour/location gain and tint, per-clip exposure, drift; vignette; noise
    g, tint = _lighting(look.kind, plan.hour, weather)
    g *= float(np.exp(rng.normal(0, 0.06)))
    tint = tint * np.exp(rng.normal(0, 0.025, 3)).astype(np.float32)
    drift = 1.0 + float(rng.normal(0, 0.015)) * (np.arange(T, dtype=np.float32) - (T - 1) / 2)
    img = cv.img
    img *= ((255.0 * g * drift)[:, None] * tint[None, :])[:, :, None, None]
    img *= _vignette(S, {"glasses": 0.12, "bodycam": 0.4, "home-cam": 0.22}[dev.profile])
    # sensor noise, darker → noisier: triangular (sum of two uniform bytes: mean 255,
    # std ≈ 104.5), scaled to std `sigma` of full range
    sigma = 0.012 + 0.03 * max(0.0, 1.0 - g)
    npx = img.size
    raw = np.frombuffer(rng.bytes(2 * npx), np.uint8)
    noise = (raw[:npx].astype(np.int16) + raw[npx:]).reshape(img.shape)
    coef = np.float32(255.0 * sigma / 104.5)
    img += noise * coef
    img += np.float32(0.5) - 255.0 * coef
    np.clip(img, 0.0, 255.0, out=img)
    return np.ascontiguousarray(img.astype(np.uint8).transpose(0, 2, 3, 1))


@lru_cache(maxsize=16)
def _vignette(S: int, strength: float) -> np.ndarray:
    c = _centres(S)
    r2 = (c[:, None] - 0.5) ** 2 + (c[None, :] - 0.5) ** 2
    return (1.0 - strength * r2).astype(np.float32)[None, None]


# --------------------------------------------------------------------------- public API


def _check_days(spec: FleetSpec, days: Sequence[int] | None) -> list[int]:
    if days is None:
        return list(range(spec.days))
    out = []
    for d in days:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or not 0 <= d < spec.days:
            raise ValueError(f"days must hold ints in 0..{spec.days - 1} (FleetSpec.days={spec.days}), got {d!r}")
        out.append(int(d))
    return out


@lru_cache(maxsize=4096)
def _shirt(seed: int, device: int, day: int, wardrobe: int) -> int:
    """Today's shirt: one draw per (device, day) from the wearer's wardrobe."""
    return int(_rng(seed, _S_DAY, device, day).integers(wardrobe))


def _meta(spec: FleetSpec, dev: _Device, day: int, idx: int, plan: _Plan) -> ClipMeta:
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
        indoor=_kind(spec, plan.location_id) not in _OUTDOOR,
    )


def _clip(spec: FleetSpec, dev: _Device, day: int, idx: int, render: bool = True) -> Clip | ClipMeta:
    # the plan (metadata) is the first thing drawn from the clip's stream, so the
    # metadata-only path gives exactly the metadata of the rendered clip
    rng = _rng(spec.seed, _S_CLIP, dev.index, day, idx)
    plan = _plan(spec, dev, rng)
    meta = _meta(spec, dev, day, idx, plan)
    if not render:
        return meta
    shirt = _shirt(spec.seed, dev.index, day, len(dev.wearer.shirts))
    frames = _render(spec, dev, shirt, _weather(spec.seed, day), plan, rng)
    frames.setflags(write=False)
    return Clip(frames, meta)


def device_clips(spec: FleetSpec, device: int, days: Sequence[int] | None = None) -> list[Clip]:
    """All clips of one device for the given days (default: every day), day-major."""
    device = _check_device(spec, device)
    dev = _device(spec, device)
    return [_clip(spec, dev, d, i) for d in _check_days(spec, days)  # type: ignore[misc]
            for i in range(spec.clips_per_day)]


def device_metas(spec: FleetSpec, device: int, days: Sequence[int] | None = None) -> list[ClipMeta]:
    """The metadata of :func:`device_clips` (same order, identical values) without
    rendering pixels: cheap labels for routine / linkage statistics."""
    device = _check_device(spec, device)
    dev = _device(spec, device)
    return [_clip(spec, dev, d, i, render=False) for d in _check_days(spec, days)  # type: ignore[misc]
            for i in range(spec.clips_per_day)]


def stack_clips(clips: Sequence[Clip]) -> ClipBatch:
    """Stack clips of one shape into a ClipBatch (labels int64; unknown = -1)."""
    clips = list(clips)
    if not clips:
        raise ValueError("stack_clips: got no clips; pass at least one Clip")
    shape = clips[0].frames.shape
    for c in clips:
        if c.frames.shape != shape or c.frames.dtype != np.uint8:
            raise ValueError(
                f"stack_clips: clip {c.meta.clip_id} has frames {c.frames.dtype}{c.frames.shape}, "
                f"expected uint8{shape}; load all clips with the same frames/image_size"
            )
    x = np.stack([c.frames for c in clips])
    ms = tuple(c.meta for c in clips)
    lab = {
        "activity": [m.activity_id for m in ms],
        "wearer": [m.wearer for m in ms],
        "device": [m.device for m in ms],
        "location": [m.location_id for m in ms],
        "hour": [m.hour for m in ms],
        "day": [m.day for m in ms],
        "indoor": [int(m.indoor) for m in ms],
    }
    labels = {k: np.asarray(v, np.int64) for k, v in lab.items()}
    objs = np.zeros((len(ms), len(OBJECTS)), np.int64)
    for i, m in enumerate(ms):
        for o in m.objects:
            objs[i, _OBJ[o]] = 1
    labels["objects"] = objs
    return ClipBatch(x, labels, ms)


def fleet_batch(spec: FleetSpec, devices: Sequence[int], days: Sequence[int]) -> ClipBatch:
    """Clips of the given devices and days, device-major, as one batch."""
    clips: list[Clip] = []
    for d in devices:
        clips.extend(device_clips(spec, d, days))
    if not clips:
        raise ValueError("fleet_batch: no clips; pass at least one device and one day")
    return stack_clips(clips)
