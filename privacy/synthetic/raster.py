"""The rasteriser: a float canvas of T frames and the soft-edged shapes drawn on it.

Every primitive takes its position either as a scalar or as one value per frame ([T]),
so a moving shape is drawn for the whole clip in one vectorised pass over its bounding
box; edges are antialiased over about one pixel so that sub-pixel motion still changes
the pixels (motion is what separates walking from running). It knows nothing about the
world: ``render`` decides what to draw and where.
"""

from __future__ import annotations

import math

import numpy as np

_GRID_CACHE: dict[int, np.ndarray] = {}


def centres(s: int) -> np.ndarray:
    g = _GRID_CACHE.get(s)
    if g is None:
        g = (np.arange(s, dtype=np.float32) + 0.5) / s
        _GRID_CACHE[s] = g
    return g


class Canvas:
    """Float RGB frames, channel-first [T, 3, S, S] in [0, 1] (channel-first keeps the
    per-pixel broadcasts contiguous); soft-edged (≈1 px) shapes drawn with mask
    arithmetic on the bounding box of the shape over all frames."""

    def __init__(self, T: int, S: int) -> None:
        self.T, self.S = T, S
        self.img = np.empty((T, 3, S, S), np.float32)
        self.c = centres(S)

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

    def span(self, lo: float, hi: float) -> tuple[int, int]:
        a = max(0, math.floor(lo * self.S) - 1)
        b = min(self.S, math.ceil(hi * self.S) + 1)
        return a, b

    def blend(self, y0: int, y1: int, x0: int, x1: int, alpha: np.ndarray, colour) -> None:
        reg = self.img[:, :, y0:y1, x0:x1]
        col = np.asarray(colour, np.float32).reshape(1, 3, 1, 1)
        reg += alpha[:, None] * (col - reg)

    def ellipse(self, cx, cy, rx: float, ry: float, colour, opacity: float = 1.0) -> None:
        cx, xl, xh = self._p(cx)
        cy, yl, yh = self._p(cy)
        x0, x1 = self.span(xl - rx, xh + rx)
        y0, y1 = self.span(yl - ry, yh + ry)
        if x0 >= x1 or y0 >= y1:
            return
        dx = (self.c[None, None, x0:x1] - cx) * (1.0 / rx)
        dy = (self.c[None, y0:y1, None] - cy) * (1.0 / ry)
        d = np.sqrt(dx * dx + dy * dy)
        a = sat((1.0 - d) * (min(rx, ry) * self.S) + 0.5)
        if opacity != 1.0:
            a *= opacity
        self.blend(y0, y1, x0, x1, a, colour)

    def ring(self, cx, cy, r: float, width: float, colour) -> None:
        cx, xl, xh = self._p(cx)
        cy, yl, yh = self._p(cy)
        x0, x1 = self.span(xl - r - width, xh + r + width)
        y0, y1 = self.span(yl - r - width, yh + r + width)
        if x0 >= x1 or y0 >= y1:
            return
        dx = self.c[None, None, x0:x1] - cx
        dy = self.c[None, y0:y1, None] - cy
        d = np.abs(np.sqrt(dx * dx + dy * dy) - r)
        a = sat((0.5 * width - d) * self.S + 0.5)
        self.blend(y0, y1, x0, x1, a, colour)

    def rect(self, cx, cy, w: float, h: float, colour, opacity: float = 1.0) -> None:
        cx, xl, xh = self._p(cx)
        cy, yl, yh = self._p(cy)
        x0, x1 = self.span(xl - w / 2, xh + w / 2)
        y0, y1 = self.span(yl - h / 2, yh + h / 2)
        if x0 >= x1 or y0 >= y1:
            return
        ax = sat((0.5 * w - np.abs(self.c[None, None, x0:x1] - cx)) * self.S + 0.5)
        ay = sat((0.5 * h - np.abs(self.c[None, y0:y1, None] - cy)) * self.S + 0.5)
        a = ax * ay
        if opacity != 1.0:
            a *= opacity
        self.blend(y0, y1, x0, x1, a, colour)

    def segment(self, xa, ya, xb, yb, width: float, colour) -> None:
        xa, xal, xah = self._p(xa)
        ya, yal, yah = self._p(ya)
        xb, xbl, xbh = self._p(xb)
        yb, ybl, ybh = self._p(yb)
        r = 0.5 * width
        x0, x1 = self.span(min(xal, xbl) - r, max(xah, xbh) + r)
        y0, y1 = self.span(min(yal, ybl) - r, max(yah, ybh) + r)
        if x0 >= x1 or y0 >= y1:
            return
        px = self.c[None, None, x0:x1] - xa
        py = self.c[None, y0:y1, None] - ya
        dx = xb - xa
        dy = yb - ya
        inv = 1.0 / (dx * dx + dy * dy + 1e-9)
        u = sat((px * dx + py * dy) * inv)
        qx = px - u * dx
        qy = py - u * dy
        d = np.sqrt(qx * qx + qy * qy)
        a = sat((r - d) * self.S + 0.5)
        self.blend(y0, y1, x0, x1, a, colour)


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
        x0, x1 = self.span(float(lo[0].min()), float(hi[0].max()))
        y0, y1 = self.span(float(lo[1].min()), float(hi[1].max()))
        if x0 >= x1 or y0 >= y1:
            return
        xa, ya, xb, yb = (q[:, :, None, None] for q in P)
        px = self.c[None, None, None, x0:x1] - xa
        py = self.c[None, None, y0:y1, None] - ya
        dx = xb - xa
        dy = yb - ya
        inv = 1.0 / (dx * dx + dy * dy + 1e-9)
        u = sat((px * (dx * inv)) + py * (dy * inv))
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
        sat(a)
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


def sat(a: np.ndarray) -> np.ndarray:
    """Clamp to [0, 1] in place (ufuncs: cheaper than np.clip on small arrays)."""
    np.maximum(a, 0.0, out=a)
    np.minimum(a, 1.0, out=a)
    return a
