"""`fedmsr representations export`: one encoder version's stored representations, decoded.

The registry is filled by the project's own code: real devices answer `query.upload`
(`fl_client.uploads.answer_upload`, a real encoder on synthetic clips), the collector's
rows go through `DatabaseStore` / `UnlinkableStore`, a device is erased with
`erase_device`. The exported arrays are compared with `decode_payload` of the stored bytes.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from sqlalchemy import text

from fl_client.clip_source import SyntheticSource
from fl_client.info_ledger import InfoLedger
from fl_client.uploads import answer_upload
from fl_server.cli import main
from fl_server.enrollment import BundleOptions, DeviceSpec, enroll
from fl_server.registry import db
from fl_server.representations import (
    DatabaseStore,
    NewRepresentation,
    NewUnlinkable,
    UnlinkableStore,
    erase_device,
)
from privacy.encoder import EncoderConfig, build_model, state_to_numpy
from privacy.payload import decode_payload
from privacy.synthetic import FleetSpec
from privacy.wire.upload import UploadRequest, decode_batch, encoder_version

pytestmark = pytest.mark.usefixtures("one_torch_thread")
MODEL = EncoderConfig()
SPEC = FleetSpec(seed=1, num_devices=3, days=4, clips_per_day=4)
M = 4


@pytest.fixture(scope="module")
def uploads() -> tuple[str, list[list]]:
    """Three devices' real upload batches (the real records of each), one encoder."""
    arrays = state_to_numpy(build_model(MODEL, seed=0))
    version = encoder_version(MODEL, arrays)
    batches = []
    for index in range(3):
        req = UploadRequest("run-x", 2, 1, M, "int8", version, 0.0, 0)
        with tempfile.TemporaryDirectory() as state:
            blob = answer_upload(req, MODEL, arrays, SyntheticSource(SPEC, index).capture(1, M),
                                 InfoLedger.at(Path(state)), None, np.random.default_rng(index))
        batches.append(decode_batch(blob).real)
    return version, batches


@pytest.fixture
def registry(registry_url, tmp_path, uploads, monkeypatch) -> tuple[str, str]:
    """cam-0 and cam-1 collected linkably, cam-1 then erased (and a row of its in-flight
    collection stored after the erasure), plus an unlinkable collection of cam-2's records;
    another encoder version beside them."""
    version, batches = uploads
    db.upgrade(registry_url)
    enroll(registry_url, [DeviceSpec(f"cam-{i}") for i in range(3)],
           BundleOptions(bundles_dir=tmp_path / "bundles"))

    def rows(device_id: int, records, round_number: int = 2, v: str = version):
        return [NewRepresentation(device_id, "run-x", round_number, r.clip_id, r.day, r.hour,
                                  r.payload, v) for r in records]

    with db.session_scope(registry_url) as session:
        DatabaseStore().add(session, rows(1, batches[0]) + rows(2, batches[1])
                            + rows(1, batches[0][:1], 4, "f" * 64))
    erase_device(registry_url, "cam-1")
    with db.session_scope(registry_url) as session:  # in flight when the erasure ran
        DatabaseStore().add(session, rows(2, batches[1][:1], 3))
        UnlinkableStore().add(session, [
            NewUnlinkable("run-u", 2, f"{i:032x}", None if i == 0 else 7, 7, r.payload, version)
            for i, r in enumerate(batches[2])])
    monkeypatch.setenv("FEDMSR_DB", registry_url)
    monkeypatch.setenv("FEDMSR_OPERATOR", "analyst")
    return registry_url, version


def _audit(url: str) -> list[dict]:
    with db.get_engine(url).connect() as c:
        return [json.loads(d) for (d,) in c.execute(text(
            "SELECT detail FROM audit_log WHERE action = 'representations.export' ORDER BY id"))]


