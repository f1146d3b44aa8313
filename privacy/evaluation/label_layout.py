"""Point labels on a scatter plot that neither overlap each other nor cover a marker.

The evaluation's scatter plots put a dozen to forty named points on one axes, several of
them at (nearly) the same place: blur and pixelation keep about the same identity and
activity, every randomized release of a small run sits at chance. Fixed offsets then
print the names on top of each other. :func:`place_labels` gives each label the first
free spot among candidates at growing distances around its point, in the drawn figure's
own pixel geometry (matplotlib's renderer measures each text), and draws a thin leader
line to labels pushed away from their point. Points drawn at the same pixel share one
label, their names one per line. Deterministic: same points, same places, same bytes.

Call it after the figure's layout is final (see :func:`freeze_layout`): the positions are
measured in pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: distances (points) from the marker at which a label is tried, nearest first
_RINGS = (3.0, 9.0, 16.0, 26.0, 38.0, 52.0, 70.0, 90.0, 115.0, 145.0)
#: directions tried on each ring: (dx, dy, horizontal alignment, vertical alignment)
_SIDES = ((1, 1, "left", "bottom"), (1, -1, "left", "top"), (-1, 1, "right", "bottom"),
          (-1, -1, "right", "top"), (0, 1, "center", "bottom"), (0, -1, "center", "top"),
          (1, 0, "left", "center"), (-1, 0, "right", "center"))
#: labels placed farther (points) from their marker get a leader line back to it
LEADER_PT = 9.0
#: half the side (pixels) of the square kept free around every marker
MARKER_PX = 4.0
#: pixels two points may be apart and still share one label
SAME_PX = 2.0


@dataclass(frozen=True)
class LabelledPoint:
    x: float
    y: float
    name: str


def freeze_layout(fig: Any) -> None:
    """Run the figure's layout engine once and keep the result, so that pixel positions
    measured afterwards are the ones saved."""
    fig.canvas.draw()
    fig.set_layout_engine("none")


def _group(ax: Any, points: Sequence[LabelledPoint]
           ) -> list[tuple[tuple[float, float], tuple[float, float], str]]:
    """Points that land on the same pixel (within SAME_PX) share one label:
    (pixel position, data position of the first, the names one per line)."""
    groups: list[tuple[tuple[float, float], tuple[float, float], list[str]]] = []
    for p in points:
        px, py = (float(v) for v in ax.transData.transform((p.x, p.y)))
        for (gx, gy), _, names in groups:
            if abs(gx - px) <= SAME_PX and abs(gy - py) <= SAME_PX:
                names.append(p.name)
                break
        else:
            groups.append(((px, py), (p.x, p.y), [p.name]))
    return [(pixel, xy, "\n".join(names)) for pixel, xy, names in groups]


def _overlap(a: Any, b: Any) -> float:
    """Area (pixels²) two boxes share."""
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


def _candidates() -> list[tuple[float, float, str, str]]:
    return [(dx * ring, dy * ring, ha, va) for ring in _RINGS for dx, dy, ha, va in _SIDES]


def place_labels(ax: Any, points: Sequence[LabelledPoint], fontsize: float = 7.0) -> list[Any]:
    """Annotate every point (or group of coincident points) without overlaps; returns the
    annotations. A label that finds no free spot takes the least-covered candidate."""
    from matplotlib.transforms import Bbox

    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    groups = _group(ax, points)
    taken = [Bbox.from_extents(x - MARKER_PX, y - MARKER_PX, x + MARKER_PX, y + MARKER_PX)
             for (x, y), _, _ in groups]
    labels = []
    for _, xy, text in groups:
        best: tuple[float, tuple[float, float, str, str], Any] | None = None
        for dx, dy, ha, va in _candidates():
            ann = _annotate(ax, text, xy, (dx, dy, ha, va), fontsize, leader=False)
            box = ann.get_window_extent(renderer)
            ann.remove()
            outside = box.width * box.height - _overlap(box, frame)
            cost = outside + sum(_overlap(box, t) for t in taken)
            if best is None or cost < best[0]:
                best = (cost, (dx, dy, ha, va), box)
            if cost == 0.0:
                break
        assert best is not None
        _, where, box = best
        far = max(abs(where[0]), abs(where[1])) > LEADER_PT
        labels.append(_annotate(ax, text, xy, where, fontsize, leader=far))
        taken.append(box)
    return labels


def _annotate(ax: Any, text: str, xy: tuple[float, float], where: tuple[float, float, str, str],
              fontsize: float, leader: bool) -> Any:
    """One label at offset ``where`` (points, alignment) from ``xy``; ``leader``: a thin grey
    line back to the point (the label was pushed away from it)."""
    dx, dy, ha, va = where
    arrow = {"arrowstyle": "-", "color": "0.6", "lw": 0.5, "shrinkA": 0, "shrinkB": 3}
    ann = ax.annotate(text, xy, xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                      ha=ha, va=va, linespacing=1.0, arrowprops=arrow if leader else None)
    ann.set_in_layout(False)
    return ann
