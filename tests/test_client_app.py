"""Device-side message handling: instructions format, seeds, what a DP device releases."""

from __future__ import annotations

import dataclasses

import pytest
from flwr.app import ConfigRecord

from fl_client.release import reported_metrics
from fl_client.training_seed import training_seed
from privacy.encoder import EncoderConfig
from privacy.synthetic import FleetSpec
from privacy.wire.instructions import Instructions
from privacy.wire.train import TrainConfig


def _instructions(dp: bool = False) -> Instructions:
    return Instructions(server_round=3, fleet=FleetSpec(seed=1, num_devices=4, days=6),
                        model=EncoderConfig(), train=TrainConfig(dp_sgd=dp, seed=9), train_days=4)


def test_instructions_round_trip_through_a_config_record() -> None:
    original = _instructions(dp=True)
    record = original.to_record()
    assert isinstance(record, ConfigRecord)
    assert Instructions.from_record(record) == original
    assert list(original.days("train")) == [0, 1, 2, 3]
    assert list(original.days("eval")) == [4, 5]


@pytest.mark.parametrize("drop", ["server-round", "train-days", "fleet.seed"])
def test_malformed_instructions_name_the_key(drop: str) -> None:
    record = _instructions().to_record()
    del record[drop]
    with pytest.raises(ValueError, match="malformed instructions"):
        Instructions.from_record(record)


def test_train_days_must_leave_eval_days() -> None:
    bad = dataclasses.replace(_instructions(), train_days=6).to_record()
    with pytest.raises(ValueError, match="train-days"):
        Instructions.from_record(bad)


def test_seed_is_reproducible_without_dp_and_secret_with_it() -> None:
    plain = _instructions(dp=False)
    assert training_seed(plain, 2) == training_seed(plain, 2) != training_seed(plain, 3)
    dp = _instructions(dp=True)
    assert len({training_seed(dp, 2) for _ in range(8)}) == 8


def test_dp_device_reports_only_plan_determined_metrics() -> None:
    metrics = {"loss": 1.2, "kl_bits": 3.0, "utility_loss": 1.0, "steps": 4.0,
               "train_seconds": 0.3, "sample_rate": 0.5}
    assert reported_metrics(metrics, dp_sgd=False) == metrics
    # Under DP the timing is coarsened to whole seconds (rounded up).
    assert reported_metrics(metrics, dp_sgd=True) == {"steps": 4.0, "train_seconds": 1.0,
                                                     "sample_rate": 0.5}


def test_a_redone_dp_round_reproduces_its_release_and_new_inputs_get_new_noise(tmp_path) -> None:
    """With a device secret, the DP seed is HMAC(secret, run, round, device, inputs): the
    same round redone after a server crash is the same release (the ledgers' single event is
    exact), other inputs or another device's secret give independent seeds."""
    from fl_client.training_seed import training_secret

    dp = _instructions(dp=True)
    secret = training_secret(tmp_path / "dev")
    assert training_secret(tmp_path / "dev") == secret and len(secret) == 32
    assert oct((tmp_path / "dev" / "dp-training.secret").stat().st_mode & 0o777) == "0o600"
    seed = training_seed(dp, 2, secret, "run-a", b"inputs")
    assert seed == training_seed(dp, 2, secret, "run-a", b"inputs")
    others = {training_seed(dp, 2, secret, "run-a", b"other inputs"),
              training_seed(dp, 2, secret, "run-b", b"inputs"),
              training_seed(dp, 3, secret, "run-a", b"inputs"),
              training_seed(dp, 2, training_secret(tmp_path / "dev2"), "run-a", b"inputs")}
    assert seed not in others and len(others) == 4
    (tmp_path / "dev" / "dp-training.secret").write_bytes(b"short")
    with pytest.raises(Exception, match="corrupt"):
        training_secret(tmp_path / "dev")


@pytest.mark.parametrize(("clips_per_day", "days", "train_days", "device"),
                         [(4, 2, 1, 0), (8, 6, 4, 3), (3, 5, 2, 1)])
def test_a_synthetic_check_in_counts_exactly_the_clips_training_uses(
        clips_per_day, days, train_days, device) -> None:
    """The check-in counts a synthetic device's clips without rendering them; the count
    is what training then renders and uses (it plans the DP-SGD sample rate)."""
    from flwr.app import Context, RecordDict

    from fl_client.local_clips import training_clip_count, training_clips

    instructions = dataclasses.replace(
        _instructions(), fleet=FleetSpec(seed=2, num_devices=4, days=days,
                                         clips_per_day=clips_per_day), train_days=train_days)
    context = Context(run_id=1, node_id=1, node_config={"partition-id": device},
                      state=RecordDict(), run_config={})
    rendered = training_clips(instructions, context).x.shape[0]
    assert training_clip_count(instructions, context) == rendered == clips_per_day * train_days
