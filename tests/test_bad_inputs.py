"""Inputs that used to get past validation or end in a traceback.

Each one now gets one line naming the problem and exit 2 with nothing written, or (a bad
bundle among good ones, a bad checkpoint) is skipped with its name.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from fl_client.node import simulated_bundles
from fl_server.checkpoint import Checkpoint, latest_checkpoint, save_checkpoint
from fl_server.cli import main
from fl_server.enrollment import MAX_DEVICE_INDEX
from fl_server.registry import db


def cli(capsys, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(list(args))
    return code, capsys.readouterr().err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# -- fedmsr run ------------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["--noise-multiplier", "--clip"])
@pytest.mark.parametrize("value", ["inf", "nan"])
def test_infinite_dp_sgd_settings_are_refused_before_anything_is_written(
        capsys, tmp_path, monkeypatch, option, value) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FEDMSR_DB", raising=False)
    code, err = cli(capsys, "run", "--dp", "local", option, value, "--runs-dir", "runs")
    line = one_line(err)
    assert code == 2
    assert line.startswith(f"error: {option}: must be a finite number > 0 with DP-SGD")
    assert listing(tmp_path) == []


# -- fedmsr fleet enroll -----------------------------------------------------------------------


@pytest.fixture
def registry(registry_url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FEDMSR_DB", registry_url)
    assert main(["db", "upgrade"]) == 0
    return registry_url


def devices_in(url: str) -> int:
    with db.get_engine(url).connect() as connection:
        return int(connection.execute(text("SELECT count(*) FROM devices")).scalar_one())


def _manifest(tmp_path: Path, case: str) -> Path:
    path = tmp_path / f"{case}.csv"
    if case == "huge-field":
        path.write_text("name,profile\ncam-0,glasses\ncam-1," + "x" * 3_000_000 + "\n")
    elif case == "duplicate-column":
        path.write_text("name,epsilon_cap,epsilon_cap\ncam-0,1.0,100.0\n")
    elif case == "huge-index":
        path.write_text(f"name,device_index\ncam-0,{2**63 - 1}\n")
    return path


@pytest.mark.parametrize("case, option, needle", [
    ("device-index", "--device-index: ",
     f"must be between 0 and {MAX_DEVICE_INDEX}, got {2**63 - 1}"),
    ("huge-field", "--manifest: ", "is not a readable CSV: line 3"),
    ("duplicate-column", "--manifest: ", "column 'epsilon_cap' appears more than once"),
    ("huge-index", "--manifest ", f"device_index: must be between 0 and {MAX_DEVICE_INDEX}"),
])
def test_bad_enrollment_input_is_one_line_exit_2_and_nothing_enrolled(
        registry, capsys, tmp_path, case, option, needle) -> None:
    before = listing(tmp_path)
    if case == "device-index":
        args = ["cam-0", "--device-index", str(2**63 - 1)]
    else:
        args = ["--manifest", str(_manifest(tmp_path, case))]
        before = listing(tmp_path)
    code, err = cli(capsys, "fleet", "enroll", *args)
    line = one_line(err)
    assert code == 2 and line.startswith(f"error: {option}") and needle in line, line
    assert devices_in(registry) == 0 and listing(tmp_path) == before  # no rows, no bundles
    # And the next automatic enrollment still works (no index past the column's range).
    assert cli(capsys, "fleet", "enroll", "cam-9")[0] == 0


# -- device.json -------------------------------------------------------------------------------


GOOD_INFO = {"device_id": 3, "name": "cam-3", "device_index": 3, "superlink": "127.0.0.1:9092",
             "key_fingerprint": "SHA256:x", "public_key": "ecdsa-sha2-nistp384 AAAA"}


@pytest.mark.parametrize("info, needle", [
    ("[1, 2]", "must hold a JSON object"),
    ('{"name": "cam-3"}', "device_id must be an integer"),
    (json.dumps({**GOOD_INFO, "device_index": "3"}), "device_index must be an integer"),
    (json.dumps({**GOOD_INFO, "device_index": -1}), "device_index must be an integer"),
    (json.dumps({**GOOD_INFO, "device_id": True}), "device_id must be an integer"),
    (json.dumps(GOOD_INFO).replace('"device_id": 3', '"device_id": 1e400'),
     "device_id must be an integer"),
    (json.dumps({**GOOD_INFO, "superlink": None}), "superlink must be a non-empty string"),
    (json.dumps({**GOOD_INFO, "name": 'x" --evil "'}), "name must be a non-empty string"),
    ("\xff\xfe", "cannot read"),
])
def test_a_malformed_device_json_is_one_line_exit_2(capsys, tmp_path, info, needle) -> None:
    bundle = tmp_path / "cam-3"
    bundle.mkdir()
    if info == "\xff\xfe":
        (bundle / "device.json").write_bytes(b"\xff\xfe\x00")
    else:
        (bundle / "device.json").write_text(info)
    (bundle / "device.key").write_text("key")
    (bundle / "ca.pem").write_text("ca")
    before = listing(tmp_path)
    code, err = cli(capsys, "device", "start", str(bundle))
    line = one_line(err)
    assert code == 2 and line.startswith("error: BUNDLE_DIR: ") and needle in line, line
    assert listing(tmp_path) == before  # no .flwr home, nothing started


@pytest.mark.parametrize("bad", ["not json", "[]", '{"device_index": 1}',
                                 '{"device_index": "1", "device_id": 2}',
                                 '{"device_index": 1e400, "device_id": 2}'])
def test_one_bad_bundle_is_skipped_by_name_and_the_others_still_sign(tmp_path, caplog,
                                                                     bad) -> None:
    for name, text_ in (("good", json.dumps({"device_index": 0, "device_id": 7})),
                        ("bad", bad)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "device.json").write_text(text_)
        (tmp_path / name / "device.key").write_text("key")
    simulated_bundles.cache_clear()
    with caplog.at_level(logging.WARNING, logger="fedmsr.node"):
        found = simulated_bundles(str(tmp_path))
    assert found == {0: (7, str(tmp_path / "good" / "device.key"))}
    assert f"skipping bundle {tmp_path / 'bad'}" in caplog.text
    simulated_bundles.cache_clear()


# -- checkpoints -------------------------------------------------------------------------------


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize("case, needle", [
    ("absolute-arrays-file", "arrays_file must be 'round-0002.npz'"),
    ("parent-arrays-file", "arrays_file must be 'round-0002.npz'"),
    ("negative-round", "server_round must be the file's round 2, got -3"),
    ("huge-round", "server_round must be the file's round 2, got inf"),
    ("other-round", "server_round must be the file's round 2, got 7"),
    ("pickle-blob", "not a checkpoint's .npz arrays"),
    ("npy-blob", "not a checkpoint's .npz arrays (not an .npz archive)"),
    ("object-array", "not a checkpoint's .npz arrays"),
    ("text-array", "array 'w' has dtype <U1, not numeric"),
])
def test_a_bad_checkpoint_is_named_and_the_previous_one_used(tmp_path, case, needle) -> None:
    for server_round in (1, 2):
        save_checkpoint(tmp_path, Checkpoint(server_round, {"w": np.full(4, server_round,
                                                                         dtype=np.float32)}))
    secret = tmp_path / "secret.npz"  # what an absolute arrays_file would read instead
    secret_blob = _npz({"w": np.full(4, 99.0, dtype=np.float32)})
    secret.write_bytes(secret_blob)
    meta_path = tmp_path / "checkpoints" / "round-0002.json"
    meta = json.loads(meta_path.read_text())
    blob = None
    if case == "absolute-arrays-file":
        meta.update(arrays_file=str(secret), arrays_sha256=hashlib.sha256(secret_blob).hexdigest())
    elif case == "parent-arrays-file":
        meta.update(arrays_file="../secret.npz",
                    arrays_sha256=hashlib.sha256(secret_blob).hexdigest())
    elif case == "negative-round":
        meta["server_round"] = -3
    elif case == "other-round":
        meta["server_round"] = 7
    elif case == "pickle-blob":
        blob = pickle.dumps({"w": [1, 2, 3]})
    elif case == "npy-blob":
        blob = _npy(np.ones(4, dtype=np.float32))
    elif case == "object-array":  # pickled inside the archive: never unpickled
        blob = _npz({"w": np.array([{"a": 1}, None], dtype=object)})
    elif case == "text-array":
        blob = _npz({"w": np.array(["a", "b"])})
    if blob is not None:  # its checksum matches: only the content check can refuse it
        (tmp_path / "checkpoints" / "round-0002.npz").write_bytes(blob)
        meta["arrays_sha256"] = hashlib.sha256(blob).hexdigest()
    encoded = json.dumps(meta)
    if case == "huge-round":
        encoded = encoded.replace('"server_round": 2', '"server_round": 1e400')
    meta_path.write_text(encoded)
    skipped: list[str] = []
    ckpt = latest_checkpoint(tmp_path, skipped)
    assert ckpt is not None and ckpt.server_round == 1
    np.testing.assert_array_equal(ckpt.arrays["w"], np.ones(4, dtype=np.float32))
    assert len(skipped) == 1 and "round-0002" in skipped[0] and needle in skipped[0], skipped
    assert "\n" not in skipped[0]


def test_a_partial_ledger_report_at_check_in_is_refused_not_read_as_none() -> None:
    """A device that drops `ledger_epsilon` but keeps the rest of its report must not pass
    as a device without a ledger (the server would then skip the comparison)."""
    from privacy.wire.budget import LedgerReport
    from privacy.wire.checkin import CheckinAnswer

    full = CheckinAnswer(device=0, in_fleet=True, num_clips=4,
                         ledger=LedgerReport(1.5, 1e-5, 3)).to_record()
    assert CheckinAnswer.from_record(full).ledger == LedgerReport(1.5, 1e-5, 3)
    partial = {k: v for k, v in full.items() if k != "ledger_epsilon"}
    with pytest.raises(ValueError, match="missing ledger_epsilon"):
        CheckinAnswer.from_record(partial)
