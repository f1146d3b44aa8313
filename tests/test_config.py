"""RunConfig: every bad value is refused with the field's name; good ones round-trip."""

from __future__ import annotations

import json

import pytest

from fl_server.config import ConfigError, RunConfig


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"devices": 0}, "devices"),
        ({"rounds": -1}, "rounds"),
        ({"frames": 4}, "frames"),
        ({"image_size": 48}, "image_size"),
        ({"utility": "simclr"}, "utility"),
        ({"beta": -0.1}, "beta"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"dp_sgd": True, "noise_multiplier": 0.0}, "noise_multiplier"),
        ({"dp_sgd": True, "clip_norm": -1.0}, "clip_norm"),
        ({"fraction_train": 1.5}, "fraction_train"),
        ({"min_train_devices": 9}, "min_train_devices"),
        ({"eval_days": 1}, "eval_days"),
        ({"run_id": "../escape"}, "run_id"),
        ({"devices": True}, "devices"),
    ],
)
def test_bad_values_name_their_field(change: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig(**change).validate()
    assert info.value.field_name == field
    assert str(info.value).startswith(f"{field}:")


def test_json_round_trip(tmp_path) -> None:
    cfg = RunConfig(devices=3, rounds=2, seed=7, dp_sgd=True, run_id="r1").validate()
    cfg.save(tmp_path / "run.json")
    assert RunConfig.load(tmp_path / "run.json") == cfg


def test_unknown_key_and_bad_json_are_refused(tmp_path) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"devices": 3, "colour": "red"}))
    with pytest.raises(ConfigError, match="colour"):
        RunConfig.load(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        RunConfig.load(path)
    with pytest.raises(ConfigError, match="no run configuration"):
        RunConfig.load(tmp_path / "missing.json")


def test_flower_user_config_maps_names_and_types() -> None:
    cfg = RunConfig.from_user_config({"num-server-rounds": 2, "num-devices": 3, "beta": 0,
                                      "dp-sgd": False, "learning-rate": 1})
    assert (cfg.rounds, cfg.devices, cfg.beta, cfg.learning_rate) == (2, 3, 0.0, 1.0)
    assert isinstance(cfg.beta, float)
