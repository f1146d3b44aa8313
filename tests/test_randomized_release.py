"""Randomized release of uploaded representations, end to end on the device and the server:
the device reserves the release on its own DP ledger before the batch exists and refuses
past a cap; what it sends has exactly the mechanism's noise (production CSPRNG, measured);
the server reserves the event before asking and never under-counts."""

from __future__ import annotations

import math

import numpy as np
import pytest

import fl_client.uploads as uploads
from fl_client.clip_source import Capture, SyntheticSource
from fl_client.device_ledger import DeviceLedger
from fl_client.info_ledger import InfoLedger
from fl_client.uploads import UploadRefused, answer_upload
from privacy.accounting import EventKind
from privacy.encoder import EncoderConfig, build_model, encode, load_numpy_state
from privacy.payload import decode_payload
from privacy.release_mechanism import GaussianRelease, calibrate_release
from privacy.synthetic import FleetSpec
from privacy.wire.upload import UploadRequest, batch_size, decode_batch, encoder_version
from tests.test_representations import arrays  # noqa: F401  (the fixture: clipped means)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
MODEL = EncoderConfig()
SPEC = FleetSpec(seed=1, num_devices=4, days=6, clips_per_day=8)
M = 8
DELTA = 1e-5
RELEASE = GaussianRelease(clip_norm=1.0, noise_multiplier=0.8)


def released_request(arrays, *, release: GaussianRelease = RELEASE, dtype: str = "float32",
                     registry_cap: float = 0.0, server_round: int = 3) -> UploadRequest:
    return UploadRequest("run-r", server_round, 1, M, dtype, encoder_version(MODEL, arrays),
                         0.0, 0, release_clip=release.clip_norm,
                         release_noise=release.noise_multiplier,
                         release_epsilon_cap=registry_cap)


def means(arrays, frames: np.ndarray) -> np.ndarray:
    model = build_model(MODEL)
    load_numpy_state(model, arrays)
    return np.asarray(encode(model, frames)[0], np.float64)


def answer(arrays, req: UploadRequest, capture: Capture, state, ledger: DeviceLedger) -> bytes:
    return answer_upload(req, MODEL, arrays, capture, InfoLedger.at(state), None,
                         np.random.default_rng(0), ledger)


# -- the device ----------------------------------------------------------------------------


def test_the_release_is_on_the_dp_ledger_before_the_batch_exists(arrays, tmp_path,
                                                                  monkeypatch) -> None:
    """A crash while the batch is being encoded (after privatizing) leaves the event of all
    M slots on the device's DP ledger, on disk: the crash over-counts, never under-counts."""
    ledger = DeviceLedger.create(tmp_path, None, DELTA)
    capture = SyntheticSource(SPEC, 0).capture(1, M)

    def crash(_batch):
        raise RuntimeError("power lost while encoding the batch")

    monkeypatch.setattr(uploads, "encode_batch", crash)
    with pytest.raises(RuntimeError, match="power lost"):
        answer(arrays, released_request(arrays), capture, tmp_path, ledger)
    [release] = DeviceLedger.open(tmp_path).releases
    assert (release.run_id, release.round_number) == ("run-r", 3)
    assert release.event == RELEASE.event(M)
    assert release.event.kind is EventKind.RANDOMIZED_RELEASE


def test_a_request_answered_twice_is_charged_twice(arrays, tmp_path) -> None:
    """Every answer draws fresh noise: the same request answered again is a second release."""
    ledger = DeviceLedger.create(tmp_path, None, DELTA)
    capture = SyntheticSource(SPEC, 0).capture(1, M)
    first = decode_batch(answer(arrays, released_request(arrays), capture, tmp_path, ledger))
    second = decode_batch(answer(arrays, released_request(arrays), capture, tmp_path, ledger))
    assert first.records[0].payload != second.records[0].payload
    assert [r.event for r in DeviceLedger.open(tmp_path).releases] == [RELEASE.event(M)] * 2


def test_the_device_refuses_a_release_past_its_own_or_the_registrys_cap(arrays,
                                                                         tmp_path) -> None:
    """Calibrated to epsilon 1 over M clips: one upload fits a cap of 1.2, a second (1.46)
    does not (own cap), and a registry cap below 1 refuses even the first. A refusal
    charges nothing and sends nothing."""
    release = calibrate_release(1.0, DELTA, M, clip_norm=1.0)
    capture = SyntheticSource(SPEC, 0).capture(1, M)
    own = DeviceLedger.create(tmp_path / "own", 1.2, DELTA)
    answer(arrays, released_request(arrays, release=release), capture, tmp_path / "own", own)
    with pytest.raises(UploadRefused, match=r"past its own cap epsilon=1\.2 .*refusing to upload"):
        answer(arrays, released_request(arrays, release=release, server_round=4), capture,
               tmp_path / "own", own)
    assert len(DeviceLedger.open(tmp_path / "own").releases) == 1
    assert InfoLedger.at(tmp_path / "own").total_clips == M

    registry = DeviceLedger.create(tmp_path / "reg", None, DELTA)
    with pytest.raises(UploadRefused, match=r"past the registry's cap epsilon=0\.9 "):
        answer(arrays, released_request(arrays, release=release, registry_cap=0.9), capture,
               tmp_path / "reg", registry)
    assert DeviceLedger.open(tmp_path / "reg").releases == ()
    assert InfoLedger.at(tmp_path / "reg").total_bits == 0


