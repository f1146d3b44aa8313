"""Collection wired into a real federation: `fedmsr run --collect-every 1` on Flower's
simulation engine fills the representation store, both information ledgers and the leakage
curve; the metrics observer exports them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sqlalchemy import text

from fl_client.clip_source import SyntheticSource
from fl_client.info_ledger import FILE_NAME, InfoLedger
from fl_client.uploads import answer_upload
from fl_server.checkpoint import load_checkpoint
from fl_server.cli import main
from fl_server.collection import LEAKAGE_FILE, _check
from fl_server.config import ConfigError, RunConfig
from fl_server.enrollment import BundleOptions, DeviceSpec, enroll
from fl_server.registry import db
from monitoring.metrics import FedmsrMetrics
from monitoring.observer import MetricsObserver
from privacy.encoder import EncoderConfig, build_model, state_to_numpy
from privacy.payload import payload_size
from privacy.synthetic import FleetSpec
from privacy.wire.upload import UploadRequest, batch_size, decode_batch, encoder_version
from tests.helpers import PATIENT, SMALL, fedmsr, history, round_outcome, round_record

CLIPS = 8


def test_collection_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="collect_every"):
        RunConfig(rounds=2, collect_every=3).validate()
    with pytest.raises(ConfigError, match="collect_clips"):
        RunConfig(collect_every=1, collect_clips=2000).validate()
    with pytest.raises(ConfigError, match="info_bits_cap"):
        RunConfig(info_bits_cap=-1.0).validate()


def test_collection_without_a_registry_is_refused_before_anything_is_written(
        tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("FEDMSR_DB", raising=False)
    monkeypatch.chdir(tmp_path)  # no fedmsr.db here
    assert main(["run", "--devices", "2", "--rounds", "1", "--collect-every", "1",
                 "--runs-dir", str(tmp_path / "runs")]) == 2
    assert "--collect-every" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_observer_exports_information_bits_and_the_leakage_gain(tmp_path) -> None:
    metrics = FedmsrMetrics()
    observer = MetricsObserver(metrics)
    record = round_record(1, sampled=2, responded=2, devices=[0, 1], loss=1.0,
                          identity_acc=0.4, information_bits={"0": 24, "1": 40, "2": 0},
                          leakage={"identity": {"1": 0.5, "2": 0.6, "4": 0.8}})
    observer.round_finished(None, record)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in metrics.registry.collect() for s in family.samples}
    assert samples[("fedmsr_device_information_bytes_gsum", ())] == pytest.approx(64 / 8)
    assert samples[("fedmsr_device_information_bytes_gcount", ())] == 3
    gain = samples[("fedmsr_leakage_accumulation_gain_ratio", (("attack", "identity"),))]
    assert gain == pytest.approx(0.3)


@pytest.mark.slow
def test_a_run_with_collection_fills_store_ledgers_and_curve(tmp_path, monkeypatch,
                                                             capsys) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    db.upgrade(url)
    enroll(url, [DeviceSpec("d-0"), DeviceSpec("d-1"), DeviceSpec("tight", info_bits_cap=0.5)],
           BundleOptions(bundles_dir=tmp_path / "devices"))
    result = fedmsr("--db", url, "run", "--devices", "3", "--rounds", "2", "--seed", "3",
                    *SMALL, *PATIENT, "--collect-every", "1", "--collect-clips", str(CLIPS),
                    "--runs-dir", str(tmp_path / "runs"), "--run-id", "col", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "col"
    records = history(run_dir)
    model = EncoderConfig(**json.loads((run_dir / "final_model.json").read_text())["encoder"])
    # Independent: the version of each round's checkpointed model.
    versions = [encoder_version(model, load_checkpoint(
        run_dir / "checkpoints" / f"round-{r:04d}.json").arrays) for r in (1, 2)]
    assert versions[0] != versions[1]
    with db.get_engine(url).connect() as c:
        rows = c.execute(text(
            "SELECT d.name, r.collection_round, r.encoder_version, length(r.payload), "
            "r.payload_version FROM representations r JOIN devices d ON d.id = r.device_id"
        )).all()
        ledger = c.execute(text(
            "SELECT d.name, sum(l.bits), sum(l.clips), count(*) FROM information_ledger l "
            "JOIN devices d ON d.id = l.device_id GROUP BY d.name")).all()
        stops = c.execute(text("SELECT count(*) FROM audit_log WHERE action = "
                               "'information.stop'")).scalar()
        reports = c.execute(text("SELECT collection_round, encoder_version, devices, clips "
                                 "FROM leakage_reports ORDER BY collection_round")).all()
    per = {(name, r) for name, r, *_ in rows}
    assert per == {(n, r) for n in ("d-0", "d-1") for r in (1, 2)}
    assert len(rows) == 2 * 2 * CLIPS
    assert {(r, v) for _, r, v, *_ in rows} == {(1, versions[0]), (2, versions[1])}
    assert {(size, version) for *_, size, version in rows} == {(payload_size(32, "int8"), 1)}
    # The device with a 0.5-bit cap is never asked (any batch costs >= 1 bit); logged once.
    assert stops == 1 and not any(name == "tight" for name, *_ in rows)
    bits = {name: (int(b), int(n), k) for name, b, n, k in ledger}
    assert set(bits) == {"d-0", "d-1"} and all(n == 2 * CLIPS and k == 2
                                               for _, n, k in bits.values())
    for name, (total, _, _) in bits.items():  # the device's own ledger agrees
        own = json.loads((tmp_path / "devices" / name / "state" / FILE_NAME).read_text())
        assert own["total_bits"] == total == sum(u["bits"] for u in own["uploads"]) > 0
    assert [(r, v, d, n) for r, v, d, n in reports] == [
        (1, versions[0], 2, 2 * CLIPS), (2, versions[1], 2, 2 * CLIPS)]
    last = records[-1]
    assert last["information_bits"] == {"0": bits["d-0"][0], "1": bits["d-1"][0], "2": 0}
    assert set(last["collection"]["skipped"]) == {"2"}
    assert "cap" in last["collection"]["skipped"]["2"]
    assert last["collection"]["batch_bytes"] > 0 and last["collect_s"] > 0
    curves = last["leakage"]
    assert {"identity", "location", "routine"} <= set(curves)
    assert all("1" in c and 0.0 <= min(c.values()) <= max(c.values()) <= 1.0
               for c in curves.values())
    assert last["leakage_gain"] == pytest.approx(max(
        max(c.values()) - c["1"] for c in curves.values()))
    # Which attacks crossed the default alert level, recomputed from the curves.
    above = {name: max(c.values()) - c["1"] for name, c in curves.items()
             if max(c.values()) - c["1"] >= 0.1}
    assert last["leakage_crossed"]["alert"] == 0.1
    assert last["leakage_crossed"]["attacks"] == pytest.approx(above)
    assert last["leakage_flagged"] == bool(above)
    assert [e["round"] for e in json.loads((run_dir / LEAKAGE_FILE).read_text())] == [1, 2]
    monkeypatch.setenv("FEDMSR_DB", url)
    capsys.readouterr()
    assert main(["leakage", "show", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["report"]["round"] == 2 and shown["report"]["run_id"] == "col"
    assert np.isclose(shown["report"]["max_gain"], last["leakage_gain"])
    assert shown["report"]["crossed"] == sorted(above) and shown["report"]["alert"] == 0.1
    assert {d["name"]: d["bits"] for d in shown["devices"]} == {
        "d-0": bits["d-0"][0], "d-1": bits["d-1"][0], "tight": 0}
    assert main(["leakage", "show"]) == 0
    assert "PL(k)" in capsys.readouterr().out


def test_the_server_stores_only_the_batch_it_asked_for(tmp_path) -> None:
    """Another encoder's batch, another count, or a corrupted byte: rejected, not stored."""
    model = EncoderConfig()
    arrays = state_to_numpy(build_model(model, seed=0))
    version = encoder_version(model, arrays)
    capture = SyntheticSource(FleetSpec(seed=0, num_devices=2, days=3), 0).capture(1, 4)
    blob = answer_upload(UploadRequest("r", 1, 1, 4, "int8", version, 0.0, 0), model, arrays,
                         capture, InfoLedger.at(tmp_path), None, np.random.default_rng(0))
    batch, size = decode_batch(blob), batch_size(4, model.latent_dim, "int8")
    _check(batch, len(blob), size, 4, version)  # exactly what was asked for
    other = encoder_version(model, state_to_numpy(build_model(model, seed=1)))
    with pytest.raises(ValueError, match="made with encoder"):
        _check(batch, len(blob), size, 4, other)
    with pytest.raises(ValueError, match="asked for 8"):
        _check(batch, len(blob), batch_size(8, model.latent_dim, "int8"), 8, version)
    with pytest.raises(ValueError, match="checksum"):
        decode_batch(blob[:100] + bytes([blob[100] ^ 1]) + blob[101:])


