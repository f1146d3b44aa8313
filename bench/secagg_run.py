"""Whole `fedmsr run` rounds with and without `--secure-aggregation`: the round time a user sees.

    python bench/secagg_run.py [--devices 50] [--rounds 5] [--pairs 2]

`bench/secagg_round.py` isolates aggregation (synthetic updates, no check-in, no
evaluation); this one runs the real thing on the embedded defaults (Flower's simulation
engine, synthetic footage, real local training, check-in, evaluation, checkpoints), as
`fedmsr run` does, alternating plain and SecAgg+ runs of the same seed `--pairs` times.
Round 1 pays Ray's start-up and is left out; the figure is the median `wall_s` of the
other rounds from each run's history.json, and the ratio SecAgg+ / plain (target:
<= 1.5 at n = 50). It also prints what the consistency round (each device signs the
survivor set, the server forwards a quorum of signatures) costs inside the same SecAgg+
rounds: its stage time from each round's ``secagg_phases_s``, and the round time without
it. The stage cannot be switched off in `fedmsr run` (it is what stops a server that
tells devices different survivor sets), so "without" is the same round minus that stage.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

FEDMSR = [sys.executable, "-m", "fl_server.cli"]
REPO = Path(__file__).resolve().parents[1]


def round_times(runs_dir: Path, run_id: str, devices: int, rounds: int,
                secure: bool) -> list[tuple[float, float]]:
    """(`wall_s`, consistency stage s) of rounds 2.. of one `fedmsr run` (round 1 starts
    Ray); the stage is 0 without secure aggregation."""
    args = [*FEDMSR, "run", "--devices", str(devices), "--rounds", str(rounds),
            "--clips-per-day", "4", "--days", "2", "--seed", "0",
            "--runs-dir", str(runs_dir), "--run-id", run_id]
    if secure:
        args.append("--secure-aggregation")
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{done.stderr[-2000:]}")
    history = json.loads((runs_dir / run_id / "history.json").read_text())
    return [(float(r["wall_s"]), float(r.get("secagg_phases_s", {}).get("consistency", 0.0)))
            for r in history[1:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=2)
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be >= 2 (round 1 is left out)")
    times: dict[bool, list[float]] = {False: [], True: []}
    consistency: list[float] = []
    with tempfile.TemporaryDirectory(prefix="fedmsr-bench-") as tmp:
        for pair in range(args.pairs):
            for secure in (False, True):
                run_id = f"{'secagg' if secure else 'plain'}-{pair}"
                rounds = round_times(Path(tmp), run_id, args.devices, args.rounds, secure)
                times[secure] += [wall for wall, _ in rounds]
                if secure:
                    consistency += [stage for _, stage in rounds]
    plain, secure = (statistics.median(times[s]) for s in (False, True))
    print(f"n = {args.devices}, rounds 2..{args.rounds} of {args.pairs} run pair(s)")
    print(f"plain   rounds {', '.join(f'{t:.1f}' for t in times[False])} s, median {plain:.2f} s")
    print(f"SecAgg+ rounds {', '.join(f'{t:.1f}' for t in times[True])} s, median {secure:.2f} s")
    print(f"ratio SecAgg+ / plain: {secure / plain:.2f}")
    without = statistics.median(w - c for w, c in zip(times[True], consistency, strict=True))
    print(f"consistency round: median {statistics.median(consistency):.3f} s per round; SecAgg+ "
          f"rounds without it {without:.2f} s; with / without: {secure / without:.3f}")


if __name__ == "__main__":
    main()