def test_released_vectors_carry_exactly_the_mechanisms_noise(arrays, tmp_path) -> None:
    """Production noise (OS CSPRNG, no seed): undo the public scale, subtract the clipped
    mean (the zero vector for dummies); what is left has mean 0 and the stated std."""
    full = SyntheticSource(SPEC, 1).capture(1, M)
    short = Capture(full.frames[:3], full.days[:3], full.hours[:3], full.clip_ids[:3])
    clipped = RELEASE.clip(means(arrays, full.frames))
    assert np.allclose(np.linalg.norm(clipped, axis=1), RELEASE.clip_norm)  # all clipped
    ledger = DeviceLedger.create(tmp_path, None, DELTA)
    scale = RELEASE.scale(MODEL.latent_dim)
    residuals, sizes = [], set()
    for i in range(12):
        capture = full if i % 2 else short
        blob = answer(arrays, released_request(arrays, server_round=1 + i), capture, tmp_path,
                      ledger)
        sizes.add(len(blob))
        batch = decode_batch(blob)
        real = len(capture.clip_ids)
        assert [r.real for r in batch.records] == [True] * real + [False] * (M - real)
        y = np.stack([decode_payload(r.payload) for r in batch.records]).astype(np.float64)
        expected = np.zeros_like(y)
        expected[:real] = clipped[:real]
        residuals.append(y / scale - expected)
    noise = np.concatenate(residuals)
    n = noise.size
    assert abs(noise.mean()) < 4 * RELEASE.std / math.sqrt(n)
    assert noise.std() == pytest.approx(RELEASE.std, rel=0.05)
    # Sizes depend on the request alone, and equal a sampled upload's.
    assert sizes == {batch_size(M, MODEL.latent_dim, "float32")}
    # Dummies are not one constant payload: each is the zero vector with its own noise.
    dummies = [r.payload for r in decode_batch(answer(
        arrays, released_request(arrays, server_round=99), short, tmp_path, ledger)).records[3:]]
    assert len(set(dummies)) == M - 3


def test_the_information_charge_is_the_content_independent_bound(arrays, tmp_path) -> None:
    """Each real clip costs information_bits(D), whatever it shows (two devices, other
    content, the same charge); dummies cost nothing."""
    bits = []
    for index, real in ((0, 3), (2, 3), (1, M)):
        full = SyntheticSource(SPEC, index).capture(1, M)
        capture = Capture(full.frames[:real], full.days[:real], full.hours[:real],
                          full.clip_ids[:real])
        state = tmp_path / str(index)
        ledger = DeviceLedger.create(state, None, DELTA)
        batch = decode_batch(answer(arrays, released_request(arrays), capture, state, ledger))
        assert batch.bits == math.ceil(real * RELEASE.information_bits(MODEL.latent_dim))
        bits.append(batch.bits)
    assert bits[0] == bits[1] < bits[2]


def test_old_requests_decode_as_sampled_uploads(arrays) -> None:
    req = released_request(arrays)
    record = req.to_record()
    for key in ("release-clip", "release-noise", "release-epsilon-cap"):
        del record[key]
    old = UploadRequest.from_record(record)
    assert not old.randomized and old.release_clip == old.release_noise == 0.0
    assert UploadRequest.from_record(req.to_record()) == req
    with pytest.raises(ValueError, match="release-clip and release-noise are both"):
        UploadRequest("r", 1, 1, M, "int8", "0" * 64, 0.0, 0, release_clip=1.0)


