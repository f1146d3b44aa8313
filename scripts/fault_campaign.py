"""The long fault-injection campaign: kill the server at random steps, resume, check.

Each trial starts a `fedmsr run` (Flower's simulation engine) whose engine SIGKILLs its own
process group at a random step of a random round (``FEDMSR_FAULT_POINT``, see
fl_server/fault_points.py), then runs `fedmsr run --resume` until the run ends. Trials
alternate between

* no DP -- the final model must equal the one an uninterrupted run of the same seed made
  (run once at the start), array by array;
* `--dp local` on a fresh SQLite registry -- the privacy ledger must hold exactly one row
  per (device, round) sent a train message, with the planned event, and each device's
  epsilon in `fedmsr budget show --json` must equal dp_accounting's recount
  (tests/ledger_recount.py).

A trial "recovered" when the kill landed, the resume completed every planned round once,
and its check passed. The ledger is recounted in every DP trial, completed or not (then
against the rounds it finished plus the killed round, whose reservation stays spent).
Printed at the end: trials, killed, recovered, model mismatches, ledger mismatches, and
how many ledger rows were left `reserved` after completion (counted, never lost, but not
committed).

Run: `python scripts/fault_campaign.py [--trials 20 --seed 0 --devices 3 --rounds 2]`
(about 2-4 minutes per trial on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fl_server.config import RunConfig  # noqa: E402
from fl_server.fault_points import ENV, POINTS  # noqa: E402
from tests.helpers import FEDMSR, SMALL  # noqa: E402
from tests.ledger_recount import epsilon_mismatches, ledger_rows, mismatches  # noqa: E402
from tests.test_fault_injection import local_event  # noqa: E402

DELTA = 1e-5


@dataclass
class Trial:
    number: int
    dp: bool
    point: str
    killed: bool = False
    completed: bool = False
    problems: list[str] = field(default_factory=list)
    model_problems: list[str] = field(default_factory=list)
    ledger_problems: list[str] = field(default_factory=list)
    reserved_left: int = 0
    seconds: float = 0.0

    @property
    def recovered(self) -> bool:
        return (self.killed and self.completed and not self.problems
                and not self.model_problems and not self.ledger_problems)


def fedmsr(args: list[str], cwd: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if fault:
        env[ENV] = fault
    return subprocess.run([*FEDMSR, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=1200, check=False)


def final_model(run_dir: Path) -> dict[str, np.ndarray]:
    with np.load(run_dir / "final_model.npz") as npz:
        return {k: npz[k] for k in npz.files}


def model_problems(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> list[str]:
    if got.keys() != want.keys():
        return [f"arrays {sorted(got)} != {sorted(want)}"]
    return [f"{name}: max |diff| {float(np.max(np.abs(got[name] - want[name]))):.3g}"
            for name in sorted(want)
            if not np.allclose(got[name], want[name], rtol=1e-6, atol=1e-7)]


def run_trial(trial: Trial, root: Path, base: list[str], rounds: int, devices: int,
              reference: dict[str, np.ndarray]) -> None:
    work = root / f"trial-{trial.number:02d}"
    work.mkdir()
    db: list[str] = []
    if trial.dp:
        url = f"sqlite:///{work / 'registry.db'}"
        db = ["--db", url]
        for args in (["db", "upgrade"], ["fleet", "enroll", "--count", str(devices),
                                         "--prefix", "cam-"]):
            assert fedmsr([*db, *args], work).returncode == 0, args
    runs = ["--runs-dir", str(work / "runs")]
    dp = ["--dp", "local", "--delta", str(DELTA)] if trial.dp else []
    first = fedmsr([*db, "run", *base, *dp, *runs, "--run-id", "t"], work, trial.point)
    run_dir = work / "runs" / "t"
    status = _status(run_dir)
    trial.killed = first.returncode == 1 and "code -9" in status.get("reason", "")
    if not trial.killed:
        trial.problems.append(f"not killed: exit {first.returncode}, {status}")
    resumed = fedmsr([*db, "run", "--resume", "t", *runs], work)
    status = _status(run_dir)
    trial.completed = resumed.returncode == 0 and status.get("status") == "completed"
    if not trial.completed:
        trial.problems.append(f"resume: exit {resumed.returncode}, {status.get('status')}: "
                              f"{str(status.get('reason'))[:160]}")
    finished = [r["round"] for r in _history(run_dir)]
    if trial.completed and finished != list(range(1, rounds + 1)):
        trial.problems.append(f"history.json rounds {finished}")
    if not trial.dp:
        if trial.completed:
            trial.model_problems = model_problems(final_model(run_dir), reference)
        return
    # Charged: every finished round, and the killed round unless the kill came before its
    # reservation (at check-in) -- reserved releases stay spent even if never redone.
    name, _, at = trial.point.partition(":")
    charged = set(finished) | ({int(at)} if name != "checkin" else set())
    event = local_event(RunConfig.load(run_dir / "run.json"))
    names = [f"cam-{d}" for d in range(devices)]
    rows = ledger_rows(db[1], "t")
    trial.ledger_problems += mismatches(rows, [(d, n) for d in names for n in sorted(charged)],
                                        event)
    trial.ledger_problems += epsilon_mismatches(db[1], DELTA,
                                                dict.fromkeys(names, len(charged)), event)
    trial.reserved_left = sum(r.status == "reserved" for r in rows) if trial.completed else 0


def _history(run_dir: Path) -> list[dict]:
    try:
        return json.loads((run_dir / "history.json").read_text())
    except (OSError, ValueError):
        return []


def _status(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--devices", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the trials' directories")
    opts = parser.parse_args()
    rng = random.Random(opts.seed)
    base = ["--devices", str(opts.devices), "--rounds", str(opts.rounds),
            "--seed", str(opts.seed), *SMALL]
    root = Path(tempfile.mkdtemp(prefix="fedmsr-faults-"))
    print(f"fault campaign: {opts.trials} trials, {opts.devices} devices x {opts.rounds} "
          f"rounds, work dir {root}", flush=True)
    straight = fedmsr(["run", *base, "--runs-dir", str(root / "reference"), "--run-id", "ref"],
                      root)
    if straight.returncode != 0:
        print(f"the uninterrupted reference run failed:\n{straight.stderr[-3000:]}")
        return 1
    reference = final_model(root / "reference" / "ref")
    trials = []
    for number in range(1, opts.trials + 1):
        point = f"{rng.choice(POINTS)}:{rng.randint(1, opts.rounds)}"
        trial = Trial(number, dp=number % 2 == 0, point=point)
        started = time.monotonic()
        try:
            run_trial(trial, root, base, opts.rounds, opts.devices, reference)
        except Exception as exc:  # noqa: BLE001 - a campaign reports, it does not stop
            trial.problems.append(f"{type(exc).__name__}: {exc}")
        trial.seconds = time.monotonic() - started
        trials.append(trial)
        verdict = "recovered" if trial.recovered else "FAILED"
        print(f"trial {number:2d} {'dp' if trial.dp else 'no-dp':5s} kill at {point:13s} "
              f"{verdict:9s} {trial.seconds:5.0f}s reserved-left {trial.reserved_left} "
              f"{'; '.join(trial.problems + trial.model_problems + trial.ledger_problems)[:300]}", flush=True)
    dp_trials = [t for t in trials if t.dp]
    print(f"\ntrials {len(trials)}  killed {sum(t.killed for t in trials)}  "
          f"recovered {sum(t.recovered for t in trials)}  "
          f"model mismatches {sum(bool(t.model_problems) for t in trials)}"
          f"  ledger mismatches {sum(bool(t.ledger_problems) for t in dp_trials)} "
          f"(of {len(dp_trials)} DP trials)  rows left reserved after completion "
          f"{sum(t.reserved_left for t in dp_trials)}")
    if not opts.keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    return 0 if all(t.recovered for t in trials) else 1


if __name__ == "__main__":
    sys.exit(main())
