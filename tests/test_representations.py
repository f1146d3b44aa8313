"""Representation upload (device side), the information ledger, the representation store
and consent erasure.

The device half runs the real `query.upload` handler on real synthetic clips; the store,
ledger and erase tests run on SQLite and PostgreSQL (`registry_url`). Information figures
are checked against a KL computed here from the encoder's posterior, not by the code
under test.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict
from flwr.common.serde import message_to_proto, recorddict_to_proto
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from fl_client.clip_source import Capture, SyntheticSource
from fl_client.handlers import upload
from fl_client.info_ledger import FILE_NAME, InfoLedger, InfoLedgerError, affordable
from fl_client.uploads import UploadRefused, answer_upload
from fl_server import information_ledger as server_ledger
from fl_server.cli import app, main
from fl_server.enrollment import BundleOptions, DeviceSpec, enroll
from fl_server.persisted_metrics import registry_snapshot
from fl_server.registry import db
from fl_server.registry.models import PrivacyEvent
from fl_server.representations import (
    DatabaseStore,
    MixedEncoderVersions,
    NewRepresentation,
    RepresentationQuery,
    erase_device,
)
from privacy.clips import ACTIVITIES
from privacy.encoder import (
    EncoderConfig,
    build_model,
    encode,
    load_numpy_state,
    state_to_numpy,
)
from privacy.payload import decode_payload, encode_payload, payload_size
from privacy.synthetic import FleetSpec, device_metas
from privacy.wire.arrays import record_of
from privacy.wire.instructions import Instructions
from privacy.wire.keys import BATCH_KEY, CONFIG_KEY, UPLOAD_KEY
from privacy.wire.train import TrainConfig
from privacy.wire.upload import UploadRequest, batch_size, decode_batch, encoder_version

pytestmark = pytest.mark.usefixtures("one_torch_thread")
MODEL = EncoderConfig()
SPEC = FleetSpec(seed=1, num_devices=4, days=6, clips_per_day=8)
M = 8


@pytest.fixture(scope="module")
def arrays() -> dict[str, np.ndarray]:
    """A model whose posterior means are large enough for rates of several bits per clip."""
    state = state_to_numpy(build_model(MODEL, seed=0))
    d = MODEL.latent_dim
    state["posterior_head.2.weight"][:d] *= 8.0
    state["posterior_head.2.bias"][:d] *= 8.0
    return state


def kl_bits_by_hand(arrays: dict[str, np.ndarray], frames: np.ndarray) -> np.ndarray:
    """Per-clip KL(N(mu, e^lv) || N(0, I)) in bits, from the encoder's posterior."""
    model = build_model(MODEL)
    load_numpy_state(model, arrays)
    mu, lv = (np.asarray(t, np.float64) for t in encode(model, frames))
    return 0.5 * (mu ** 2 + np.exp(lv) - 1.0 - lv).sum(axis=1) / math.log(2)


def request(arrays, collection: int = 1, cap: float = 0.0, server_bits: int = 0,
            version: str | None = None) -> UploadRequest:
    return UploadRequest("run-a", 3, collection, M, "int8",
                         version or encoder_version(MODEL, arrays), cap, server_bits)


def upload_message(arrays, req: UploadRequest, node: int) -> Message:
    instructions = Instructions(3, SPEC, MODEL, TrainConfig(), 4)
    content = RecordDict({"arrays": record_of(arrays), CONFIG_KEY: instructions.to_record(),
                          UPLOAD_KEY: req.to_record()})
    return Message(content=content, dst_node_id=node, message_type="query.upload")


def device(node: int, index: int, state_dir, **config) -> Context:
    return Context(run_id=1, node_id=node, state=RecordDict(), run_config={},
                   node_config={"partition-id": index, "state-dir": str(state_dir), **config})


# -- the upload reply -------------------------------------------------------------------


