"""The memo of independent reference figures (`tests/reference_memo.py`): the value it gives
is the value the reference computes, it computes once per process, and across processes only
where the mutation script asks for it."""

from __future__ import annotations

from pathlib import Path

import pytest

from privacy.accounting import DpEvent
from tests import reference_memo
from tests.reference_memo import ENV_VAR, reference

CALLS: list[tuple] = []


def squares(values, scale: float = 1.0) -> float:
    """A stand-in reference that counts its calls."""
    values = tuple(values)
    CALLS.append((values, scale))
    return sum(v * v for v in values) * scale + 0.1


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    CALLS.clear()
    monkeypatch.delenv(ENV_VAR, raising=False)


def test_same_value_once_per_process_and_per_argument() -> None:
    memo = reference(squares)
    assert memo([1, 2]) == squares([1, 2]) == 5.1
    CALLS.clear()
    assert memo([1, 2]) == 5.1 and memo([1, 2]) == 5.1
    assert CALLS == []                                       # held in the process
    assert memo([1, 2], scale=2.0) == 10.1 and memo([2, 1, 0]) == 5.1
    assert len(CALLS) == 2                                   # other arguments: computed


def test_an_iterator_argument_is_read_once_and_keyed_by_its_items() -> None:
    memo = reference(squares)
    assert memo(iter([3, 4])) == 25.1
    assert memo(iter([3, 4])) == 25.1 and memo((3, 4)) == 25.1
    assert len(CALLS) == 1


def test_no_disk_without_the_variable(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    reference(squares)([1.5])
    reference(squares)([1.5])                                # a "new process": recomputed
    assert len(CALLS) == 2 and list(tmp_path.iterdir()) == []


def test_across_processes_through_the_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "refs"))
    first = reference(squares)([0.1, 0.2, 0.3])
    files = list((tmp_path / "refs").iterdir())
    assert len(files) == 1 and files[0].suffix == ".hex"
    CALLS.clear()
    again = reference(squares)([0.1, 0.2, 0.3])              # a fresh memo reads the file
    assert again == first and CALLS == []                    # bit for bit, not recomputed
    files[0].write_text("not a float")                       # garbage: computed afresh
    assert reference(squares)([0.1, 0.2, 0.3]) == first and len(CALLS) == 1
    assert float.fromhex(files[0].read_text()) == first      # and written back


def test_the_key_covers_the_defining_modules_source(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    reference(squares)([2.0])
    source = Path(reference_memo.__file__)                   # any other module's source
    monkeypatch.setattr(reference_memo.inspect, "getfile", lambda fn: str(source))
    reference(squares)([2.0])
    assert len(CALLS) == 2 and len(list(tmp_path.glob("*.hex"))) == 2


def test_a_real_reference_from_disk_equals_its_fresh_computation(tmp_path: Path,
                                                                 monkeypatch) -> None:
    from tests.test_privacy_ledger import independent_epsilon

    events = [DpEvent(0.05, 1.0, 20), DpEvent(0.2, 1.5, 1)]
    fresh = independent_epsilon.__wrapped__(events, 1e-5, interval=1e-3)
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    stored = reference(independent_epsilon.__wrapped__)(events, 1e-5, interval=1e-3)
    read = reference(independent_epsilon.__wrapped__)(events, 1e-5, interval=1e-3)
    assert fresh == stored == read and len(list(tmp_path.glob("*.hex"))) == 1
