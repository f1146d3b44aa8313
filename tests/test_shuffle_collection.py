"""Unlinkable collection inside the server and the device: the request's keys on the wire,
the device's sealed reply (constant size, whatever it filmed), the collector's route through
a live in-process shuffler service and its crowd checks, the unlinkable store."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest

from fl_client.clip_source import Capture, SyntheticSource
from fl_client.info_ledger import InfoLedger
from fl_client.uploads import answer_upload, assemble, privatize, seal
from fl_server.collection import _check_sealed
from fl_server.config import ConfigError, RunConfig
from fl_server.registry import db
from fl_server.registry.db import session_scope
from fl_server.representations import UnlinkableStore
from fl_server.shuffler_service import make_server
from fl_server.unlinkable_collection import UnlinkableRoute, analyzer_key_path, reply_size
from privacy.encoder import EncoderConfig, build_model, state_to_numpy
from privacy.payload import payload_size
from privacy.shuffle.pin import ShufflerPin
from privacy.shuffle.sealed import generate_private_key, public_bytes
from privacy.shuffle.shuffler import Shuffler
from privacy.synthetic import FleetSpec
from privacy.wire.upload import UploadRequest, decode_sealed, encoder_version

MODEL = EncoderConfig()
ARRAYS = state_to_numpy(build_model(MODEL, seed=0))
VERSION = encoder_version(MODEL, ARRAYS)
SHUFFLER = generate_private_key()
PIN = ShufflerPin(public_bytes(SHUFFLER), 7)


def unlinkable_request(clips: int = 4, collection: int = 1, analyzer: bytes | None = None,
                       shuffler: bytes | None = None) -> UploadRequest:
    return UploadRequest("run-u", collection, collection, clips, "int8", VERSION, 0.0, 0,
                         analyzer_key=analyzer or public_bytes(generate_private_key()),
                         shuffler_key=shuffler or public_bytes(SHUFFLER),
                         time_granularity_days=7)


def test_request_keys_round_trip_and_ordinary_requests_stay_as_they_were():
    request = unlinkable_request()
    again = UploadRequest.from_record(request.to_record())
    assert again == request and again.unlinkable
    plain = replace(request, analyzer_key=b"", shuffler_key=b"", time_granularity_days=0)
    assert "shuffler-key" not in plain.to_record()  # an older device sees the old request
    assert not UploadRequest.from_record(plain.to_record()).unlinkable
    with pytest.raises(ValueError, match="go together"):
        replace(request, analyzer_key=b"")
    with pytest.raises(ValueError, match="shuffler-key must be a 32-byte"):
        replace(request, shuffler_key=b"x" * 31)


def test_device_reply_size_is_the_same_for_any_number_of_real_clips(tmp_path):
    source = SyntheticSource(FleetSpec(seed=0, num_devices=2, days=3), 0)
    full = source.capture(1, 4)
    sizes = set()
    for real in range(5):
        capture = Capture(full.frames[:real], full.days[:real], full.hours[:real],
                          full.clip_ids[:real])
        blob = answer_upload(unlinkable_request(), MODEL, ARRAYS, capture,
                             InfoLedger.at(tmp_path / str(real)), None, np.random.default_rng(0),
                             pin=PIN)
        reply = decode_sealed(blob)
        assert reply.clips == real and (reply.bits > 0) == (real > 0)
        sizes.add(len(blob))
    assert len(sizes) == 1
    assert sizes == {reply_size(4, payload_size(MODEL.latent_dim, "int8"))}
    with pytest.raises(ValueError, match="did not seal its records"):
        decode_sealed(answer_upload(replace(unlinkable_request(), analyzer_key=b"",
                                            shuffler_key=b""), MODEL, ARRAYS, full,
                                    InfoLedger.at(tmp_path / "plain"), None,
                                    np.random.default_rng(0)))
    reply = decode_sealed(blob)
    with pytest.raises(ValueError, match="asked for 8"):
        _check_sealed(reply, len(blob), len(blob) + 1, 8, VERSION)


@pytest.fixture
def live_shuffler():
    server = make_server(Shuffler(SHUFFLER, min_crowd=2), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def device_replies(route: UnlinkableRoute, reals: list[int], collection: int, tmp_path
                   ) -> tuple[dict[int, bytes], dict[int, int], dict[int, str]]:
    analyzer, shuffler = route.request_keys()
    source = SyntheticSource(FleetSpec(seed=0, num_devices=2, days=3), 1)
    blobs, real, labels = {}, {}, {}
    for node, count in enumerate(reals, start=11):
        full = source.capture(1, 4)
        privatized = privatize(MODEL, ARRAYS, full, 4, "int8", np.random.default_rng(node))
        batch = assemble(privatized, full, 4, count, 5 * count, 0, VERSION)
        request = unlinkable_request(4, collection, analyzer, shuffler)
        reply = decode_sealed(seal(batch, request, PIN))
        blobs[node], real[node] = reply.outer, reply.clips
        labels[node] = request.collection_label
    return blobs, real, labels


def test_route_stores_a_crowd_without_devices(tmp_path, live_shuffler, registry_url):
    cfg = RunConfig(collect_every=1, shuffler=live_shuffler, min_crowd=2,
                    runs_dir=str(tmp_path / "runs"), run_id="run-u").validate()
    route = UnlinkableRoute(cfg)
    assert analyzer_key_path(cfg).exists()
    blobs, real, labels = device_replies(route, [2, 3, 0], 1, tmp_path)
    routed = route.route(1, 1, VERSION, blobs, real, labels)
    assert routed.refused == {} and routed.figures["senders"] == 3
    assert routed.figures["stored"] == 5 and routed.figures["dummies"] == 7
    assert {r.window_day for r in routed.rows} <= {0, 7, 14}
    db.upgrade(registry_url)  # SQLite and PostgreSQL
    with session_scope(registry_url) as session:
        UnlinkableStore().add(session, routed.rows)
    with session_scope(registry_url) as session:
        stored = UnlinkableStore().select(session, "run-u", VERSION)
    assert sorted(r.pseudonym for r in stored) == sorted(r.pseudonym for r in routed.rows)
    assert not any(hasattr(r, "device_id") for r in stored)


def test_route_stores_nothing_when_too_few_devices_had_real_clips(tmp_path, live_shuffler):
    cfg = RunConfig(collect_every=1, shuffler=live_shuffler, min_crowd=2,
                    runs_dir=str(tmp_path / "runs"), run_id="run-u").validate()
    route = UnlinkableRoute(cfg)
    blobs, real, labels = device_replies(route, [3, 0, 0], 1, tmp_path)
    routed = route.route(1, 1, VERSION, blobs, real, labels)
    assert routed.rows == [] and "1 device(s) reported real clips" in routed.figures["refused"]
    # below the shuffler's crowd: the shuffler refuses, nothing stored
    blobs, real, labels = device_replies(route, [3], 2, tmp_path)
    routed = route.route(2, 2, VERSION, blobs, real, labels)
    assert routed.rows == [] and "fewer than min-crowd 2" in routed.figures["refused"]


def test_unlinkable_options_are_validated():
    with pytest.raises(ConfigError, match="collect-every"):
        RunConfig(shuffler="http://127.0.0.1:1").validate()
    with pytest.raises(ConfigError, match="http://HOST:PORT"):
        RunConfig(collect_every=1, shuffler="127.0.0.1:1").validate()
    with pytest.raises(ConfigError, match="time_granularity_days"):
        RunConfig(time_granularity_days=-1).validate()
    with pytest.raises(ConfigError, match="min_crowd"):
        RunConfig(min_crowd=1).validate()


def test_a_shuffler_that_is_down_is_one_config_error_before_any_request(tmp_path):
    """The collector fetches the shuffler's key before building any request; a shuffler
    that is down is a one-line ConfigError there (on which `collect` asks no device)."""
    from fl_server.collection import Collector

    cfg = RunConfig(collect_every=1, shuffler="http://127.0.0.1:9", min_crowd=2,
                    runs_dir=str(tmp_path / "runs"), run_id="run-u").validate()
    collector = Collector(cfg, f"sqlite:///{tmp_path / 'r.db'}")
    assert collector.unlinkable is not None
    with pytest.raises(ConfigError, match="unreachable"):
        collector.unlinkable.request_keys()


def test_route_checks_each_settings_label_alone(tmp_path, live_shuffler):
    """A device sent other settings is its own collection: its blob alone is below the
    crowd and nothing of it is stored, while the honest crowd is."""
    cfg = RunConfig(collect_every=1, shuffler=live_shuffler, min_crowd=2,
                    runs_dir=str(tmp_path / "runs"), run_id="run-u").validate()
    route = UnlinkableRoute(cfg)
    blobs, real, labels = device_replies(route, [2, 3], 5, tmp_path)
    analyzer, shuffler = route.request_keys()
    odd = replace(unlinkable_request(4, 5, analyzer, shuffler), time_granularity_days=14)
    source = SyntheticSource(FleetSpec(seed=0, num_devices=2, days=3), 1)
    full = source.capture(1, 4)
    batch = assemble(privatize(MODEL, ARRAYS, full, 4, "int8", np.random.default_rng(3)),
                     full, 4, 4, 20, 0, VERSION)
    blobs[99], real[99] = decode_sealed(seal(batch, odd, PIN)).outer, 4
    labels[99] = odd.collection_label
    routed = route.route(5, 5, VERSION, blobs, real, labels)
    assert routed.figures["collections"] == 2 and routed.figures["stored"] == 5
    assert "fewer than min-crowd 2" in routed.figures["refused"]


def test_route_checks_the_crowd_before_the_release_and_the_counts_after(tmp_path,
                                                                         live_shuffler):
    from fl_server.shuffler_service import ShufflerClient

    cfg = RunConfig(collect_every=1, shuffler=live_shuffler, min_crowd=2,
                    runs_dir=str(tmp_path / "runs"), run_id="run-u").validate()
    route = UnlinkableRoute(cfg)
    blobs, real, labels = device_replies(route, [3, 0, 0], 6, tmp_path)
    routed = route.route(6, 6, VERSION, blobs, real, labels)
    assert routed.rows == [] and "nothing released" in routed.figures["refused"]
    # the collector never asked for the release: the shuffler still holds the collection
    (label,) = set(labels.values())
    assert ShufflerClient(live_shuffler).release(label).senders == 3
    # charges that do not account for the rows (a device reporting 1 real clip that sealed
    # 2): nothing stored, the figures say why
    blobs, real, labels = device_replies(route, [2, 2], 7, tmp_path)
    routed = route.route(7, 7, VERSION, blobs, {**real, 11: 1}, labels)
    assert routed.rows == [] and routed.figures["stored"] == 0
    assert ("reported 3 real clip(s), the release opened 4 real record(s)"
            in routed.figures["refused"])
