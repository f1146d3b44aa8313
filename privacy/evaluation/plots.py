"""The evaluation report's four plots, each built as a figure and then saved.

Each ``*_figure`` function returns the matplotlib figure it drew, so tests can measure
it (where the labels, the legend and the lines are, in pixels); each ``plot_*`` saves
that figure as a PNG and closes it. The figures are made to be read, not only produced:

* nothing is printed over anything else: point labels go to free spots
  (:mod:`privacy.evaluation.label_layout`), legends sit outside the axes;
* every label lies inside the figure (row labels of long representation names included);
* a reference line is drawn where a reader needs one to judge a number: chance for the
  identity attack and for the utility task (1 / number of classes).

Agg backend, fixed sizes, no timestamps in the metadata: the same results give the same
bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from privacy.evaluation.label_layout import LabelledPoint, freeze_layout, place_labels
from privacy.evaluation.tasks import SYNTHETIC, Tasks, identity_word

PNG_META = {"Software": None}
#: PL(k) panel titles of the synthetic attributes (any other attribute: "NAME PL(k)")
_PANEL_TITLES = {"location": "location (home/haunts) PL(k)", "routine": "routine (hour pattern) PL(k)"}
#: line styles cycled after the 20 colours of tab20 (a run can compare more curves)
_STYLES = ("-", "--", ":", "-.")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.hashsalt": "fedmsr", "font.size": 8})
    return plt


def _save(fig: Any, path: Path) -> None:
    fig.savefig(path, metadata=PNG_META)
    _pyplot().close(fig)


def _color(i: int) -> tuple[Any, str]:
    """The i-th curve's colour and line style: 20 distinct colours, then new styles."""
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    return cmap(i % 20), _STYLES[(i // 20) % len(_STYLES)]


def frontier_figure(rows: Sequence[dict], tasks: Tasks = SYNTHETIC,
                    utility_classes: int | None = None) -> Any:
    """Identity (single clip) vs the utility probe, one named point per representation;
    chance lines for both axes (the utility's at 1 / ``utility_classes``)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5.5), dpi=100, layout="constrained")
    util = f"{tasks.utility}_linear"
    for i, r in enumerate(rows):
        marker = "o" if r["family"] == "encoder" else "s"
        ax.scatter(r["identity_single"], r[util], marker=marker, color=_color(i)[0], zorder=3)
    if rows:
        ax.axvline(rows[0]["identity_chance"], color="grey", ls=":", lw=1, label="identity chance")
    if utility_classes:
        ax.axhline(1.0 / utility_classes, color="tab:red", ls="--", lw=1,
                   label=f"{tasks.utility} chance (1/{utility_classes})")
    ax.margins(0.12)
    ax.set_xlabel(f"{identity_word(tasks)} inference, single clip (accuracy; lower = more private)")
    ax.set_ylabel(f"{tasks.utility} probe accuracy (higher = more useful)")
    ax.set_title("privacy-utility frontier (o encoder, s pixel baseline)")
    if ax.get_legend_handles_labels()[0]:
        fig.legend(loc="outside lower center", ncol=2, fontsize=7)
    freeze_layout(fig)
    place_labels(ax, [LabelledPoint(r["identity_single"], r[util], r["name"]) for r in rows])
    return fig


def plot_frontier(rows: Sequence[dict], path: Path, tasks: Tasks = SYNTHETIC,
                  utility_classes: int | None = None) -> None:
    _save(frontier_figure(rows, tasks, utility_classes), path)


def pareto_figure(ops: dict | None, tasks: Tasks = SYNTHETIC) -> Any:
    """Activity vs identity at k_max for every release; the frontier joined by a line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 6.5), dpi=100, layout="constrained")
    points = [p for p in (ops or {}).get("points", []) if p["identity_kmax"] is not None]
    for i, p in enumerate(points):
        marker = ("^" if p["randomized"] else "o") if not p["unlinkable"] else ("v" if p["randomized"] else "D")
        ax.scatter(p["identity_kmax"], p["activity_acc"], marker=marker, s=18, color=_color(i)[0],
                   zorder=3)
    front = [p for name in (ops or {}).get("pareto", []) for p in points if p["name"] == name]
    if front:
        front.sort(key=lambda p: p["identity_kmax"])
        ax.plot([p["identity_kmax"] for p in front], [p["activity_acc"] for p in front],
                color="black", lw=1, label="Pareto frontier")
        ax.axvline(front[0]["identity_chance"], color="grey", ls=":", lw=1, label="chance")
        fig.legend(loc="outside lower center", ncol=2, fontsize=7)
    ax.margins(0.12)
    ax.set_xlabel(f"{identity_word(tasks)} at k_max (accumulated; lower = more private)")
    ax.set_ylabel(f"{tasks.utility} accuracy (higher = more useful)")
    ax.set_title("releases: o linkable, D unlinkable, ^/v with randomized release")
    freeze_layout(fig)
    place_labels(ax, [LabelledPoint(p["identity_kmax"], p["activity_acc"], p["name"]) for p in points],
                 fontsize=5.5)
    return fig


