"""One command for the real-pixel table: build the benchmark, evaluate it, print the table.

Runs ``scripts/build_real_pixel_benchmark.py`` (handwriting people moving over the two
photographs scikit-learn ships, the scene and light changed on the attacked days) and
then ``fedmsr eval --dataset`` on it with ``activity`` as the utility label and
``device`` (the person) and ``digit`` (an attribute several people share) as the private
labels, and prints a Markdown table read from the report's ``table.csv`` and
``metrics.json`` (nothing is recomputed here): per representation, the activity probe
accuracy (linear / MLP), single-clip identity and digit inference, identity
re-identification from the largest k clips of one device (best of profile fusion and set
statistics), and the KL bound in bits per released clip, with a chance row.

Run: ``python scripts/real_pixel_table.py [--out DIR] [--full] [--epochs E]
[--attack-steps K] [--no-scene-shift] [--devices 9 --days 6 --clips-per-day 16 --seed 0]`` or
``make real-pixel-table``. Without ``--out`` everything goes to a temporary folder that
is removed at the end; with it, ``DIR/data`` holds the benchmark, ``DIR/report`` the full
evaluation report and ``DIR/table.md`` the printed table. The eval's torch runs on one
thread (``OMP_NUM_THREADS=1`` unless set).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UTILITY = "activity"
PRIVATE = ("device", "digit")


@dataclass(frozen=True)
class TableRow:
    """One representation's headline numbers, as the report gives them."""

    name: str
    activity_linear: float
    activity_mlp: float
    identity_single: float
    digit_single: float
    identity_kmax: float | None
    kl_bits: float | None


@dataclass(frozen=True)
class Table:
    rows: tuple[TableRow, ...]
    kmax: int | None
    activity_chance: float
    identity_chance: float  # single clip: the fit split's majority device
    digit_chance: float
    device_chance: float  # k clips: 1 / devices attacked
    description: str  # the report's "Data:" sentence


def _num(text: str) -> float | None:
    return None if text in ("", "–", "None", "nan") else float(text)


def read_table(report: Path) -> Table:
    """The headline numbers of an evaluation report folder (``table.csv`` + ``metrics.json``)."""
    metrics = json.loads((report / "metrics.json").read_text())
    reps = {r["name"]: r for r in metrics["representations"]}
    with (report / "table.csv").open() as f:
        csv_rows = list(csv.DictReader(f))
    rows = []
    kmax = None
    for r in csv_rows:
        kmax = int(r["kmax"]) if r["kmax"] not in ("", "–") else kmax
        rows.append(TableRow(r["name"], float(r[f"{UTILITY}_linear"]), float(r[f"{UTILITY}_mlp"]),
                             float(r["identity_single"]), float(r["digit_single"]),
                             _num(r["identity_pl_kmax"]), _num(r["kl_bits"])))
    first = reps[csv_rows[0]["name"]]
    return Table(tuple(rows), kmax, float(first["dtp"][f"{UTILITY}_chance"]),
                 float(first["pl"]["single"]["device"]["chance"]),
                 float(first["pl"]["single"]["digit"]["chance"]),
                 float(first["pl"]["device_chance"]), str(metrics["settings"]["data"]))


def markdown(t: Table) -> str:
    def f(v: float | None, digits: int = 3) -> str:
        return "–" if v is None else f"{v:.{digits}f}"

    k = t.kmax if t.kmax is not None else "k"
    head = ("| representation | activity probe acc (linear / MLP) | identity, single clip | "
            f"digit, single clip | identity from {k} clips | KL bits/clip |")
    lines = [head, "|---|---|---|---|---|---|"]
    lines += [f"| {r.name} | {f(r.activity_linear)} / {f(r.activity_mlp)} | {f(r.identity_single)} | "
              f"{f(r.digit_single)} | {f(r.identity_kmax)} | {f(r.kl_bits, 1)} |" for r in t.rows]
    lines.append(f"| *chance* | {f(t.activity_chance)} | {f(t.identity_chance)} | {f(t.digit_chance)} | "
                 f"{f(t.device_chance)} | |")
    return "\n".join(lines) + "\n"


def _run(cmd: Sequence[str], env: Mapping[str, str]) -> None:
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(list(cmd), check=True, cwd=ROOT, env=dict(env))


def run(out: Path, a: argparse.Namespace) -> Table:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    data, report = out / "data", out / "report"
    _run([sys.executable, str(ROOT / "scripts" / "build_real_pixel_benchmark.py"), str(data),
          "--devices", str(a.devices), "--days", str(a.days), "--clips-per-day", str(a.clips_per_day),
          "--seed", str(a.seed), *(["--no-scene-shift"] if a.no_scene_shift else [])], env)
    cmd = [sys.executable, "-m", "fl_server.cli", "eval", "--dataset", str(data / "manifest.csv"),
           "--utility-label", UTILITY, "--privacy-labels", ",".join(PRIVATE), "--out", str(report),
           "--seed", str(a.seed), "--image-size", str(a.image_size)]
    if not a.full:
        cmd.append("--reduced")
    for option, value in (("--epochs", a.epochs), ("--attack-steps", a.attack_steps)):
        if value is not None:
            cmd += [option, str(value)]
    _run(cmd, env)
    return read_table(report)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--out", type=Path, help="keep the benchmark, report and table here")
    p.add_argument("--full", action="store_true", help="fedmsr eval's full scale (default: --reduced)")
    p.add_argument("--epochs", type=int, help="override the encoders' training epochs")
    p.add_argument("--attack-steps", type=int, help="override the inversion attacks' steps")
    p.add_argument("--image-size", type=int, default=32, choices=(32, 64))
    p.add_argument("--devices", type=int, default=9)
    p.add_argument("--days", type=int, default=6)
    p.add_argument("--clips-per-day", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-scene-shift", action="store_true",
                   help="film the attacked days like the others (an in-scene reference)")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fedmsr-real-pixel-") as tmp:
        out = a.out if a.out is not None else Path(tmp)
        try:
            table = run(out, a)
        except subprocess.CalledProcessError as exc:
            print(f"error: {' '.join(map(str, exc.cmd[:4]))} ... exited {exc.returncode}", file=sys.stderr)
            return 1
        text = markdown(table)
        if a.out is not None:
            (out / "table.md").write_text(f"Data: {table.description}.\n\n{text}")
    print(f"Data: {table.description}.\n")
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