def test_parquet_round_trip_withholds_the_erased_device_and_is_audited(registry, uploads,
                                                                       tmp_path, capsys):
    url, version = registry
    _, batches = uploads
    out = tmp_path / "reps.parquet"
    assert main(["representations", "export", "--encoder-version", version[:10],
                 "--format", "parquet", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "4 linkable row(s) from 1 device(s), 4 unlinkable row(s)" in said
    assert "1 row(s) of erased devices withheld" in said
    table = pq.read_table(out)
    assert table.schema.metadata[b"encoder_version"] == version.encode()
    cols = table.to_pydict()
    linkable = [i for i, c in enumerate(cols["collection"]) if c == "linkable"]
    unlinkable = [i for i, c in enumerate(cols["collection"]) if c == "unlinkable"]
    assert {cols["device_id"][i] for i in linkable} == {1}  # cam-1 (id 2) withheld, also late rows
    assert [cols["clip_id"][i] for i in linkable] == sorted(r.clip_id for r in batches[0])
    by_clip = {r.clip_id: r for r in batches[0]}
    for i in linkable:
        record = by_clip[cols["clip_id"][i]]
        assert np.array_equal(np.asarray(cols["z"][i], np.float32), decode_payload(record.payload))
        assert (cols["captured_day"][i], cols["captured_hour"][i]) == (record.day, record.hour)
        assert cols["pseudonym"][i] is None
    # unlinkable rows: no device, no clip, no hour; the pseudonym and the window only
    for i in unlinkable:
        assert cols["device_id"][i] is None and cols["clip_id"][i] is None
        assert cols["captured_hour"][i] is None and cols["pseudonym"][i] is not None
    by_pseudonym = {f"{i:032x}": r for i, r in enumerate(batches[2])}
    for i in unlinkable:
        expected = decode_payload(by_pseudonym[cols["pseudonym"][i]].payload)
        assert np.array_equal(np.asarray(cols["z"][i], np.float32), expected)
    assert sorted(cols["window_day"][i] for i in unlinkable if cols["window_day"][i] is not None) \
        == [7, 7, 7]
    (entry,) = _audit(url)
    assert entry["encoder_version"] == version and entry["format"] == "parquet"
    assert (entry["linkable_rows"], entry["unlinkable_rows"], entry["withheld_rows"]) == (4, 4, 1)
    assert entry["path"] == str(out.resolve())
    assert entry["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert out.stat().st_mode & 0o777 == 0o600  # the fleet's representations: owner only


def test_npz_round_trip_has_no_device_column_for_unlinkable_rows(registry, uploads, tmp_path):
    url, version = registry
    _, batches = uploads
    out = tmp_path / "reps.npz"
    assert main(["representations", "export", "--encoder-version", version, "--format", "npz",
                 "--out", str(out)]) == 0
    with np.load(out) as data:  # allow_pickle stays False: every array is plain
        assert str(data["encoder_version"]) == version
        z = data["linkable/z"]
        assert z.dtype == np.float32 and z.shape == (M, MODEL.latent_dim)
        expected = {r.clip_id: decode_payload(r.payload) for r in batches[0]}
        for clip, row in zip(data["linkable/clip_id"], z, strict=True):
            assert np.array_equal(row, expected[str(clip)])
        assert set(data["linkable/device_id"].tolist()) == {1}
        assert not any(k.startswith("unlinkable/") and "device" in k for k in data.files)
        assert data["unlinkable/z"].shape == (M, MODEL.latent_dim)
        assert sorted(data["unlinkable/window_day"].tolist()) == [-1, 7, 7, 7]
        got = {str(p): row for p, row in zip(data["unlinkable/pseudonym"], data["unlinkable/z"],
                                             strict=True)}
        assert all(np.array_equal(got[f"{i:032x}"], decode_payload(r.payload))
                   for i, r in enumerate(batches[2]))
    assert len(_audit(url)) == 1


def _refused(args: list[str], capsys) -> str:
    assert main(["representations", "export", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("registry_url", ["sqlite"], indirect=True)
def test_bad_input_is_one_line_exit_2_nothing_written(registry, tmp_path, capsys):
    url, version = registry
    out = tmp_path / "out.parquet"
    line = _refused(["--encoder-version", "0123456789abcdef", "--out", str(out)], capsys)
    assert line.startswith("error: --encoder-version: no stored representations of version")
    assert f"known: {version[:16]} (9 rows), {'f' * 16} (1 rows)" in line
    line = _refused(["--out", str(out)], capsys)
    assert line == (f"error: --encoder-version: give the encoder version to export; known: "
                    f"{version[:16]} (9 rows), {'f' * 16} (1 rows)")
    line = _refused(["--encoder-version", version[:20] + "x", "--out", str(out)], capsys)
    assert f"did you mean {version}?" in line
    line = _refused(["--encoder-version", version, "--format", "csv", "--out", str(out)], capsys)
    assert line == "error: --format: must be one of parquet, npz, got 'csv'"
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    line = _refused(["--encoder-version", version, "--out", str(blocker / "x.npz")], capsys)
    assert line.startswith("error: --out: folder") and "does not exist" in line
    if Path("/proc").is_dir():  # a folder nobody may create files in, not even root
        line = _refused(["--encoder-version", version, "--out", "/proc/reps.parquet"], capsys)
        assert line.startswith("error: --out: cannot write /proc/reps.parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "bundles", "registry.db"]
    existing = tmp_path / "old.npz"
    existing.write_bytes(b"keep me")
    line = _refused(["--encoder-version", version, "--out", str(existing)], capsys)
    assert line == f"error: --out: {existing} exists; pass --force to replace it"
    assert existing.read_bytes() == b"keep me" and _audit(url) == []
    assert main(["representations", "export", "--encoder-version", version, "--format", "npz",
                 "--out", str(existing), "--force"]) == 0
    with np.load(existing) as data:
        assert data["linkable/z"].shape[0] == M
    assert len(_audit(url)) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
