"""Checkpoints: exact round trip, and a corrupt newest checkpoint falls back to the previous."""

from __future__ import annotations

import csv
import io
import json
import logging

import numpy as np
import pytest

from fl_server.checkpoint import (
    Checkpoint,
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from fl_server.history import read_history, write_history
from tests.helpers import round_record


def _ckpt(server_round: int) -> Checkpoint:
    rng = np.random.default_rng(server_round)
    return Checkpoint(server_round,
                      {"w": rng.normal(size=(3, 4)).astype(np.float32), "n": np.arange(3)},
                      {"rng": [3, [1, 2, 3], None]},
                      [{"round": r, "loss": 1.0 / r} for r in range(1, server_round + 1)])


def test_round_trip_is_exact(tmp_path) -> None:
    original = _ckpt(2)
    loaded = load_checkpoint(save_checkpoint(tmp_path, original))
    assert loaded.server_round == 2
    assert loaded.strategy_state == original.strategy_state
    assert loaded.history == original.history
    for name, value in original.arrays.items():
        assert loaded.arrays[name].dtype == value.dtype
        np.testing.assert_array_equal(loaded.arrays[name], value)


def test_latest_skips_corrupt_and_incomplete(tmp_path, caplog) -> None:
    for r in (1, 2, 3):
        save_checkpoint(tmp_path, _ckpt(r))
    assert latest_checkpoint(tmp_path).server_round == 3
    npz = tmp_path / "checkpoints" / "round-0003.npz"
    npz.write_bytes(npz.read_bytes()[:100])  # truncated
    with caplog.at_level(logging.WARNING):
        assert latest_checkpoint(tmp_path).server_round == 2
    assert "round-0003.npz" in caplog.text and "checksum" in caplog.text
    (tmp_path / "checkpoints" / "round-0002.json").write_text("{")  # corrupt metadata
    assert latest_checkpoint(tmp_path).server_round == 1
    with pytest.raises(CheckpointError, match="round-0002.json"):
        load_checkpoint(tmp_path / "checkpoints" / "round-0002.json")


def test_no_checkpoint_means_fresh_start(tmp_path) -> None:
    assert latest_checkpoint(tmp_path) is None


def test_history_files_agree(tmp_path) -> None:
    records = [round_record(1, loss=0.5, kl_bits=3.0, utility_acc=0.4, identity_acc=0.2,
                            wall_s=1.5, responded=3, future_key="kept")]
    write_history(tmp_path, records)
    assert read_history(tmp_path) == records
    assert json.loads((tmp_path / "history.json").read_text()) == [records[0].to_json()]
    assert records[0].to_json()["future_key"] == "kept"  # a newer writer's key survives
    header, row = (tmp_path / "history.csv").read_text().splitlines()
    assert header.split(",")[:6] == ["round", "loss", "kl_bits", "utility_acc", "identity_acc",
                                     "wall_s"]
    (parsed,) = csv.DictReader(io.StringIO((tmp_path / "history.csv").read_text()))
    assert parsed["round"] == "1" and parsed["responded"] == "3" and parsed["loss"] == "0.5"
    assert row.split(",")[0] == "1"