# -- end to end ----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_collection_run_with_release_epsilon_charges_both_ledgers(tmp_path) -> None:
    """`fedmsr run --release-epsilon 4` on the simulation engine, 2 collections of 8 clips:
    sigma calibrated over the 16 planned clips; each asked device has one committed
    randomized-release row per collection on the registry ledger and the same releases on
    its own; the device with epsilon cap 3 fits the first upload (2.69) but not the second
    (4.0): it is asked once, then left out with an audited reason."""
    from sqlalchemy import text

    from fl_server.enrollment import BundleOptions, DeviceSpec, enroll
    from fl_server.registry import db
    from tests.helpers import SMALL, fedmsr, history
    from tests.test_release_ledger import gaussian_epsilon

    url = f"sqlite:///{tmp_path / 'registry.db'}"
    db.upgrade(url)
    enroll(url, [DeviceSpec("d-0"), DeviceSpec("d-1"), DeviceSpec("tight", epsilon_cap=3.0)],
           BundleOptions(bundles_dir=tmp_path / "devices"))
    result = fedmsr("--db", url, "run", "--devices", "3", "--rounds", "2", "--seed", "3",
                    *SMALL, "--collect-every", "1", "--collect-clips", str(M),
                    "--release-epsilon", "4", "--runs-dir", str(tmp_path / "runs"),
                    "--run-id", "rel", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = calibrate_release(4.0, DELTA, 2 * M, 1.0)
    assert f"randomized release sigma={expected.noise_multiplier:.4g}" in result.stdout
    with db.get_engine(url).connect() as c:
        rows = c.execute(text(
            "SELECT d.name, p.round_number, p.kind, p.sample_rate, p.noise_multiplier, "
            "p.steps, p.status FROM privacy_events p JOIN devices d ON d.id = p.device_id "
            "ORDER BY d.name, p.round_number")).all()
        info = c.execute(text(
            "SELECT d.name, l.collection_round FROM information_ledger l JOIN devices d ON "
            "d.id = l.device_id")).all()
        refused = c.execute(text("SELECT detail FROM audit_log WHERE action = "
                                 "'budget.release-refused'")).scalars().all()
    sigma = expected.noise_multiplier
    assert [tuple(r) for r in rows] == [
        (name, r, "randomized-release", 1.0, pytest.approx(sigma), M, "committed")
        for name, r in (("d-0", 1), ("d-0", 2), ("d-1", 1), ("d-1", 2), ("tight", 1))]
    assert sorted(tuple(r) for r in info) == [("d-0", 1), ("d-0", 2), ("d-1", 1), ("d-1", 2),
                                             ("tight", 1)]
    assert len(refused) == 1 and "epsilon cap 3" in refused[0]
    last = history(tmp_path / "runs" / "rel")[-1]
    assert "epsilon cap 3" in last["collection"]["skipped"]["2"]
    # The fleet's release epsilon after the last collection: d-0 and d-1 spent the whole
    # calibrated epsilon (16 clips), tight its first upload only (dp-accounting figures).
    full, first = (gaussian_epsilon(sigma, n, DELTA) for n in (2 * M, M))
    spent = last["release_epsilon"]
    assert spent["devices"] == 3 and spent["delta"] == DELTA
    assert full <= spent["max"] <= full * 1.005
    assert (2 * full + first) / 3 <= spent["mean"] <= (2 * full + first) / 3 * 1.005
    assert f"release eps max {spent['max']:.3g}" in result.stdout
    own = DeviceLedger.open(tmp_path / "devices" / "d-0" / "state")
    assert [(r.round_number, r.event) for r in own.releases] == [
        (1, expected.event(M)), (2, expected.event(M))]


@pytest.mark.parametrize(("args", "message"), [
    (["--release-epsilon", "2"], "--release-epsilon: randomizes the representations devices "
     "upload: turn collection on with --collect-every N"),
    (["--rounds", "2", "--collect-every", "1", "--collect-clips", "8", "--release-epsilon",
      "2", "--release-horizon", "10"], "--release-horizon: 10 clips is less than this run's "
     "planned uploads (16 = 2 collections x 8 clips): the run would pass its own epsilon"),
    (["--rounds", "2", "--collect-every", "1", "--release-epsilon", "2", "--release-clip",
      "0"], "--release-clip: must be a finite L2 norm > 0, got 0.0"),
    (["--rounds", "2", "--collect-every", "1", "--release-epsilon", "-1"],
     "--release-epsilon: must be a finite epsilon > 0 (or 0: off), got -1.0"),
])
def test_run_release_options_are_refused_in_one_line(args, message, tmp_path, capsys) -> None:
    from fl_server.cli import main

    assert main(["run", *args, "--runs-dir", str(tmp_path / "runs")]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [f"error: {message}"]
    assert not (tmp_path / "runs").exists()


def test_the_run_calibrates_the_release_over_its_planned_uploads() -> None:
    from fl_server.config import RunConfig
    from fl_server.dp_modes import budget_plan, release_of, with_calibrated_release

    cfg = RunConfig(rounds=4, collect_every=2, collect_clips=8, release_epsilon=3.0,
                    release_clip=0.5, run_id="r1").validate()
    calibrated = with_calibrated_release(cfg)
    assert calibrated.release_horizon_clips == 2 * 8
    assert release_of(calibrated) == calibrate_release(3.0, cfg.delta, 16, 0.5)
    assert budget_plan(calibrated) is not None  # devices are told where their ledgers are
    longer = with_calibrated_release(RunConfig(**{**cfg.__dict__, "release_horizon": 160}))
    assert longer.release_noise_multiplier > calibrated.release_noise_multiplier
    assert release_of(cfg) is None and budget_plan(RunConfig(run_id="r2")) is None