def test_reply_is_one_fixed_size_batch_whatever_was_filmed(arrays, tmp_path,
                                                           task_identity) -> None:
    """Four devices x two collections (other people, places, hours, activities): the reply
    holds exactly one byte string of the size the request fixes, and nothing else."""
    sizes, content_sizes, message_sizes, activities = set(), set(), {}, set()
    for index in range(4):
        for collection in (1, 2):
            msg = upload_message(arrays, request(arrays, collection), node=10 + index)
            reply = upload(msg, device(10 + index, index, tmp_path / f"dev{index}"))
            assert not reply.content.array_records and not reply.content.metric_records
            assert list(reply.content.config_records) == [BATCH_KEY]
            [(key, blob)] = reply.content.config_records[BATCH_KEY].items()
            assert key == BATCH_KEY and isinstance(blob, bytes)
            sizes.add(len(blob))
            content_sizes.add(recorddict_to_proto(reply.content).ByteSize())
            message_sizes.setdefault(index, set()).add(len(message_to_proto(reply)
                                                           .SerializeToString()))
            batch = decode_batch(blob)
            # Independent: collection c of a device is stream positions (c-1)M..cM-1
            # counted from the first day after the spec's days.
            first = (collection - 1) * M
            expected = [f"d{index:05d}-day{SPEC.days + p // 8:03d}-c{p % 8:03d}"
                        for p in range(first, first + M)]
            assert [r.clip_id for r in batch.records] == expected
            metas = {m.clip_id: m for m in device_metas(
                FleetSpec(**{**SPEC.__dict__, "days": SPEC.days + 2}), index,
                [SPEC.days, SPEC.days + 1])}
            assert [r.hour for r in batch.records] == [metas[i].hour for i in expected]
            activities.add(tuple(metas[i].activity for i in expected))
            for r in batch.records:  # only payload v1 bytes of the model's latent size
                assert len(r.payload) == payload_size(MODEL.latent_dim, "int8")
                assert decode_payload(r.payload).shape == (MODEL.latent_dim,)
    assert len(activities) > 4 and {a for t in activities for a in t} <= set(ACTIVITIES)
    assert sizes == {batch_size(M, MODEL.latent_dim, "int8")}
    assert len(content_sizes) == 1
    assert all(len(s) == 1 for s in message_sizes.values())


def test_a_short_capture_is_padded_with_dummies_to_the_same_size(arrays, tmp_path) -> None:
    full = SyntheticSource(SPEC, 0).capture(1, M)
    short = Capture(full.frames[:3], full.days[:3], full.hours[:3], full.clip_ids[:3])
    ledger = InfoLedger.at(tmp_path)
    blob = answer_upload(request(arrays), MODEL, arrays, short, ledger, None,
                         np.random.default_rng(0))
    assert len(blob) == batch_size(M, MODEL.latent_dim, "int8")
    batch = decode_batch(blob)
    assert [r.real for r in batch.records] == [True] * 3 + [False] * 5
    assert len({r.payload for r in batch.records[3:]}) == 1 and not batch.capped
    # Only the real clips are charged: the rounded-up sum of their KL rates.
    assert batch.bits == math.ceil(kl_bits_by_hand(arrays, full.frames[:3]).sum())
    assert InfoLedger.at(tmp_path).total_bits == batch.bits > 3


class _CountingRng:
    """A generator that records the shape of every draw (the device's random work)."""

    def __init__(self, seed: int) -> None:
        self._rng, self.draws = np.random.default_rng(seed), []

    def standard_normal(self, size, dtype=np.float64):
        self.draws.append((tuple(np.atleast_1d(size)), np.dtype(dtype).name))
        return self._rng.standard_normal(size, dtype=dtype)


def test_the_work_of_an_upload_does_not_depend_on_the_real_clips(arrays, tmp_path,
                                                                monkeypatch) -> None:
    """The timing claim, checked on what timing is made of: whatever the device holds (M
    real clips, 3 real clips, or M clips of which its cap lets 1 through), it runs the
    encoder once on M clips of the same shape and draws the same noise."""
    from fl_client import uploads

    calls: list[tuple] = []
    real_encode = uploads.encode

    def counting_encode(model, frames):
        calls.append((frames.shape, frames.dtype.name))
        return real_encode(model, frames)
    monkeypatch.setattr(uploads, "encode", counting_encode)
    full = SyntheticSource(SPEC, 0).capture(1, M)
    short = Capture(full.frames[:3], full.days[:3], full.hours[:3], full.clip_ids[:3])
    one_clip = math.ceil(kl_bits_by_hand(arrays, full.frames[:1]).sum()) + 0.5
    work = []
    for name, capture, cap in (("full", full, 0.0), ("short", short, 0.0),
                               ("capped", full, one_clip)):
        calls.clear()
        rng = _CountingRng(0)
        blob = answer_upload(request(arrays, cap=cap), MODEL, arrays, capture,
                             InfoLedger.at(tmp_path / name), None, rng)
        real = sum(r.real for r in decode_batch(blob).records)
        work.append((name, real, tuple(calls), tuple(rng.draws)))
    assert [real for _, real, _, _ in work] == [M, 3, 1]  # three different contents
    assert {(c, d) for _, _, c, d in work} == {(
        (((M, *full.frames.shape[1:]), "uint8"),), (((M, MODEL.latent_dim), "float32"),))}


