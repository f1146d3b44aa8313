"""The report's plots are readable: measured in the drawn figures' own pixels.

Inputs mirror a small `fedmsr eval` (the same names, and points as close together as a
tiny run puts them: pixelation and pixel noise on one pixel, blur next to them, four
randomized releases at chance); no evaluation runs here, so the file takes seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.text import Text

from privacy.evaluation.plots import (
    frontier_figure,
    pareto_figure,
    pl_curves_figure,
    plot_frontier,
    reconstructions_figure,
)
from privacy.evaluation.tasks import SYNTHETIC

#: (name, family, identity_single, activity_linear): the tiny run's frontier, where the
#: labels used to overlap
POINTS = [
    ("raw pixels", "pixels", 0.917, 0.500), ("blur", "pixels", 0.861, 0.452),
    ("pixelation", "pixels", 0.875, 0.458), ("pixel noise", "pixels", 0.875, 0.458),
    ("non-private (beta=0)", "encoder", 0.500, 0.167), ("MSR beta=0.01", "encoder", 0.500, 0.167),
    ("MSR beta=0.1", "encoder", 0.417, 0.125), ("MSR beta=0.01 + DP-SGD", "encoder", 0.417, 0.167),
    ("MSR beta=0.01 + invariant W=0.03", "encoder", 0.583, 0.208),
    *((f"{base} + release sigma=1", "encoder", 0.292, 0.083)
      for base in ("non-private (beta=0)", "MSR beta=0.01", "MSR beta=0.1",
                   "MSR beta=0.01 + invariant W=0.03")),
]
ROWS = [{"name": n, "family": f, "identity_single": x, "activity_linear": y,
         "identity_chance": 1 / 3} for n, f, x, y in POINTS]


def _renderer(fig):
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def _boxes_overlap(a, b) -> bool:
    return min(a.x1, b.x1) > max(a.x0, b.x0) and min(a.y1, b.y1) > max(a.y0, b.y0)


def _point_labels(ax):
    """The annotations naming points (their text alone, without leader lines)."""
    return [t for t in ax.texts if t.get_text()]


def test_frontier_labels_do_not_overlap_and_every_name_is_shown():
    fig = frontier_figure(ROWS, SYNTHETIC, utility_classes=8)
    renderer = _renderer(fig)
    ax = fig.axes[0]
    labels = _point_labels(ax)
    shown = [name for t in labels for name in t.get_text().split("\n")]
    assert sorted(shown) == sorted(n for n, *_ in POINTS)
    boxes = [Text.get_window_extent(t, renderer) for t in labels]
    for i, a in enumerate(boxes):
        for j, b in enumerate(boxes[:i]):
            assert not _boxes_overlap(a, b), (labels[i].get_text(), labels[j].get_text())
    # blur and pixelation: separate labels, neither covering the other's marker
    blur = next(b for t, b in zip(labels, boxes, strict=True) if t.get_text() == "blur")
    for name in ("pixelation", "raw pixels"):
        row = next(r for r in ROWS if r["name"] == name)
        x, y = ax.transData.transform((row["identity_single"], row["activity_linear"]))
        assert not blur.contains(x, y), name
    frame = fig.bbox
    assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1
               for b in boxes)


def test_frontier_draws_the_utility_chance_line_at_one_over_the_classes():
    fig = frontier_figure(ROWS, SYNTHETIC, utility_classes=8)
    ax = fig.axes[0]
    dashed = [line for line in ax.lines if line.get_linestyle() == "--"]
    assert len(dashed) == 1
    assert np.allclose(dashed[0].get_ydata(), 1 / 8)
    assert dashed[0].get_label() == "activity chance (1/8)"
    legend_texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "activity chance (1/8)" in legend_texts and "identity chance" in legend_texts
    without = frontier_figure(ROWS, SYNTHETIC, utility_classes=None)
    assert not [line for line in without.axes[0].lines if line.get_linestyle() == "--"]


def _reps(n: int) -> list[dict]:
    """n representations with PL curves that fill every panel (values in the middle of
    the axes, where an inside legend sat)."""
    rng = np.random.default_rng(0)
    keys = ("identity_best", "location", "routine", "linkage_auc")
    return [{"name": f"{name} #{i}", "pl": {"device_chance": 1 / 3, "curves": {
        key: {str(k): float(v) for k, v in zip((1, 2, 4, 8), rng.uniform(0.3, 1.0, 4), strict=True)}
        for key in keys}}} for i, name in enumerate(["MSR beta=0.01 + invariant W=0.03 + release sigma=1"] * n)]


def test_pl_curves_legend_covers_no_data_point():
    fig = pl_curves_figure(_reps(13), SYNTHETIC)
    renderer = _renderer(fig)
    assert len(fig.legends) == 1
    legend = fig.legends[0].get_window_extent(renderer)
    assert len(fig.legends[0].get_texts()) == 13
    points = 0
    for ax in fig.axes:
        assert not _boxes_overlap(legend, ax.get_window_extent(renderer))
        for line in ax.lines:
            for x, y in ax.transData.transform(np.c_[line.get_xdata(), line.get_ydata()]):
                assert not legend.contains(x, y)
                points += 1
    assert points >= 13 * 4 * 4
    assert legend.x0 >= 0 and legend.y0 >= 0 and legend.x1 <= fig.bbox.x1


def test_pl_curves_tell_more_than_ten_representations_apart():
    fig = pl_curves_figure(_reps(13), SYNTHETIC)
    styles = {(line.get_color(), line.get_linestyle()) for line in fig.axes[0].lines
              if line.get_label().endswith(tuple(f"#{i}" for i in range(13)))}
    assert len(styles) == 13


def test_reconstruction_row_labels_lie_inside_the_figure():
    truth = np.random.default_rng(1).uniform(0, 1, (6, 32, 32, 3)).astype(np.float32)
    names = ["MSR beta=0.01 + invariant W=0.03 + release sigma=1 (decoder)",
             "gradient inversion: secure_sum (round 1 (initial model))", "blur (direct)"]
    fig = reconstructions_figure(truth, [(n, truth[:k]) for n, k in zip(names, (6, 2, 6), strict=True)])
    renderer = _renderer(fig)
    ax = fig.axes[0]
    labels = ax.get_yticklabels()
    assert [t.get_text() for t in labels] == ["original", *names]
    image = ax.get_window_extent(renderer)
    for t in labels:
        box = t.get_window_extent(renderer)
        assert box.x0 >= 0 and box.x1 <= image.x0, t.get_text()
        assert fig.bbox.y0 <= box.y0 and box.y1 <= fig.bbox.y1
    title = ax.title.get_window_extent(renderer)
    assert title.y1 <= fig.bbox.y1 and title.x0 >= 0 and title.x1 <= fig.bbox.x1


def test_pareto_labels_do_not_overlap():
    points = [{"name": f"{n}{suffix}", "identity_kmax": x + (0.02 if suffix else 0.0),
               "activity_acc": y, "identity_chance": 1 / 3, "randomized": "sigma" in n,
               "unlinkable": bool(suffix)} for n, _, x, y in POINTS for suffix in ("", " + unlinkable")]
    fig = pareto_figure({"points": points, "pareto": [points[0]["name"]]}, SYNTHETIC)
    renderer = _renderer(fig)
    boxes = [Text.get_window_extent(t, renderer) for t in _point_labels(fig.axes[0])]
    overlaps = sum(_boxes_overlap(a, b) for i, a in enumerate(boxes) for b in boxes[:i])
    assert overlaps == 0


def test_same_results_same_bytes(tmp_path: Path):
    plot_frontier(ROWS, tmp_path / "a.png", SYNTHETIC, 8)
    plot_frontier(ROWS, tmp_path / "b.png", SYNTHETIC, 8)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")