def test_an_unknown_capture_hour_travels_and_is_stored_as_unknown(tmp_path) -> None:
    """Footage with a day but no hour: the record says unknown (not a made-up hour), the
    registry keeps NULL, and an hour outside 0..23 is refused at both ends."""
    from fl_server.registry.db import RegistryError, session_scope
    from fl_server.representations import DatabaseStore, NewRepresentation, RepresentationQuery
    from privacy.payload import encode_payload
    from privacy.wire.upload import Batch, UploadRecord, encode_batch

    payload = encode_payload(np.zeros(4, np.float32), "int8")
    records = (UploadRecord(payload, 3, None, "a", True), UploadRecord(payload, 3, 7, "b", True))
    decoded = decode_batch(encode_batch(Batch(records, "00" * 32, 2, 0, False)))
    assert [r.hour for r in decoded.records] == [None, 7]
    with pytest.raises(ValueError, match="hour must be 0..23 or None"):
        encode_batch(Batch((UploadRecord(payload, 3, 24, "a", True),), "00" * 32, 1, 0, False))
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    db.upgrade(url)
    enroll(url, [DeviceSpec("d-0")], BundleOptions(bundles_dir=tmp_path / "devices"))
    store = DatabaseStore()

    def row(clip: str, hour: int | None) -> NewRepresentation:
        return NewRepresentation(device_id=1, run_id="r", collection_round=1, clip_id=clip,
                                 captured_day=3, captured_hour=hour, payload=payload,
                                 encoder_version="v")

    with session_scope(url) as session:
        store.add(session, [row("a", None), row("b", 7)])
    with session_scope(url) as session:
        stored = store.select(session, RepresentationQuery("v", run_id="r"))
    assert sorted((r.clip_id, r.captured_hour) for r in stored) == [("a", None), ("b", 7)]
    with pytest.raises(RegistryError, match="captured_hour"), session_scope(url) as session:
        store.add(session, [row("c", 24)])