def plot_pareto(ops: dict | None, path: Path, tasks: Tasks = SYNTHETIC) -> None:
    _save(pareto_figure(ops, tasks), path)


def pl_curves_figure(reps: Sequence[dict], tasks: Tasks = SYNTHETIC) -> Any:
    """PL(k) per private attribute and the linkage AUC(k); one legend, below the panels."""
    plt = _pyplot()
    panels = [("identity_best", f"{identity_word(tasks)} PL(k)"),
              *((a, _PANEL_TITLES.get(a, f"{a} PL(k)")) for a in tasks.private if a != tasks.identity),
              ("linkage_auc", "cross-day linkage AUC(k)")]
    rows_n = (len(panels) + 1) // 2
    legend_rows = (len(reps) + 2) // 3
    fig, axes = plt.subplots(rows_n, 2, figsize=(9, 3.3 * rows_n + 0.16 * legend_rows + 0.3),
                             dpi=100, squeeze=False, layout="constrained")
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    for ax, (key, title) in zip(axes.ravel(), panels, strict=False):
        for i, rep in enumerate(reps):
            c = rep["pl"]["curves"].get(key, {})
            if c:
                ks = sorted(int(k) for k in c)
                color, style = _color(i)
                ax.plot(ks, [c.get(str(k), c.get(k)) for k in ks], marker="o", ms=3, color=color,
                        ls=style, label=rep["name"])
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k representations of one device")
        ax.set_title(title)
        chance = 0.5 if key == "linkage_auc" else (reps[0]["pl"]["device_chance"] if reps else 0)
        ax.axhline(chance, color="grey", ls=":", lw=1)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=6)
    freeze_layout(fig)
    return fig


def plot_pl_curves(reps: Sequence[dict], path: Path, tasks: Tasks = SYNTHETIC) -> None:
    _save(pl_curves_figure(reps, tasks), path)


def montage(rows: Sequence[np.ndarray], pad: int = 2) -> np.ndarray:
    """One image: row i holds the images of ``rows[i]`` ([n_i, H, W, 3]) side by side."""
    h, w = rows[0].shape[1:3]
    n = max(len(r) for r in rows)
    out = np.ones((len(rows) * (h + pad) + pad, n * (w + pad) + pad, 3), np.float32)
    for i, imgs in enumerate(rows):
        for j, img in enumerate(imgs):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[y:y + h, x:x + w] = np.clip(img, 0, 1)
    return out


def reconstructions_figure(truth: np.ndarray, rows: Sequence[tuple[str, np.ndarray]]) -> Any:
    """Originals (first row) next to each attacker's reconstructions of the same clips; the
    figure is made wide enough for the longest row label."""
    plt = _pyplot()
    labelled = [("original", truth), *rows]
    grid = montage([imgs for _, imgs in labelled])
    h = truth.shape[1] + 2
    image_h = 0.55 * len(labelled)
    image_w = image_h * grid.shape[1] / grid.shape[0]  # the axes has the grid's aspect exactly
    fig = plt.figure(figsize=(image_w + 1.0, image_h + 0.5), dpi=100)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.imshow(grid, interpolation="nearest")
    ax.set_yticks([2 + h * i + h / 2 - 1 for i in range(len(labelled))])
    ax.set_yticklabels([label.replace("\n", " ") for label, _ in labelled], fontsize=6)
    ax.set_xticks([])
    ax.set_title("temporal mean frame: original and reconstructions", fontsize=7)
    renderer = fig.canvas.get_renderer()
    label_w = max(t.get_window_extent(renderer).width for t in ax.get_yticklabels()) / fig.dpi
    left, right, bottom, top = label_w + 0.15, 0.1, 0.1, 0.3  # inches around the image
    width, height = left + image_w + right, bottom + image_h + top
    fig.set_size_inches(width, height)
    ax.set_position((left / width, bottom / height, image_w / width, image_h / height))
    fig.canvas.draw()
    return fig


def plot_reconstructions(truth: np.ndarray, rows: Sequence[tuple[str, np.ndarray]], path: Path) -> None:
    _save(reconstructions_figure(truth, rows), path)
