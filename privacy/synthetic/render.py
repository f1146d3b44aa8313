"""The renderer: one planned clip of one device, as uint8 frames [T, H, W, 3].

It draws in the order a camera would see: the place's background under the hour's
light, world-fixed distractor objects and bystanders, then the wearer (hands and held
objects for first-person profiles, the whole figure for a home-cam), the profile's
overlay, then exposure, vignette and sensor noise. Every random draw comes from the
clip's own stream, after the draws that planned it (``world.plan_clip``), so a clip's
pixels depend only on ``(spec, device, day, idx)``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from privacy.synthetic.people import (
    bystander_joints,
    draw_figure,
    first_person_motion,
    third_person_pose,
)
from privacy.synthetic.raster import Canvas, centres, sat
from privacy.synthetic.world import (
    ACTIVITY_OBJECT,
    FPS,
    OUTDOOR,
    TABLE_OBJECTS,
    ClipPlan,
    DeviceWorld,
    FleetSpec,
    Look,
    bystander_look,
    hsv,
    location_look,
)

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
    if kind in OUTDOOR:
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


def _background(cv: Canvas, look: Look, view: _View, dl: float) -> None:
    S, c, fov = cv.S, cv.c, view.fov
    uw = (c[None, :] - 0.5) * fov + 0.5 + view.cu[:, None]  # [T, S] (columns)
    vw = (c[None, :] - 0.5) * fov + 0.5 + view.cv[:, None]  # [T, S] (rows)
    top = _sky(dl) if look.outdoor else look.top
    k = S / fov
    floor_a = sat((vw - look.horizon) * k + 0.5)  # [T, S] rows
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
        y0, y1 = cv.span(float(((ylo - view.cv - 0.5) / fov + 0.5).min()),
                          float(((yhi - view.cv - 0.5) / fov + 0.5).max()))
        if y0 >= y1:
            continue
        du = np.mod(uw - f.phase, f.period) - 0.5 * f.period  # [T, S]
        dv = vw[:, y0:y1] - f.yc
        if f.kind == "rect":
            a = (sat((0.5 * f.w - np.abs(du)) * k + 0.5)[:, None, :]
                 * sat((0.5 * f.h - np.abs(dv)) * k + 0.5)[:, :, None])
        else:
            ex = (du / (0.5 * f.w))[:, None, :]
            ey = (dv / (0.5 * f.h))[:, :, None]
            a = sat((1.0 - np.sqrt(ex * ex + ey * ey)) * (0.5 * min(f.w, f.h) * k) + 0.5)
        cv.blend(y0, y1, 0, S, a, colour)


def _draw_object(cv: Canvas, kind: str, x, y, s: float, rng: np.random.Generator) -> None:
    """Small object centred at screen (x, y) [T], scale s (1 ≈ nominal size)."""
    x, y = cv.tv(x), cv.tv(y)
    if kind == "cup":
        col = hsv(rng.random(), rng.uniform(0.3, 0.9), rng.uniform(0.6, 1.0))
        cv.ellipse(x + 0.035 * s, y, 0.018 * s, 0.02 * s, col)
        cv.rect(x, y, 0.055 * s, 0.07 * s, col)
        cv.ellipse(x, y - 0.035 * s, 0.027 * s, 0.01 * s, col * 0.45)
    elif kind == "laptop":
        body = np.full(3, rng.choice([0.15, 0.7]), np.float32)
        cv.rect(x, y + 0.06 * s, 0.26 * s, 0.035 * s, body)
        cv.rect(x, y - 0.03 * s, 0.22 * s, 0.15 * s, body)
        cv.rect(x, y - 0.03 * s, 0.19 * s, 0.12 * s, hsv(rng.uniform(0.5, 0.65), 0.35, 0.95))
    elif kind == "book":
        col = hsv(rng.random(), rng.uniform(0.5, 0.9), rng.uniform(0.3, 0.85))
        cv.rect(x, y, 0.16 * s, 0.11 * s, col)
        cv.rect(x, y, 0.012 * s, 0.11 * s, col * 0.5)
        cv.rect(x + 0.04 * s, y, 0.05 * s, 0.08 * s, np.array([0.95, 0.93, 0.85], np.float32), 0.7)
    elif kind == "pan":
        cv.segment(x - 0.07 * s, y, x - 0.16 * s, y + 0.02 * s, 0.02 * s, np.array([0.1, 0.1, 0.1], np.float32))
        cv.ellipse(x, y, 0.085 * s, 0.05 * s, np.array([0.16, 0.16, 0.18], np.float32))
        cv.ellipse(x, y, 0.065 * s, 0.035 * s, np.array([0.55, 0.42, 0.22], np.float32))
    elif kind == "phone":
        cv.rect(x, y, 0.045 * s, 0.08 * s, np.array([0.05, 0.05, 0.06], np.float32))
        cv.rect(x, y, 0.035 * s, 0.06 * s, hsv(rng.uniform(0.5, 0.7), 0.5, 0.9))
    elif kind == "bag":
        col = hsv(rng.random(), rng.uniform(0.3, 0.8), rng.uniform(0.25, 0.7))
        cv.ring(x, y - 0.05 * s, 0.03 * s, 0.012 * s, col * 0.6)
        cv.rect(x, y, 0.12 * s, 0.09 * s, col)
    elif kind == "plant":
        cv.rect(x, y + 0.04 * s, 0.06 * s, 0.06 * s, np.array([0.7, 0.38, 0.22], np.float32))
        cv.ellipse(x, y - 0.03 * s, 0.065 * s, 0.07 * s, hsv(rng.uniform(0.25, 0.38), 0.7, 0.5))
    elif kind == "bike":
        col = hsv(rng.random(), 0.8, 0.8)
        dark = np.array([0.08, 0.08, 0.08], np.float32)
        cv.ring(x - 0.07 * s, y + 0.03 * s, 0.045 * s, 0.014 * s, dark)
        cv.ring(x + 0.07 * s, y + 0.03 * s, 0.045 * s, 0.014 * s, dark)
        cv.segment(x - 0.07 * s, y + 0.03 * s, x + 0.02 * s, y - 0.03 * s, 0.014 * s, col)
        cv.segment(x + 0.02 * s, y - 0.03 * s, x + 0.07 * s, y + 0.03 * s, 0.014 * s, col)
    else:  # pragma: no cover - OBJECTS is closed
        raise ValueError(f"unknown object kind {kind!r}")


# --------------------------------------------------------------------------- a clip


def render_frames(spec: FleetSpec, dev: DeviceWorld, shirt: int, weather: float, plan: ClipPlan,
                  rng: np.random.Generator) -> np.ndarray:
    T, S = spec.frames, spec.image_size
    t = (np.arange(T, dtype=np.float32) / FPS)
    cv = Canvas(T, S)
    look = location_look(spec, plan.location_id)
    dl = _daylight(plan.hour) * weather
    first = dev.profile != "home-cam"
    p = dev.wearer
    act = plan.activity
    # the activity's own object is drawn by the activity (held, on the desk, a prop)
    distract = [o for o in plan.objects if o != ACTIVITY_OBJECT.get(act)]

    if first:
        fov = 1.0 if dev.profile == "glasses" else 1.35
        cu, cvv, hands, held, desk = first_person_motion(act, p, t, rng)
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
            yw = (floor_y + float(rng.uniform(0.0, 0.22)) if o not in TABLE_OBJECTS or not desk
                  else view.wy(float(rng.uniform(0.56, 0.64))))
            s = (1.0 if o in ("bike", "plant", "bag") else 0.8) / fov
        else:
            xw = float(rng.uniform(0.08, 0.92)) + view.mu
            yw = floor_y + float(rng.uniform(0.05, 0.3))
            s = 0.8
        _draw_object(cv, o, view.sx(xw), view.sy(yw), s, rng)
    for b in plan.bystanders:
        bp = bystander_look(spec.seed, b)
        depth = float(rng.uniform(0.45, 0.85)) if first else float(rng.uniform(0.7, 0.95))
        h = 0.6 * depth * bp.body_h / fov
        walking = rng.random() < 0.5
        vx = float(rng.choice([-1.0, 1.0])) * bp.speed * 0.8 * walking
        xw0 = view.wx(float(rng.uniform(0.1, 0.9)))
        yfw = look.horizon + 0.3 * depth * (1.2 if not first else 1.0)
        xs = view.sx(xw0 + vx * (t - t.mean()))
        j = bystander_joints(xs, 0.0, h, walking, t, bp, float(rng.uniform(0, 2 * math.pi)))
        ys = view.sy(yfw)
        j = {k: (v[0], (v[1] + ys).astype(np.float32)) for k, v in j.items()}
        draw_figure(cv, j, h, bp, 0)

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
        j, props = third_person_pose(act, x0, yf, h, direction, t, p, rng)
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
        draw_figure(cv, j, h, p, shirt)
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
    c = centres(S)
    r2 = (c[:, None] - 0.5) ** 2 + (c[None, :] - 0.5) ** 2
    return (1.0 - strength * r2).astype(np.float32)[None, None]
