"""`fedmsr encoder export` and `fedmsr privatize`: the exported privatizer computes what
PyTorch computes, its payloads decode, its noise is fresh, and bad input is one line."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from fl_server.cli import main
from fl_server.config import RunConfig
from fl_server.history import write_history
from privacy.accounting import DpEvent, EventKind, pld_epsilon
from privacy.encoder import EncoderConfig, build_model, encode, state_to_numpy
from privacy.footage_samples import photographs, write_recording
from privacy.payload import INT8_MAX_ERROR, decode_payload, payload_size
from privacy.payload_file import decode_payload_file, encode_payload_file
from privacy.privatizer import PrivatizerError, load_privatizer
from privacy.privatizer_card import CARD_FILE, ModelCard
from privacy.secure_normal import secure_standard_normal
from privacy.wire.upload import encoder_version
from tests.helpers import round_record

LOCAL = {"device": 0, "sample_rate": 0.25, "noise_multiplier": 1.1, "steps": 4}
LOCAL_BUSY = {"device": 1, "sample_rate": 0.5, "noise_multiplier": 1.1, "steps": 8}
CENTRAL = {"population": 4, "drawn": 2, "denominator": 2.0, "noise_std": 0.5}


def _run_dir(root: Path, size: int, *, dp: bool = True, seed: int = 3) -> Path:
    """A run folder as `fedmsr run` leaves it: final model, run.json, history.json."""
    cfg = EncoderConfig(image_size=size)
    run = root / f"run-{size}-{'dp' if dp else 'plain'}"
    run.mkdir(parents=True)
    np.savez(run / "final_model.npz", **state_to_numpy(build_model(cfg, seed=seed)))
    (run / "final_model.json").write_text(json.dumps({"encoder": dataclasses.asdict(cfg)}))
    config = RunConfig(image_size=size, dp_sgd=dp, central_dp=dp, client_sample_rate=0.5,
                       central_noise_multiplier=2.0, runs_dir=str(root), run_id=run.name)
    config.validate().save(run / "run.json")
    events = {"dp_events": [LOCAL, LOCAL_BUSY], "central_dp": CENTRAL} if dp else {}
    write_history(run, [round_record(1, kl_bits=9.5, **events),
                        round_record(2, kl_bits=7.25, **events)])
    return run


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line_error(code: int, err: str, option: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"error: {option}: "), err
    return lines[0]


def _clips(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 8, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def video(root: Path) -> Path:
    """A real-pixel recording (a photograph panned for 40 frames) as an MJPG video."""
    import cv2

    photo = photographs()[0]
    frames = [cv2.cvtColor(photo[100 + 2 * i: 196 + 2 * i, 150 + 4 * i: 246 + 4 * i],
                           cv2.COLOR_RGB2BGR) for i in range(40)]
    write_recording(root / "walk.avi", frames, as_images=False)
    return root / "walk.avi"


@pytest.fixture(scope="module")
def exported(root: Path) -> dict[tuple[str, int], Path]:
    out = {}
    for size in (32, 64):
        run = _run_dir(root, size)
        for fmt in ("onnx", "torchscript"):
            folder = root / f"export-{fmt}-{size}"
            assert main(["encoder", "export", str(run), "--format", fmt, "--out", str(folder)]) == 0
            out[(fmt, size)] = folder
    return out


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("size", [32, 64])
def test_exported_posterior_matches_pytorch(exported, fmt: str, size: int):
    privatizer = load_privatizer(exported[(fmt, size)])
    reference = build_model(EncoderConfig(image_size=size), seed=3)
    clips = _clips(5, size, seed=size)  # not the batch size the graph was traced with
    mu, logvar = privatizer.posterior(clips)
    ref_mu, ref_logvar = encode(reference, clips)
    np.testing.assert_allclose(mu, ref_mu, atol=1e-4, rtol=0)
    np.testing.assert_allclose(logvar, ref_logvar, atol=1e-4, rtol=0)
    one_mu, _ = privatizer.posterior(clips[2:3])
    np.testing.assert_allclose(one_mu[0], ref_mu[2], atol=1e-4, rtol=0)


def test_model_card_names_the_model_and_the_run(exported, root: Path):
    folder = exported[("onnx", 32)]
    card = ModelCard.from_json((folder / CARD_FILE).read_text())
    raw = json.loads((folder / CARD_FILE).read_text())
    import hashlib

    assert card.model_sha256 == hashlib.sha256((folder / "privatizer.onnx").read_bytes()).hexdigest()
    run = root / "run-32-dp"
    with np.load(run / "final_model.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    assert card.encoder == EncoderConfig(image_size=32)
    assert card.encoder_version == encoder_version(card.encoder, arrays)
    assert raw["payload"] == {"version": 1, "dtype": "int8", "bytes_per_clip": payload_size(32, "int8")}
    assert raw["input"]["dtype"] == "uint8" and raw["input"]["shape"] == ["N", 8, 32, 32, 3]
    assert card.kl_rate.bits_per_clip == 7.25 and card.kl_rate.round == 2
    assert "synthetic" in card.kl_rate.measured_on
    # worst device: device 1's two DP-SGD rounds, plus two central rounds (q 0.5, sigma 2)
    busy = DpEvent(0.5, 1.1, 8)
    central = DpEvent(0.5, 2.0, 1, EventKind.CENTRAL_DP_FEDAVG)
    assert card.epsilon.delta == 1e-5
    assert card.epsilon.epsilon == pytest.approx(pld_epsilon([busy, busy, central, central], 1e-5))
    assert card.epsilon.epsilon > pld_epsilon([DpEvent(0.25, 1.1, 4)] * 2 + [central] * 2, 1e-5)


def test_run_without_dp_has_no_epsilon_and_says_why(root: Path, capsys):
    run = _run_dir(root, 32, dp=False)
    code, _, err = _cli(capsys, "encoder", "export", run, "--format", "torchscript",
                        "--out", root / "plain")
    assert code == 0, err
    raw = json.loads((root / "plain" / CARD_FILE).read_text())
    assert raw["epsilon"]["epsilon"] is None and "without DP" in raw["epsilon"]["how"]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_privatize_writes_payloads_near_mu_with_fresh_noise(exported, video: Path, root: Path,
                                                           capsys, fmt: str):
    model = exported[(fmt, 32)]
    outs = [root / f"{fmt}-{i}.msrp" for i in range(2)]
    for out in outs:
        code, _, err = _cli(capsys, "privatize", video, "--model", model, "--out", out)
        assert code == 0, err
    files = [decode_payload_file(out.read_bytes()) for out in outs]
    privatizer = load_privatizer(model)
    assert files[0].encoder_version == privatizer.card.encoder_version
    from privacy.footage import load_footage

    clips = np.stack([c.frames for c in load_footage(video, frames=8, image_size=32)])
    assert len(files[0].payloads) == len(clips) == 5
    assert outs[0].stat().st_size == 48 + 5 * payload_size(32, "int8")
    mu, logvar = privatizer.posterior(clips)
    zs = [np.stack([decode_payload(p) for p in f.payloads]) for f in files]
    sd = np.exp(0.5 * logvar)
    for z in zs:  # within 6 posterior standard deviations (+ quantisation) of mu
        inside = np.abs(np.clip(z, -4, 4) - np.clip(mu, -4, 4)) <= 6 * sd + INT8_MAX_ERROR
        assert inside.all()
    assert (zs[0] != zs[1]).mean() > 0.5  # fresh noise: two runs release different z


def test_secure_normal_is_standard_normal():
    raw = secure_standard_normal((200_001,))
    assert raw.shape == (200_001,) and raw.dtype == np.float32
    x = raw.astype(np.float64)
    assert abs(x.mean()) < 0.02 and abs(x.std() - 1) < 0.02
    assert abs((np.abs(x) < 1.959964).mean() - 0.95) < 0.01
    assert not np.array_equal(secure_standard_normal((8,)), secure_standard_normal((8,)))


def test_payload_file_refuses_a_flipped_byte():
    blob = encode_payload_file([bytes(44)] * 0, "ab" * 32)
    assert decode_payload_file(blob).payloads == ()
    real = encode_payload_file([b"\x00" * 44], "ab" * 32)
    with pytest.raises(ValueError, match="payload"):
        decode_payload_file(real)  # a record that is not a payload v1
    z = np.linspace(-1, 1, 32)
    from privacy.payload import encode_payload

    good = bytearray(encode_payload_file([encode_payload(z)] * 3, "cd" * 32))
    assert len(decode_payload_file(bytes(good)).payloads) == 3
    good[60] ^= 1
    with pytest.raises(ValueError, match="checksum"):
        decode_payload_file(bytes(good))


def test_a_modified_model_is_refused(exported, root: Path):
    import shutil

    folder = root / "tampered"
    shutil.copytree(exported[("onnx", 32)], folder)
    blob = bytearray((folder / "privatizer.onnx").read_bytes())
    blob[-10] ^= 0xFF
    (folder / "privatizer.onnx").write_bytes(bytes(blob))
    with pytest.raises(PrivatizerError, match="SHA-256"):
        load_privatizer(folder)


def test_bad_inputs_are_one_line_exit_2(exported, root: Path, video: Path, capsys, tmp_path):
    run = root / "run-32-dp"
    out = tmp_path / "x"
    code, _, err = _cli(capsys, "encoder", "export", tmp_path / "nope", "--out", out)
    assert "no such directory" in _one_line_error(code, err, "RUN_DIR")
    code, _, err = _cli(capsys, "encoder", "export", run, "--format", "tflite", "--out", out)
    assert "onnx, torchscript" in _one_line_error(code, err, "--format")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for name in ("final_model.json", "run.json", "history.json"):
        (corrupt / name).write_bytes((run / name).read_bytes())
    for garbage in (b"not a zip file at all", (run / "final_model.npz").read_bytes()[:200]):
        (corrupt / "final_model.npz").write_bytes(garbage)
        code, _, err = _cli(capsys, "encoder", "export", corrupt, "--out", out)
        assert "final_model" in _one_line_error(code, err, "RUN_DIR")
    assert not out.exists()  # nothing written
    model = exported[("onnx", 32)]
    bad_video = tmp_path / "broken.avi"
    bad_video.write_bytes(b"RIFF....AVI garbage")
    code, _, err = _cli(capsys, "privatize", bad_video, "--model", model, "--out", out)
    assert "broken.avi" in _one_line_error(code, err, "VIDEO_OR_DIR")
    code, _, err = _cli(capsys, "privatize", tmp_path / "missing.avi", "--model", model,
                        "--out", out)
    assert "does not exist" in _one_line_error(code, err, "VIDEO_OR_DIR")
    code, _, err = _cli(capsys, "privatize", video, "--model", tmp_path, "--out", out)
    assert CARD_FILE in _one_line_error(code, err, "--model")
    assert not out.exists()


def test_card_figures_without_run_json_or_history(root: Path, tmp_path):
    from fl_server.encoder_export import ExportInputError, read_run

    run = tmp_path / "bare"
    run.mkdir()
    source = root / "run-32-dp"
    for name in ("final_model.npz", "final_model.json"):
        (run / name).write_bytes((source / name).read_bytes())
    facts = read_run(run)
    assert facts.epsilon.epsilon is None and "run.json is missing" in facts.epsilon.how
    assert facts.kl_rate.bits_per_clip is None and "no finished round" in facts.kl_rate.measured_on
    (run / "history.json").write_text("[{\"round\": 1}]")
    with pytest.raises(ExportInputError, match="history.json"):
        read_run(run)
