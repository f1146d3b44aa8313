"""The device ledger's edges: what an operator reads and what lies on disk.

* every refusal (missing, unreadable, corrupt or existing file; bad run, round, cap, inputs
  digest or event; a re-planned round; a release past a cap) is pinned by its whole message;
* the registry's cap binds when it is the lower one, is named as such, and the caller's
  action ends the refusal; a release that adds nothing passes even past that cap;
* validation boundaries: round 1, a cap of 0, a 32-byte digest, an empty digest string;
* the file format: the bytes are the body plus the SHA-256 of its canonical JSON, dumped
  with ``indent=1`` and sorted keys (recomputed here independently), with a ``written_at``
  UTC timestamp; `verified` reads a single version as well as a tuple of them;
* an empty ledger reports exactly 0, and a ledger without any cap never refuses;
* a file that makes the JSON decoder recurse too deep is corrupt, not a crash.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fl_client.device_ledger import (
    FILE_NAME,
    DeviceBudgetExceeded,
    DeviceLedger,
    DeviceLedgerError,
    DeviceRelease,
    sealed,
    verified,
)
from privacy.accounting import DpEvent
from tests.test_device_ledger import DELTA, ROUND

#: The same round as ROUND with another noise multiplier: a re-planned release.
REPLANNED = DpEvent(0.05, 3.0, 20)
#: Two training inputs digests (what `fl_client.training_seed.inputs_digest` returns).
INPUTS_A = hashlib.sha256(b"inputs a").digest()
INPUTS_B = hashlib.sha256(b"inputs b").digest()
#: A cap no release of ROUND fits under.
TINY_CAP = 0.01

CORRUPT = ("device ledger {path} is corrupt ({reason}): refusing to train; it is never reset "
           "to zero, restore it from a backup")
BAD_DIGEST = ("inputs must be a 32-byte SHA-256 digest "
              "(fl_client.training_seed.inputs_digest)")


def exactly(message: str) -> str:
    """A `match` pattern that accepts `message` and nothing longer or shorter."""
    return rf"^{re.escape(message)}\Z"


def expected_seal(body: dict[str, Any]) -> bytes:
    """The sealed form of `body`, computed here rather than by the module under test."""
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()
    return json.dumps({**body, "sha256": digest}, indent=1, sort_keys=True).encode()


def reseal(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Edit the ledger's body and write it back with a matching checksum (a forgery that
    only the content checks can catch)."""
    body = json.loads(path.read_text())
    del body["sha256"]
    edit(body)
    path.write_bytes(expected_seal(body))


def past_cap(path: Path, who: str, cap: str, spent: str, releases: int, action: str) -> str:
    return (f"device ledger {path}: this release would take the device past {who} cap "
            f"epsilon={cap} at delta=1e-05 (spent {spent} over {releases} releases): "
            f"refusing to {action}")


# -- the file format ---------------------------------------------------------------------


def test_sealed_bytes_are_indented_sorted_json_with_the_body_checksum() -> None:
    body = {"version": 3, "format": "x", "nested": {"b": 2, "a": [1.5, None]}}
    assert sealed(body) == expected_seal(body)
    assert sealed(body).decode().splitlines()[:3] == ['{', ' "format": "x",', ' "nested": {']


def test_the_ledger_file_is_sealed_and_stamped_in_utc(tmp_path: Path) -> None:
    before = dt.datetime.now(dt.UTC)
    ledger = DeviceLedger.create(tmp_path, cap_epsilon=10.0, delta=DELTA)
    ledger.reserve("r1", 1, [ROUND], inputs=INPUTS_A)
    after = dt.datetime.now(dt.UTC)
    raw = (tmp_path / FILE_NAME).read_bytes()
    body = json.loads(raw)
    del body["sha256"]
    assert raw == expected_seal(body)
    assert sorted(body) == ["cap_epsilon", "delta", "format", "releases", "version",
                            "written_at"]
    written_at = dt.datetime.fromisoformat(body["written_at"])
    assert written_at.utcoffset() == dt.timedelta(0)
    assert body["written_at"].endswith("+00:00")
    assert before <= written_at <= after


def test_verified_reads_one_version_given_as_an_int() -> None:
    body = {"format": "fmt", "version": 3, "x": 1}
    assert verified(sealed(body), "fmt", 3) == body
    with pytest.raises(ValueError, match=exactly(
            "version 3, this fedmsr reads 4 (a newer fedmsr wrote it?)")):
        verified(sealed(body), "fmt", 4)