def test_uploaded_z_is_a_fresh_sample_of_the_posterior(arrays, tmp_path) -> None:
    """Not mu: (z - mu) / sigma looks standard normal, and two uploads differ."""
    capture = SyntheticSource(SPEC, 1).capture(1, M)
    model = build_model(MODEL)
    load_numpy_state(model, arrays)
    mu, lv = encode(model, capture.frames)
    blobs = [answer_upload(request(arrays), MODEL, arrays, capture, InfoLedger.at(tmp_path),
                           None, np.random.default_rng(seed)) for seed in (1, 2)]
    z = [np.stack([decode_payload(r.payload) for r in decode_batch(b).records]) for b in blobs]
    assert not np.array_equal(z[0], z[1])
    inside = np.abs(mu) < 3.0  # away from the int8 clipping at 4
    r = ((z[0] - mu) / np.exp(0.5 * lv))[inside]
    assert r.size > 100 and abs(r.mean()) < 0.25 and 0.6 < (r ** 2).mean() < 1.5


def test_a_request_for_another_encoder_is_refused_before_anything_is_charged(
        arrays, tmp_path) -> None:
    capture = SyntheticSource(SPEC, 0).capture(1, M)
    with pytest.raises(UploadRefused, match="refusing to upload"):
        answer_upload(request(arrays, version="0" * 64), MODEL, arrays, capture,
                      InfoLedger.at(tmp_path), None, np.random.default_rng(0))
    assert not (tmp_path / FILE_NAME).exists()


# -- the device's information ledger ------------------------------------------------------


def test_affordable_prefix_and_rounded_up_charge() -> None:
    bits = np.array([2.2, 1.5, 3.1, 0.4])  # running sums 2.2 3.7 6.8 7.2 -> 3 4 7 8
    assert affordable(bits, 0, None) == (4, 8)
    assert affordable(bits, 0, 6) == (2, 4)
    assert affordable(bits, 3, 6) == (1, 3)
    assert affordable(bits, 4, 6) == (0, 0)


def test_device_refuses_past_its_cap_and_counts_from_the_servers_figure(arrays,
                                                                         tmp_path) -> None:
    capture = SyntheticSource(SPEC, 2).capture(1, M)
    rates = kl_bits_by_hand(arrays, capture.frames)
    cap = math.ceil(rates[:3].sum())  # room for three clips (the sum of three, rounded up)
    expected = max(n for n in range(M + 1) if math.ceil(rates[:n].sum()) <= cap)
    ledger = InfoLedger.at(tmp_path)
    first = decode_batch(answer_upload(request(arrays, cap=cap), MODEL, arrays, capture,
                                       ledger, None, np.random.default_rng(0)))
    assert len(first.real) == expected >= 3 and first.capped
    assert first.bits == math.ceil(rates[:expected].sum()) <= cap
    assert len(first.records) == M  # the refused clips' slots are dummies
    second = decode_batch(answer_upload(request(arrays, 2, cap=cap), MODEL, arrays,
                                        SyntheticSource(SPEC, 2).capture(2, M), ledger, None,
                                        np.random.default_rng(0)))
    assert second.real == () and second.bits == 0 and second.capped
    assert second.device_bits_before == first.bits
    assert InfoLedger.at(tmp_path).total_bits == first.bits
    # Its own (node config) cap wins when lower; the server's figure is a floor.
    fresh = InfoLedger.at(tmp_path / "other")
    own = decode_batch(answer_upload(request(arrays), MODEL, arrays, capture, fresh, 0.5,
                                     np.random.default_rng(0)))
    assert own.real == () and own.capped
    floor = decode_batch(answer_upload(request(arrays, cap=cap, server_bits=cap), MODEL, arrays,
                                       capture, fresh, None, np.random.default_rng(0)))
    assert floor.real == () and floor.device_bits_before == cap


