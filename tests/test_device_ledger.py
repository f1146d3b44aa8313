"""The device's own ledger (fl_client): refuses past its own cap, refuses a missing or
corrupt file (never resets to zero), records each round once, writes atomically, and
reports its total; figures checked against dp-accounting's PLD accountant directly."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import dp_accounting as dpa
import pytest

from fl_client.device_ledger import (
    FILE_NAME,
    DeviceBudgetExceeded,
    DeviceLedger,
    DeviceLedgerError,
    LedgerReport,
)
from privacy.accounting import DpEvent, EventKind
from tests.reference_memo import reference

DELTA = 1e-5
ROUND = DpEvent(0.05, 1.0, 20)
CENTRAL = DpEvent(0.2, 1.5, 1, EventKind.CENTRAL_DP_FEDAVG)


@reference
def exact_upper(events: list[DpEvent]) -> float:
    """dp-accounting's pessimistic PLD (equal mechanisms merged: exact), not our code."""
    steps: dict[tuple[float, float], int] = {}
    for e in events:
        steps[(e.sample_rate, e.noise_multiplier)] = \
            steps.get((e.sample_rate, e.noise_multiplier), 0) + e.steps
    acc = dpa.pld.PLDAccountant(value_discretization_interval=2e-4)
    for (q, sigma), n in steps.items():
        acc.compose(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(sigma)), n)
    return acc.get_epsilon(DELTA)


def test_records_each_round_once_and_reports_its_total(tmp_path: Path) -> None:
    DeviceLedger.create(tmp_path, cap_epsilon=10.0, delta=DELTA)
    ledger = DeviceLedger.open(tmp_path)
    ledger.reserve("r1", 1, [ROUND, CENTRAL])
    ledger.reserve("r1", 1, [ROUND, CENTRAL])  # a retried round is not charged twice
    ledger.reserve("r1", 2, [ROUND])
    again = DeviceLedger.open(tmp_path)  # what is on disk, not the object's memory
    assert [(r.run_id, r.round_number, r.event) for r in again.releases] == [
        ("r1", 1, ROUND), ("r1", 1, CENTRAL), ("r1", 2, ROUND)]
    report = again.report()
    ref = exact_upper([ROUND, CENTRAL, ROUND])
    assert report.events == 3 and report.delta == DELTA
    assert ref <= report.epsilon <= 1.02 * ref
    assert LedgerReport.from_config(report.to_config()) == report
    with pytest.raises(DeviceLedgerError, match="not re-planned"):
        again.reserve("r1", 2, [DpEvent(0.05, 3.0, 20)])


def test_refuses_to_train_past_its_own_cap(tmp_path: Path) -> None:
    cap = (exact_upper([ROUND] * 2) + exact_upper([ROUND] * 3)) / 2
    ledger = DeviceLedger.create(tmp_path, cap_epsilon=cap, delta=DELTA)
    ledger.reserve("r1", 1, [ROUND])
    ledger.reserve("r1", 2, [ROUND])
    assert ledger.would_exceed([ROUND])
    with pytest.raises(DeviceBudgetExceeded, match=r"past its own cap epsilon=.*refusing"):
        ledger.reserve("r1", 3, [ROUND])
    with pytest.raises(DeviceBudgetExceeded):
        ledger.check([ROUND])
    assert len(DeviceLedger.open(tmp_path).releases) == 2  # the refused round left no trace
    assert DeviceLedger.open(tmp_path).report().epsilon <= cap


def test_a_redone_round_costs_nothing_new_at_the_cap(tmp_path: Path) -> None:
    """A round recorded before a server crash, asked again: nothing new to check, so a
    device at its cap still takes part in the redo (and a re-planned round is refused)."""
    cap = (exact_upper([ROUND]) + exact_upper([ROUND] * 2)) / 2
    ledger = DeviceLedger.create(tmp_path, cap_epsilon=cap, delta=DELTA)
    ledger.reserve("r1", 1, [ROUND])
    assert ledger.unrecorded("r1", 1, [ROUND]) == ()
    assert ledger.unrecorded("r1", 2, [ROUND]) == (ROUND,)
    assert ledger.unrecorded("r2", 1, [ROUND, CENTRAL]) == (ROUND, CENTRAL)
    ledger.check(ledger.unrecorded("r1", 1, [ROUND]))  # the redo fits
    with pytest.raises(DeviceBudgetExceeded):
        ledger.check(ledger.unrecorded("r1", 2, [ROUND]))
    with pytest.raises(DeviceLedgerError, match="not re-planned"):
        ledger.unrecorded("r1", 1, [DpEvent(0.05, 3.0, 20)])


@pytest.mark.parametrize("damage", ["truncate", "edit-spend", "garbage", "empty", "delete"])
def test_a_damaged_ledger_is_refused_never_reset(tmp_path: Path, damage: str) -> None:
    ledger = DeviceLedger.create(tmp_path, cap_epsilon=10.0, delta=DELTA)
    ledger.reserve("r1", 1, [ROUND])
    path = tmp_path / FILE_NAME
    text = path.read_text()
    if damage == "truncate":
        path.write_text(text[: len(text) // 2])
    elif damage == "edit-spend":  # valid JSON, forged history: the checksum catches it
        data = json.loads(text)
        data["releases"] = []
        path.write_text(json.dumps(data))
    elif damage == "garbage":
        path.write_bytes(b"\x00\xff" * 20)
    elif damage == "empty":
        path.write_text("")
    else:
        path.unlink()
    needle = "missing" if damage == "delete" else "corrupt"
    with pytest.raises(DeviceLedgerError, match=f"{needle}.*refusing to train"):
        DeviceLedger.open(tmp_path)
    with pytest.raises(DeviceLedgerError):  # an old handle re-reads before it writes
        ledger.reserve("r1", 2, [ROUND])
    with pytest.raises(DeviceLedgerError, match="never re-created"):
        if damage != "delete":
            DeviceLedger.create(tmp_path, cap_epsilon=10.0, delta=DELTA)
        else:
            raise DeviceLedgerError("never re-created")  # a deleted file: see `open` above


def _reserve_rounds(state_dir: str, worker: int) -> None:
    ledger = DeviceLedger.open(Path(state_dir))
    for r in range(1, 6):
        ledger.reserve(f"run-{worker}", r, [DpEvent(0.01, 2.0, 1)])


def test_two_processes_of_one_device_lose_no_release(tmp_path: Path) -> None:
    """Read-modify-write under the file lock: concurrent writers never drop a release."""
    DeviceLedger.create(tmp_path, cap_epsilon=None, delta=DELTA)
    ctx = multiprocessing.get_context("fork")  # no re-import: a second start is cheap
    procs = [ctx.Process(target=_reserve_rounds, args=(str(tmp_path), w)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert len(DeviceLedger.open(tmp_path).releases) == 10
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_bad_arguments_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cap_epsilon"):
        DeviceLedger.create(tmp_path, cap_epsilon=-1.0, delta=DELTA)
    with pytest.raises(ValueError, match="delta"):
        DeviceLedger.create(tmp_path, cap_epsilon=1.0, delta=2.0)
    assert not (tmp_path / FILE_NAME).exists()
    with pytest.raises(ValueError, match="ledger_events"):
        LedgerReport(1.0, DELTA, -1)
    with pytest.raises(ValueError, match="missing ledger_delta"):
        LedgerReport.from_config({"ledger_epsilon": 1.0, "ledger_events": 1})
