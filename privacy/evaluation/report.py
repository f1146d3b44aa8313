"""The evaluation report: one table (Markdown + CSV + JSON) and PNG plots.

Files written into the output folder:

* ``metrics.json``      every number (except wall-clock timings), deterministic for a seed;
* ``timings.json``      latency per clip (wall clock; the only non-deterministic figures);
* ``table.csv``         one row per representation, the headline columns;
* ``report.md``         the table, PL(k) / gains, gradient inversion, SE, operating point;
* ``frontier.png``      privacy-utility frontier (identity inference vs activity accuracy,
                        with both chance levels);
* ``pl_curves.png``     PL(k) for identity / location / routine and linkage AUC(k);
* ``reconstructions.png`` originals next to each attacker's reconstructions;
* ``pareto.png``        every release (linkable / unlinkable, with or without randomized
                        release): activity vs identity at k_max, and the Pareto frontier.

The plots are drawn by :mod:`privacy.evaluation.plots` (same results, same bytes).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from privacy.evaluation.plots import plot_frontier, plot_pareto, plot_pl_curves, plot_reconstructions
from privacy.evaluation.tasks import SYNTHETIC, Tasks, identity_word



def columns(tasks: Tasks = SYNTHETIC) -> tuple[str, ...]:
    """The table's columns: the utility task's probes, the unseen tasks' linear probes, the
    identity attribute's single-clip attack (as ``identity_*``), the other attributes'."""
    return (
        "name", "family", "beta", "dp_sgd", "kl_bits",
        f"{tasks.utility}_linear", f"{tasks.utility}_mlp",
        *(f"{t}_linear" for t in tasks.unseen), *(f"{t}_auc_linear" for t in tasks.multilabel),
        "identity_single", "identity_chance",
        *(f"{a}_single" for a in tasks.private if a != tasks.identity),
        "identity_pl_kmax", "kmax", "identity_gain_kmax", "linkage_auc_kmax",
        "rr_psnr", "rr_ssim", "rr_attack",
    )



def _last(curve: dict) -> tuple[int | None, float | None]:
    if not curve:
        return None, None
    k = max(int(x) for x in curve)
    return k, curve[k] if k in curve else curve[str(k)]


def table_row(row: dict, tasks: Tasks = SYNTHETIC) -> dict:
    pl, dtp, rr = row["pl"], row["dtp"], row["rr"]
    kmax, ident = _last(pl["curves"]["identity_best"])
    _, gain = _last(pl["gain"]["identity_best"])
    _, link = _last(pl["curves"].get("linkage_auc", {}))
    out = {"name": row["name"], "family": row["family"], "beta": row.get("beta"),
           "dp_sgd": row.get("dp_sgd"), "kl_bits": row.get("kl_bits")}
    out.update({c: dtp.get(c) for c in columns(tasks) if c.endswith(("_linear", "_mlp"))})
    out.update({
        "identity_single": pl["single"][tasks.identity]["best"],
        "identity_chance": pl["single"][tasks.identity]["chance"],
        **{f"{a}_single": pl["single"][a]["best"] for a in tasks.private if a != tasks.identity},
        "identity_pl_kmax": ident, "kmax": kmax, "identity_gain_kmax": gain,
        "linkage_auc_kmax": link,
        "rr_psnr": rr["best"]["psnr"], "rr_ssim": rr["best"]["ssim"], "rr_attack": rr["best"]["attack"],
    })
    return out


def _column_note(tasks: Tasks) -> str:
    if tasks == SYNTHETIC:
        return ("Columns: activity / indoor = probe accuracy (indoor and objects are tasks no encoder "
                "was trained for); identity/location/routine_single = best single-clip attack accuracy; "
                "identity_pl_kmax = PL(k) at the largest k measured, identity_gain_kmax = PL(k) - PL(1); "
                "rr_* = best reconstruction attack (PSNR dB / SSIM of the temporal mean frame).")
    others = [a for a in tasks.private if a != tasks.identity]
    return (f"Columns: {tasks.utility}_* = probe accuracy on the utility label; identity_* = "
            f"best single-clip attack accuracy on {tasks.identity!r}"
            + (f", {' / '.join(others)}_single on those labels" if others else "")
            + "; identity_pl_kmax = device re-identification PL(k) at the largest k measured "
            "(best of the identity fusion and set attacks), identity_gain_kmax = PL(k) - PL(1); "
            "rr_* = best reconstruction attack (PSNR dB / SSIM of the temporal mean frame).")


def _fmt(v: object) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3f}"
    return str(v)


def _clean(obj: object) -> object:
    """JSON-ready: drop private ``_`` keys (arrays for plots), numpy -> Python, round floats."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        if math.isnan(f):
            return None
        return ("inf" if f > 0 else "-inf") if math.isinf(f) else round(f, 6)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def markdown(results: dict, rows: Sequence[dict], timings: dict, tasks: Tasks = SYNTHETIC) -> str:
    cols = columns(tasks)
    out = [f"# fedmsr evaluation ({results['settings']['scale']}, seed {results['settings']['seed']})", ""]
    s = results["settings"]
    out += [f"Data: {s['data']}. Encoders: {s['training']}.", ""]
    out += ["## Privacy-utility table", "",
            "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in rows]
    out += ["", _column_note(tasks), ""]
    out += ["## PL(k): accumulated over k representations of one device", ""]
    for rep in results["representations"]:
        curves = rep["pl"]["curves"]
        ks = sorted({int(k) for c in curves.values() for k in c})
        out += [f"### {rep['name']}", "", "| attack | " + " | ".join(f"k={k}" for k in ks) + " |",
                "|---|" + "---|" * len(ks)]
        for name, c in curves.items():
            out.append(f"| {name} | " + " | ".join(_fmt(c.get(str(k), c.get(k))) for k in ks) + " |")
        out.append("")
    gi = results.get("gradient_inversion")
    if gi:
        dp = gi.get("dp", {})
        out += ["## Gradient inversion (one device's single-clip update)", "",
                (f"DP-SGD: sigma {dp.get('noise_multiplier')}, C {dp.get('clip_norm')}, batch 1; "
                "secure_sum: the sum of several devices' plain updates."), "",
                "| model attacked | update | PSNR | SSIM |", "|---|---|---|---|"]
        for model, cases in gi.items():
            if model == "dp" or not isinstance(cases, dict):
                continue
            out += [f"| {model} | {k} | {_fmt(v['psnr'])} | {_fmt(v['ssim'])} |"
                    for k, v in cases.items() if isinstance(v, dict) and "psnr" in v]
        out.append("")
    ref = results.get("references")
    if ref:
        out += ["## References", "",
                (f"* {identity_word(tasks)} inferred from the true {tasks.utility} label alone: "
                 f"{_fmt(ref['identity_from_activity'])} (chance {_fmt(ref['identity_chance'])}): the floor "
                 f"for any encoder that keeps {tasks.utility};"),
                (f"* PSNR of answering the attacker's mean frame (no information about the clip): "
                f"{_fmt(ref['prior_psnr'])} dB."), ""]
    eff = results.get("efficiency", {})
    if eff:
        out += ["## System efficiency", "", "| figure | value |", "|---|---|"]
        out += [f"| {k} | {_fmt(v)} |" for k, v in {**eff, **timings}.items()]
        out.append("")
    if results.get("real_clips"):
        out += ["## Reconstruction on the given clips", "", "| representation | PSNR | SSIM |", "|---|---|---|"]
        out += [f"| {k} | {_fmt(v['psnr'])} | {_fmt(v['ssim'])} |" for k, v in results["real_clips"].items()]
        out.append("")
    out += operating_points_section(results.get("operating_points"), tasks)
    return "\n".join(out) + "\n"


def operating_points_section(ops: dict | None, tasks: Tasks) -> list[str]:
    """The releases as operating points, the Pareto frontier and the targets."""
    out = ["## Operating points: every release", ""]
    if not ops:
        return [*out, "not measured", ""]
    t = ops["targets"]
    out += [(f"Targets: {tasks.utility} >= {t['activity_fraction']:.0%} of beta = 0's, "
             f"{identity_word(tasks)} at k = 1 <= chance + {t['identity_k1_over_chance']:.2f}, at "
             f"k_max <= chance + {t['identity_kmax_over_chance']:.2f}, linkage AUC at k_max <= "
             f"{t['linkage_auc']:.2f}, reconstruction PSNR <= blur's. Unlinkable releases: the "
             "attacker links the shuffled vectors itself before it accumulates. epsilon: one "
             f"device's {ops.get('epsilon_window_clips')} attacked releases composed (PLD, delta "
             f"{ops.get('delta', 0):g})."), ""]
    floor = ops.get("identity_floor")
    if floor:
        out += [(f"Identity floor at the {tasks.utility} target ({floor['activity']:.3f}): "
                 f"{floor['identity_k1']:.3f} from the {tasks.utility} label alone, right at that "
                 "rate: a release that meets the utility target cannot be below it for this "
                 "attack, so an identity target under it is out of reach on this benchmark."), ""]
    out += [f"Met by: {', '.join(ops['met_by']) or 'none'}."
            + (f" Nearest: {ops['nearest']['name']}." if ops.get("nearest") and not ops["met_by"] else ""),
            f"Pareto frontier ({tasks.utility} vs identity at k_max): {', '.join(ops['pareto'])}.", ""]
    cols = ("name", "activity_acc", "activity_ref", "identity_k1", "identity_kmax", "kmax",
            "identity_chance", "linkage_auc_kmax", "psnr", "psnr_blur", "epsilon_per_device",
            "identity_via_activity", "activity_bound")
    out += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(_fmt(p[c]) for c in cols) + " |" for p in ops["points"]]
    out += ["", (f"identity_via_activity: {identity_word(tasks)} from the {tasks.utility} "
                 "predicted from the release alone; any release that keeps the utility keeps this "
                 "much. activity_bound: the highest accuracy any classifier can reach from a "
                 "randomized release (Fano's inequality over the Gaussian channel's capacity per "
                 "clip)."), ""]
    return out