def test_a_corrupt_information_ledger_is_refused_never_reset(arrays, tmp_path) -> None:
    ledger = InfoLedger.at(tmp_path)
    ledger.spend("r", 1, np.array([3.5]), None)
    path = tmp_path / FILE_NAME
    data = json.loads(path.read_text())
    data["uploads"][0]["bits"] = 0  # tampered: the checksum no longer matches
    path.write_text(json.dumps(data))
    with pytest.raises(InfoLedgerError, match="corrupt"):
        InfoLedger.at(tmp_path)
    with pytest.raises(InfoLedgerError, match="corrupt"):
        ledger.spend("r", 2, np.array([1.0]), None)


# -- the store, on both databases -------------------------------------------------------------


@pytest.fixture
def fleet(registry_url, tmp_path):
    db.upgrade(registry_url)
    enroll(registry_url, [DeviceSpec(f"cam-{i}") for i in range(2)],
           BundleOptions(bundles_dir=tmp_path / "bundles"))
    return registry_url


def rep(device_id: int, clip: str, version: str, round_number: int = 1) -> NewRepresentation:
    z = np.linspace(-1, 1, MODEL.latent_dim) * device_id
    return NewRepresentation(device_id, "run-a", round_number, clip, 6, 9,
                             encode_payload(z, "int8"), version)


def test_store_records_versions_and_refuses_to_mix_them(fleet) -> None:
    store, v1, v2 = DatabaseStore(), "a" * 64, "b" * 64
    with db.session_scope(fleet) as session:
        assert store.add(session, [rep(1, "c0", v1), rep(1, "c1", v1), rep(2, "c0", v2, 2)]) == 3
        assert store.add(session, [rep(1, "c0", v1)]) == 0  # a redone round stores nothing twice
    with db.session_scope(fleet) as session:
        with pytest.raises(MixedEncoderVersions, match="2 encoder versions"):
            store.select(session, RepresentationQuery(None))
        rows = store.select(session, RepresentationQuery(v1))
        assert [(r.device_id, r.clip_id, r.encoder_version, r.payload_version) for r in rows] \
            == [(1, "c0", v1, 1), (1, "c1", v1, 1)]
        assert np.allclose(decode_payload(rows[0].payload),
                           np.linspace(-1, 1, MODEL.latent_dim), atol=0.016)
        only = store.select(session, RepresentationQuery(None, device_ids=(2,)))
        assert [r.encoder_version for r in only] == [v2]
        assert store.versions(session) == {v1: 2, v2: 1}
    with pytest.raises(db.RegistryError, match="malformed payload"), \
            db.session_scope(fleet) as session:
        store.add(session, [NewRepresentation(1, "run-a", 1, "bad", 0, 0, b"xx", v1)])


def charge(device_id: int, round_number: int, bits: int, capped: bool = False,
           cap: float | None = None) -> server_ledger.Charge:
    return server_ledger.Charge(device_id, "run-a", round_number, "a" * 64, M, 4, bits, 0,
                                capped, cap)


def test_server_ledger_is_append_only_and_stops_requests_at_the_cap(fleet) -> None:
    with db.session_scope(fleet) as session:
        server_ledger.append(session, [charge(1, 1, 30), charge(1, 2, 25, True, 60.0),
                                       charge(2, 1, 10)])
    engine = db.get_engine(fleet)
    for statement in ("UPDATE information_ledger SET bits = 0", "DELETE FROM information_ledger"):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
            connection.execute(text(statement))
    with db.session_scope(fleet) as session:
        states = server_ledger.states(session, [1, 2])
        assert server_ledger.collected(session, "run-a", 2) == {1}
    assert (states[1].bits, states[1].clips, states[1].collections) == (55, 8, 2)
    assert states[1].capped_at == 60.0 and states[2].capped_at is None
    stop = server_ledger.stop_reason
    assert stop(states[1], 60.0, 1) is not None  # its own cap stopped it at this cap
    assert stop(states[1], 100.0, 40) is None  # the cap was raised: ask again
    assert stop(states[1], 100.0, 46) is not None  # 55 + 46 > 100
    assert stop(states[2], None, 10 ** 6) is None
    assert server_ledger.alert_level(100.0, 0.0) == 90.0
    assert server_ledger.effective_cap(50.0, 20.0) == 20.0
    assert server_ledger.effective_cap(None, 0.0) is None


