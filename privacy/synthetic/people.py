"""People in a clip: how an activity moves a body, and how a body is drawn.

Activities differ in motion, not in a single frame (walking and running share one
frame's look), so this module is where the labels become learnable: third-person poses
for the home-cam wearer and for bystanders, and for first-person devices the hands and
the camera motion the wearer's activity causes. Positions are screen coordinates, one
value per frame.
"""

from __future__ import annotations

import math

import numpy as np

from privacy.synthetic.raster import Canvas
from privacy.synthetic.world import PersonLook

#: A screen trajectory, (x[T], y[T]). Annotated where a branch assigns it: NumPy's stubs
#: type a float32 array plus a Python float as "some float array", so the first
#: assignment would otherwise fix a narrower type than the later branches produce.
_XY = tuple[np.ndarray, np.ndarray]


def draw_figure(cv: Canvas, j: dict[str, tuple[np.ndarray, np.ndarray]], h: float,
                p: PersonLook, shirt: int) -> None:
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


def third_person_pose(activity: str, x0: float, yf: float, h: float, direction: float,
                      t: np.ndarray, p: PersonLook, rng: np.random.Generator) -> tuple[dict, list]:
    """Third-person joints [T] for an activity; returns (joints, props) where props are
    (kind, x, y, scale) to draw before the figure ("table", "counter", "broom") or objects."""
    T: int = t.shape[0]
    zero = np.zeros(T, np.float32)
    phi = rng.uniform(0, 2 * math.pi)
    d = direction
    x: np.ndarray = zero + x0
    y_hip: np.ndarray = zero + (yf - 0.47 * h)
    sway: np.ndarray = zero
    feet: _XY
    feet_y: _XY
    hands: tuple[_XY, _XY]
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


def bystander_joints(x: np.ndarray, yf: float, h: float, walking: bool, t: np.ndarray,
                     p: PersonLook, phi: float) -> dict:
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

def first_person_motion(activity: str, p: PersonLook, t: np.ndarray, rng: np.random.Generator
                        ) -> tuple[np.ndarray, np.ndarray, list, list, bool]:
    """Returns (cam_u, cam_v, hands, held, desk): hands = [(x[T], y[T])...], held =
    [(kind, x, y, scale)] objects moving with the view, desk = draw a table/counter."""
    T: int = t.shape[0]
    z = np.zeros(T, np.float32)
    phi = rng.uniform(0, 2 * math.pi)
    direction = 1.0 if rng.random() < 0.5 else -1.0
    cu: np.ndarray = z.copy()
    cv: np.ndarray = z.copy()
    hands: list[_XY]
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
        grip_x = 0.5 + 0.22 * np.sin(ph)
        hands = [(grip_x - 0.05, 0.84 + 0.03 * np.cos(ph)),
                 (grip_x + 0.05, 0.92 + 0.03 * np.cos(ph))]
        held.append(("broom", grip_x, 0.84 + z, 1.0, 0.5 + 0.38 * np.sin(ph)))
    else:  # phone: hand raised to the (right) side of the head
        walk = np.cumsum(rng.normal(0, 0.006, (2, T)), axis=1).astype(np.float32)
        cu, cv = walk[0], walk[1] - 0.02
        trem = rng.normal(0, 0.006, T).astype(np.float32)
        hands = [(0.88 + trem, 0.36 + trem)]
        held.append(("phone", 0.86 + trem, 0.3 + trem, 1.6))
    return cu.astype(np.float32), cv.astype(np.float32), hands, held, desk