@pytest.mark.parametrize("content", [{"format": "other", "version": 1}, {"version": 1}, [1]])
def test_verified_names_the_format_it_expected(content: Any) -> None:
    raw = sealed(content) if isinstance(content, dict) else json.dumps(content).encode()
    with pytest.raises(ValueError, match=exactly("not a fmt file")):
        verified(raw, "fmt", 1)


# -- refusing a file that cannot be used ---------------------------------------------------


def test_a_missing_ledger_says_how_to_recover(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    with pytest.raises(DeviceLedgerError, match=exactly(
            f"device ledger {path} is missing: refusing to train (a device without its ledger "
            "cannot know its spend; restore the file, or provision the device again with a "
            "new identity)")):
        DeviceLedger.open(tmp_path)


def test_an_unreadable_ledger_names_the_system_error(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    path.mkdir()  # not a file: reading it fails with an OSError other than "not found"
    with pytest.raises(DeviceLedgerError, match=exactly(
            f"device ledger {path} cannot be read ({os.strerror(errno.EISDIR)}): "
            "refusing to train")):
        DeviceLedger.open(tmp_path)


def _wrong_format(body: dict[str, Any]) -> None:
    body["format"] = "fedmsr-server-ledger"


def _empty_digest(body: dict[str, Any]) -> None:
    body["releases"][0]["inputs"] = ""


@pytest.mark.parametrize(("damage", "reason"), [
    ("edit-spend", "checksum mismatch"),
    ("wrong-format", "not a fedmsr-device-ledger file"),
    ("empty-digest", "inputs must be a digest string or null, got ''"),
])
def test_a_corrupt_ledger_names_what_is_wrong(tmp_path: Path, damage: str, reason: str) -> None:
    DeviceLedger.create(tmp_path, cap_epsilon=10.0, delta=DELTA).reserve(
        "r1", 1, [ROUND], inputs=INPUTS_A)
    path = tmp_path / FILE_NAME
    if damage == "edit-spend":  # a forgery without a matching checksum
        data = json.loads(path.read_text())
        data["releases"] = []
        path.write_text(json.dumps(data))
    else:
        reseal(path, _wrong_format if damage == "wrong-format" else _empty_digest)
    with pytest.raises(DeviceLedgerError, match=exactly(
            CORRUPT.format(path=path, reason=reason))):
        DeviceLedger.open(tmp_path)


def test_a_ledger_of_deeply_nested_json_is_corrupt_not_a_crash(tmp_path: Path) -> None:
    """A hostile or damaged file that makes the JSON decoder recurse too deep is refused
    like any other corrupt ledger: by name, as a DeviceLedgerError the handlers catch."""
    DeviceLedger.create(tmp_path, cap_epsilon=10.0, delta=DELTA)
    path = tmp_path / FILE_NAME
    path.write_bytes(b"[" * 100_000)
    with pytest.raises(DeviceLedgerError, match=f"^device ledger {re.escape(str(path))} is "
                                                "corrupt \\(maximum recursion depth"):
        DeviceLedger.open(tmp_path)


@pytest.mark.parametrize(("inputs", "shown"), [("", "''"), (5, "5"), ([], "[]")])
def test_a_release_row_refuses_a_digest_that_is_not_a_non_empty_string(
        inputs: object, shown: str) -> None:
    row = {"run": "r1", "round": 1, "inputs": inputs, **ROUND.to_dict()}
    with pytest.raises(ValueError, match=exactly(
            f"inputs must be a digest string or null, got {shown}")):
        DeviceRelease.from_dict(row)
    for fine in (None, "ab" * 32):
        assert DeviceRelease.from_dict({**row, "inputs": fine}).inputs == fine


def test_an_existing_ledger_is_never_created_again(tmp_path: Path) -> None:
    DeviceLedger.create(tmp_path, cap_epsilon=10.0, delta=DELTA)
    with pytest.raises(DeviceLedgerError, match=exactly(
            f"device ledger {tmp_path / FILE_NAME} already exists; a ledger is never "
            "re-created (that would reset its spend)")):
        DeviceLedger.create(tmp_path, cap_epsilon=10.0, delta=DELTA)


# -- bad arguments -------------------------------------------------------------------------


@pytest.mark.parametrize("cap", [0, 0.0, -1.0, float("nan"), float("inf"), True])
def test_a_cap_must_be_finite_and_positive(tmp_path: Path, cap: object) -> None:
    message = exactly(f"cap_epsilon must be a finite number > 0 or None, got {cap!r}")
    with pytest.raises(ValueError, match=message):
        DeviceLedger.create(tmp_path, cap_epsilon=cap, delta=DELTA)  # type: ignore[arg-type]
    assert not (tmp_path / FILE_NAME).exists()
    ledger = DeviceLedger.create(tmp_path, cap_epsilon=1e-300, delta=DELTA)  # just above 0
    with pytest.raises(ValueError, match=message):
        ledger.check([ROUND], registry_cap=cap)  # type: ignore[arg-type]


@pytest.mark.parametrize(("run_id", "round_number", "message"), [
    ("", 1, "run id must be a non-empty string, got ''"),
    (7, 1, "run id must be a non-empty string, got 7"),
    ("r1", 0, "round must be an int >= 1, got 0"),
    ("r1", 1.5, "round must be an int >= 1, got 1.5"),
    ("r1", True, "round must be an int >= 1, got True"),
])
def test_run_and_round_are_checked(tmp_path: Path, run_id: object, round_number: object,
                                   message: str) -> None:
    ledger = DeviceLedger.create(tmp_path, cap_epsilon=10.0, delta=DELTA)
    with pytest.raises(ValueError, match=exactly(message)):
        ledger.unrecorded(run_id, round_number, [ROUND])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=exactly(message)):
        ledger.reserve(run_id, round_number, [ROUND])  # type: ignore[arg-type]
    assert ledger.unrecorded("r1", 1, [ROUND]) == (ROUND,)  # round 1 is the first


@pytest.mark.parametrize("inputs", [bytes(31), bytes(33), b"", "a" * 32, "ab" * 32],
                         ids=["31-bytes", "33-bytes", "no-bytes", "32-chars", "hex-text"])
def test_the_inputs_digest_must_be_32_bytes(tmp_path: Path, inputs: object) -> None:
    ledger = DeviceLedger.create(tmp_path, cap_epsilon=10.0, delta=DELTA)
    with pytest.raises(ValueError, match=exactly(BAD_DIGEST)):
        ledger.unrecorded("r1", 1, [ROUND], inputs=inputs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=exactly(BAD_DIGEST)):
        ledger.reserve("r1", 1, [ROUND], inputs=inputs)  # type: ignore[arg-type]
    assert DeviceLedger.open(tmp_path).releases == ()
    assert ledger.unrecorded("r1", 1, [ROUND], inputs=bytes(32)) == (ROUND,)


@pytest.mark.parametrize(("event", "name"), [("local-dp-sgd", "str"),
                                             (ROUND.to_dict(), "dict"), (None, "NoneType")])
def test_events_must_be_dp_events(tmp_path: Path, event: object, name: str) -> None:
    ledger = DeviceLedger.create(tmp_path, cap_epsilon=10.0, delta=DELTA)
    with pytest.raises(ValueError, match=exactly(f"events must be DpEvents, got {name}")):
        ledger.unrecorded("r1", 1, [ROUND, event])  # type: ignore[list-item]


# -- what a round costs --------------------------------------------------------------------


def test_a_round_on_other_inputs_is_charged_again(tmp_path: Path) -> None:
    ledger = DeviceLedger.create(tmp_path, cap_epsilon=10.0, delta=DELTA)
    ledger.reserve("r1", 1, [ROUND], inputs=INPUTS_A)
    assert ledger.unrecorded("r1", 1, [ROUND], inputs=INPUTS_A) == ()
    assert ledger.unrecorded("r1", 1, [ROUND], inputs=INPUTS_B) == (ROUND,)
    assert ledger.unrecorded("r1", 1, [ROUND]) == ()  # check-in: the round is recorded


def test_a_replanned_round_is_named_with_or_without_a_digest(tmp_path: Path) -> None:
    ledger = DeviceLedger.create(tmp_path, cap_epsilon=10.0, delta=DELTA)
    ledger.reserve("run-7", 2, [ROUND], inputs=INPUTS_A)
    message = exactly(
        f"device ledger {tmp_path / FILE_NAME} already has a local-dp-sgd release for run "
        "run-7 round 2 with other parameters; a round's release is not re-planned")
    with pytest.raises(DeviceLedgerError, match=message):  # at check-in
        ledger.unrecorded("run-7", 2, [REPLANNED])
    with pytest.raises(DeviceLedgerError, match=message):  # at training, same inputs
        ledger.unrecorded("run-7", 2, [REPLANNED], inputs=INPUTS_A)
    with pytest.raises(DeviceLedgerError, match=message):
        ledger.reserve("run-7", 2, [REPLANNED], inputs=INPUTS_A)
    assert [r.event for r in DeviceLedger.open(tmp_path).releases] == [ROUND]


def test_an_empty_ledger_reports_exactly_zero(tmp_path: Path) -> None:
    DeviceLedger.create(tmp_path, cap_epsilon=10.0, delta=DELTA)
    ledger = DeviceLedger.open(tmp_path)
    assert ledger.epsilon() == 0.0
    report = ledger.report()
    assert (report.epsilon, report.delta, report.events) == (0.0, DELTA, 0)


def test_a_ledger_without_a_cap_never_refuses(tmp_path: Path) -> None:
    ledger = DeviceLedger.create(tmp_path, cap_epsilon=None, delta=DELTA)
    assert not ledger.would_exceed([ROUND])
    ledger.check([ROUND])
    ledger.reserve("r1", 1, [ROUND])
    assert [r.event for r in DeviceLedger.open(tmp_path).releases] == [ROUND]


# -- caps ----------------------------------------------------------------------------------


@pytest.mark.parametrize("own_cap", [None, 100.0])
def test_the_registry_cap_binds_when_it_is_lower(tmp_path: Path, own_cap: float | None
                                                 ) -> None:
    ledger = DeviceLedger.create(tmp_path, cap_epsilon=own_cap, delta=DELTA)
    path = tmp_path / FILE_NAME
    assert not ledger.would_exceed([ROUND])
    assert ledger.would_exceed([ROUND], registry_cap=TINY_CAP)
    refusal = past_cap(path, "the registry's", "0.01", "0", 0, "train")
    with pytest.raises(DeviceBudgetExceeded, match=exactly(refusal)):
        ledger.check([ROUND], registry_cap=TINY_CAP)
    with pytest.raises(DeviceBudgetExceeded, match=exactly(refusal)):
        ledger.reserve("r1", 1, [ROUND], inputs=INPUTS_A, registry_cap=TINY_CAP)
    with pytest.raises(DeviceBudgetExceeded, match=exactly(
            past_cap(path, "the registry's", "0.01", "0", 0, "check in"))):
        ledger.check([ROUND], registry_cap=TINY_CAP, action="check in")
    with pytest.raises(DeviceBudgetExceeded, match=exactly(
            past_cap(path, "the registry's", "0.01", "0", 0, "join round 1"))):
        ledger.reserve("r1", 1, [ROUND], registry_cap=TINY_CAP, action="join round 1")
    assert DeviceLedger.open(tmp_path).releases == ()  # refusals leave no trace


def test_the_own_cap_binds_when_it_is_lower(tmp_path: Path) -> None:
    ledger = DeviceLedger.create(tmp_path, cap_epsilon=TINY_CAP, delta=DELTA)
    with pytest.raises(DeviceBudgetExceeded, match=exactly(
            past_cap(tmp_path / FILE_NAME, "its own", "0.01", "0", 0, "train"))):
        ledger.reserve("r1", 1, [ROUND], registry_cap=50.0)


def test_nothing_new_passes_even_past_the_registry_cap(tmp_path: Path) -> None:
    """A redo of a recorded round adds nothing, so it passes although the device's spend
    is already past the registry's (lowered) cap; a new round is refused, naming it."""
    ledger = DeviceLedger.create(tmp_path, cap_epsilon=None, delta=DELTA)
    ledger.reserve("r1", 1, [ROUND], inputs=INPUTS_A)
    assert ledger.epsilon() > TINY_CAP
    assert not ledger.would_exceed([], registry_cap=TINY_CAP)
    ledger.check([], registry_cap=TINY_CAP)
    ledger.reserve("r1", 1, [ROUND], inputs=INPUTS_A, registry_cap=TINY_CAP)
    with pytest.raises(DeviceBudgetExceeded, match=exactly(past_cap(
            tmp_path / FILE_NAME, "the registry's", "0.01", f"{ledger.epsilon():.4g}", 1,
            "train"))):
        ledger.reserve("r1", 2, [ROUND], inputs=INPUTS_A, registry_cap=TINY_CAP)
    assert len(DeviceLedger.open(tmp_path).releases) == 1