def test_erase_deletes_representations_keeps_ledgers_and_is_audited(fleet, monkeypatch,
                                                                   capsys) -> None:
    store = DatabaseStore()
    with db.session_scope(fleet) as session:
        store.add(session, [rep(1, "c0", "a" * 64), rep(1, "c1", "a" * 64),
                            rep(2, "c0", "a" * 64)])
        server_ledger.append(session, [charge(1, 1, 12), charge(2, 1, 7)])
        session.add(PrivacyEvent(device_id=1, run_id="run-a", round_number=1,
                                 kind="local-dp-sgd", sample_rate=0.1, noise_multiplier=1.0,
                                 steps=4))
    monkeypatch.setenv("FEDMSR_DB", fleet)
    monkeypatch.setenv("FEDMSR_OPERATOR", "privacy-officer")
    assert main(["fleet", "erase", "nobody", "--yes"]) == 2
    assert "error: ID: no device 'nobody'" in capsys.readouterr().err
    declined = CliRunner().invoke(app, ["fleet", "erase", "cam-0"],
                                  input="n\n")
    assert declined.exit_code != 0 and "delete every stored representation" in declined.output
    with db.get_engine(fleet).connect() as c:  # declined: nothing deleted
        assert c.execute(text("SELECT count(*) FROM representations")).scalar() == 3
    assert main(["fleet", "erase", "cam-0", "--yes"]) == 0
    assert "erased 2 representation(s)" in capsys.readouterr().out
    with db.get_engine(fleet).connect() as c:
        remaining = c.execute(text("SELECT device_id, count(*) FROM representations "
                                   "GROUP BY device_id")).all()
        assert remaining == [(2, 1)]
        assert c.execute(text("SELECT count(*) FROM information_ledger")).scalar() == 2
        assert c.execute(text("SELECT count(*) FROM privacy_events")).scalar() == 1
        audit = c.execute(text("SELECT actor, detail FROM audit_log WHERE action = "
                               "'device.erase' AND device_id = 1")).one()
        assert audit[0] == "privacy-officer"
        assert json.loads(audit[1])["representations_deleted"] == 2
        consent = dict(c.execute(text("SELECT name, consent_evaluation FROM devices")).all())
        assert not consent["cam-0"] and consent["cam-1"]
    assert erase_device(fleet, "cam-0")["deleted"] == 0  # nothing left; audited again


def test_leakage_show_json_sums_the_ledger(fleet, monkeypatch, capsys) -> None:
    with db.session_scope(fleet) as session:
        server_ledger.append(session, [charge(1, 1, 12), charge(1, 2, 30, True, 40.0),
                                       charge(2, 1, 7)])
        DatabaseStore().add(session, [rep(1, "c0", "a" * 64)])
    monkeypatch.setenv("FEDMSR_DB", fleet)
    assert main(["leakage", "show", "--json"]) == 0
    fleet_view = json.loads(capsys.readouterr().out)
    assert fleet_view["report"] is None
    assert {d["name"]: (d["bits"], d["clips"], d["stored_representations"])
            for d in fleet_view["devices"]} == {"cam-0": (42, 8, 1), "cam-1": (7, 4, 0)}
    assert main(["leakage", "show", "cam-0", "--json"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert [(e["round"], e["bits"], e["capped"]) for e in one["ledger"]] == [
        (1, 12, False), (2, 30, True)]
    assert one["stored_representations"] == {"a" * 64: 1}
    assert main(["leakage", "show", "ghost"]) == 2
    # `fedmsr monitor` exports the same totals as the fleet distribution of bits.
    assert registry_snapshot(fleet).information_bits == [42.0, 7.0]
    assert main(["leakage", "show", "--run", "nope"]) == 2