# ------------------------------------------------------------------ everything


def write_report(results: dict, timings: dict, out_dir: Path, *, truth: np.ndarray,
                 recon_rows: Sequence[tuple[str, np.ndarray]],
                 tasks: Tasks = SYNTHETIC) -> list[Path]:
    """Write every report file into ``out_dir`` (which must exist); returns the paths."""
    clean = cast(dict[str, Any], _clean(results))
    rows = [table_row(r, tasks) for r in clean["representations"]]
    cols = columns(tasks)
    files = {
        "metrics.json": json.dumps(clean, indent=2, sort_keys=True) + "\n",
        "timings.json": json.dumps(_clean(timings), indent=2, sort_keys=True) + "\n",
        "report.md": markdown(clean, rows, cast(dict[str, Any], _clean(timings)), tasks),
    }
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    writer.writerows([{c: _fmt(r[c]) if isinstance(r[c], float) else r[c] for c in cols} for r in rows])
    files["table.csv"] = buf.getvalue()
    paths = []
    for name, text in files.items():
        (out_dir / name).write_text(text)
        paths.append(out_dir / name)
    plot_frontier(rows, out_dir / "frontier.png", tasks, clean["settings"].get("utility_classes"))
    plot_pl_curves(clean["representations"], out_dir / "pl_curves.png", tasks)
    plot_reconstructions(truth, recon_rows, out_dir / "reconstructions.png")
    plot_pareto(clean.get("operating_points"), out_dir / "pareto.png", tasks)
    paths += [out_dir / n for n in ("frontier.png", "pl_curves.png", "reconstructions.png", "pareto.png")]
    return paths