def _stored(separable: bool, hours: bool, seed: int = 0):
    """3 devices x 2 days x 16 clips of 8-d representations: each device's own mean (+
    noise) when `separable`, else one distribution for all."""
    from privacy.evaluation.leakage import Observed

    rng = np.random.default_rng(seed)
    means = rng.normal(0, 3.0, (3, 8)) if separable else np.zeros((3, 8))
    dev = np.repeat(np.arange(3), 32)
    day = np.tile(np.repeat([5, 6], 16), 3)
    hour = np.tile(np.arange(32) % 24, 3) if hours else np.full(96, -1)
    z = (means[dev] + rng.normal(0, 1.0, (96, 8))).astype(np.float32)
    return Observed(z, {"device": dev, "day": day, "hour": hour})


def test_the_upload_tracker_reidentifies_separable_devices_and_not_mixed_ones() -> None:
    from fl_server.leakage_tracker import track_uploads

    separable = track_uploads(_stored(True, hours=False), None, seed=0)
    mixed = track_uploads(_stored(False, hours=False), None, seed=0)
    assert separable.report is not None and mixed.report is not None
    assert separable.report["split"] == "capture days" and separable.devices == 3
    assert separable.report["curves"]["identity_set"][4] >= 0.9
    assert max(separable.report["curves"]["linkage_auc"].values()) >= 0.9
    # the same attack on devices whose representations do not differ: about chance (1/3)
    assert mixed.report["curves"]["identity_set"][4] <= 0.6
    assert min(mixed.report["curves"]["linkage_auc"].values()) <= 0.7
    # unknown hours: no routine attack; known hours spanning the day: routine is attacked
    assert "routine" not in separable.report["curves"]
    assert "routine" in track_uploads(_stored(True, hours=True), None, 0).report["curves"]


def test_eval_set_attributes_are_probed_against_chance() -> None:
    from fl_server.leakage_tracker import eval_attributes
    from privacy.evaluation.leakage import Observed

    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(4), 25)
    z = np.eye(4, 6)[y] * 4 + rng.normal(0, 0.5, (100, 6))
    noise = rng.integers(0, 4, 100)
    obs = Observed(z.astype(np.float32), {"device": y, "day": np.zeros(100, int), "wearer": y,
                                          "place": noise, "activity": y})
    half = np.arange(100) % 2 == 0
    fit = Observed(obs.z[half], {k: v[half] for k, v in obs.labels.items()})
    test = Observed(obs.z[~half], {k: v[~half] for k, v in obs.labels.items()})
    out = eval_attributes(fit, test, seed=0)
    assert set(out) == {"identity", "place"}  # not the utility label, not the camera
    assert out["identity"]["linear"] >= 0.95 and out["identity"]["chance"] <= 0.3
    assert out["place"]["linear"] <= 0.5  # labels independent of z: near chance (1/4)
