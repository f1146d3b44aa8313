"""Identity-invariant training in a federated run: the optional discriminator record of a
train message, the device's use of it, the server's fit on collected representations, and
the run option (privacy/wire/instructions.py, fl_client/local_round.py,
fl_server/invariance.py, fl_server/round_plan.py, fl_server/config.py)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, RecordDict

from fl_client.local_round import run_local_round
from fl_client.training_seed import inputs_digest
from fl_server.config import ConfigError, RunConfig
from fl_server.invariance import UnlinkableStore, collected_version, fit_on_rows
from fl_server.round_plan import Plan
from privacy.encoder import EncoderConfig, build_model, state_to_numpy
from privacy.identity_adversary import Discriminator, fit_discriminator
from privacy.payload import encode_payload
from privacy.synthetic import FleetSpec
from privacy.wire.arrays import record_of
from privacy.wire.instructions import Instructions, discriminator_of, discriminator_record
from privacy.wire.train import TrainConfig
from tests.helpers import SMALL, fedmsr, history

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FLEET = FleetSpec(seed=3, num_devices=2, days=2, clips_per_day=4, frames=8, image_size=32)
MODEL = EncoderConfig()


def _discriminator(latent_dim: int = MODEL.latent_dim, seed: int = 0) -> Discriminator:
    rng = np.random.default_rng(seed)
    d = np.arange(40) % 3
    z = rng.normal(0, 1, (40, latent_dim)).astype(np.float32)
    z[np.arange(40), d] += 3
    return fit_discriminator(z, d, seed=seed)


def _instructions(weight: float) -> Instructions:
    return Instructions(server_round=1, fleet=FLEET, model=MODEL,
                        train=TrainConfig(batch_size=4, invariance_weight=weight), train_days=1)


def test_weight_travels_in_the_instructions_and_the_record_round_trips():
    sent = _instructions(2.5)
    back = Instructions.from_record(sent.to_record())
    assert back.train.invariance_weight == 2.5 and back == sent
    disc = _discriminator()
    got = discriminator_of(discriminator_record(disc), back.train)
    assert got is not None
    assert all(np.array_equal(got.to_arrays()[k], disc.to_arrays()[k]) for k in disc.to_arrays())


def test_a_device_refuses_a_record_that_does_not_match_the_weight():
    disc_record = discriminator_record(_discriminator())
    with pytest.raises(ValueError, match="without a discriminator record"):
        discriminator_of(None, _instructions(1.0).train)
    with pytest.raises(ValueError, match="record with train.invariance_weight 0"):
        discriminator_of(disc_record, _instructions(0.0).train)
    assert discriminator_of(None, _instructions(0.0).train) is None
    bad = record_of({"out.weight": np.zeros((3, 4), np.float32), "out.bias": np.zeros(2, np.float32)})
    with pytest.raises(ValueError, match="malformed instructions from the server: discriminator"):
        discriminator_of(bad, _instructions(1.0).train)
    with pytest.raises(ValueError, match="must be an ArrayRecord"):
        discriminator_of(ConfigRecord({"x": 1}), _instructions(1.0).train)  # type: ignore[arg-type]


def test_the_plan_sends_the_weight_only_with_a_discriminator():
    cfg = RunConfig(devices=2, rounds=2, collect_every=1, invariance_weight=3.0).validate()
    plan = Plan.from_config(cfg)
    assert Instructions.from_record(plan.instructions(1)).train.invariance_weight == 0.0
    assert Instructions.from_record(plan.instructions(1, invariance=True)).train.invariance_weight == 3.0


def test_the_option_needs_collection_and_a_sane_weight():
    with pytest.raises(ConfigError, match="invariance_weight: .*--collect-every"):
        RunConfig(rounds=2, invariance_weight=1.0).validate()
    with pytest.raises(ConfigError, match="invariance_weight: must be a finite number >= 0"):
        RunConfig(rounds=2, collect_every=1, invariance_weight=-1.0).validate()
    assert RunConfig(rounds=2, collect_every=1, invariance_weight=1.0).validate()


def _context() -> Context:
    return Context(run_id=1, node_id=7, node_config={"partition-id": 0}, state=RecordDict(),
                   run_config={})


def test_a_device_trains_against_the_shipped_discriminator():
    arrays = state_to_numpy(build_model(MODEL, seed=0))
    disc = discriminator_record(_discriminator())
    with_term = run_local_round(_instructions(5.0).to_record(), arrays, _context(), disc)
    without = run_local_round(_instructions(0.0).to_record(), arrays, _context())
    assert with_term.metrics["invariance_loss"] > 0 and "invariance_loss" not in without.metrics
    assert any(not np.array_equal(with_term.arrays[k], without.arrays[k]) for k in arrays)
    with pytest.raises(ValueError, match="without a discriminator record"):
        run_local_round(_instructions(5.0).to_record(), arrays, _context())


def test_the_discriminator_is_part_of_the_rounds_inputs():
    """A server re-sending a round with the same weights but another discriminator is a
    different release: the digest the device's DP noise and ledger key on must differ."""
    arrays = state_to_numpy(build_model(MODEL, seed=0))
    ins = _instructions(1.0)
    a, b = _discriminator(seed=0).to_arrays(), _discriminator(seed=1).to_arrays()
    assert inputs_digest(arrays, ins, a) == inputs_digest(arrays, ins, {k: v.copy() for k, v in a.items()})
    assert inputs_digest(arrays, ins, a) != inputs_digest(arrays, ins, b)
    assert inputs_digest(arrays, ins, a) != inputs_digest(arrays, ins)


def _rows(devices: list[int | None], n: int = 12, latent: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        dev = devices[i % len(devices)]
        z = rng.normal(0, 0.3, latent).astype(np.float32)
        if dev is not None:
            z[dev % latent] += 2.0
        rows.append(SimpleNamespace(device_id=dev, clip_id=f"c{i:03d}",
                                    payload=encode_payload(z, "int8")))
    return rows


def test_the_server_fits_on_device_tagged_rows_deterministically():
    rows = _rows([11, 42, 7])
    a = fit_on_rows(rows, "v1", seed=5)
    b = fit_on_rows(list(reversed(rows)), "v1", seed=5)  # the store's order does not matter
    assert not isinstance(a, str) and not isinstance(b, str)
    assert a.devices == 3 and a.clips == 12 and a.device_accuracy > 0.9
    assert a.discriminator.num_classes == 3 and a.discriminator.latent_dim == 8
    assert all(np.array_equal(a.discriminator.to_arrays()[k], b.discriminator.to_arrays()[k])
               for k in a.discriminator.to_arrays())
    assert a.figures()["encoder_version"] == "v1"
    reason = fit_on_rows(_rows([4]), "v1", seed=0)
    assert isinstance(reason, str) and ">= 2" in reason


def test_an_unlinkable_store_cannot_give_a_discriminator():
    with pytest.raises(UnlinkableStore, match="unlinkable.*--invariance-weight"):
        fit_on_rows(_rows([None, None]), "v1", seed=0)


def test_the_collected_version_is_read_back_from_a_round_record():
    assert collected_version({"collection": {"encoder_version": "abc"}}) == "abc"
    assert collected_version({}) is None and collected_version({"collection": {}}) is None


@pytest.mark.slow
def test_a_run_fits_the_discriminator_after_collection_and_trains_against_it(tmp_path: Path) -> None:
    """End to end: round 1 trains without the term (nothing collected yet); its collection
    fits the discriminator on the stored rows of two devices; round 2 trains against it
    (a round whose train message lacked the record would fail on the devices: see
    test_a_device_refuses_a_record_that_does_not_match_the_weight) and its collection
    fits the next one on the new encoder's rows."""
    from fl_server.enrollment import BundleOptions, DeviceSpec, enroll
    from fl_server.registry import db

    url = f"sqlite:///{tmp_path / 'registry.db'}"
    db.upgrade(url)
    enroll(url, [DeviceSpec("d-0"), DeviceSpec("d-1")], BundleOptions(bundles_dir=tmp_path / "devices"))
    result = fedmsr("--db", url, "run", "--devices", "2", "--rounds", "2", "--seed", "3", *SMALL,
                    "--collect-every", "1", "--collect-clips", "8", "--invariance-weight", "2",
                    "--runs-dir", str(tmp_path / "runs"), "--run-id", "inv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    records = history(tmp_path / "runs" / "inv")
    first, second = records
    assert first["invariance"]["devices"] == 2 and first["invariance"]["clips"] == 16
    assert first["invariance"]["encoder_version"] == first["collection"]["encoder_version"]
    assert 0.0 <= first["invariance"]["device_accuracy"] <= 1.0
    assert json.loads((tmp_path / "runs" / "inv" / "run.json").read_text())["invariance_weight"] == 2.0
    assert second["invariance"]["encoder_version"] != first["invariance"]["encoder_version"]
    # round 1 trained without the term, round 2's devices applied it (their mean penalty)
    assert "train_invariance" not in first and second["train_invariance"] > 0


def test_the_run_command_names_the_option_without_collection(tmp_path: Path) -> None:
    result = fedmsr("run", "--invariance-weight", "1", "--runs-dir", str(tmp_path), cwd=tmp_path)
    assert result.returncode != 0
    assert "--invariance-weight" in result.stderr and "--collect-every" in result.stderr
    assert not any(tmp_path.iterdir())



def test_a_resumed_run_refits_the_last_collections_discriminator():
    """After a crash the server has no discriminator in memory: it refits the one of the
    last collection in the checkpointed history (same rows, same seed: the same arrays)."""
    from fl_server.federation import _resumed_discriminator
    from tests.helpers import round_record

    rows = {"v1": _rows([1, 2]), "v2": _rows([1, 2, 3], seed=4)}
    asked: list[tuple[str, int]] = []

    class Store:  # what Collector.discriminator does, on rows in memory
        def discriminator(self, version: str, server_round: int):
            asked.append((version, server_round))
            return fit_on_rows(rows[version], version, seed=server_round)

    history = [round_record(1, collection={"encoder_version": "v1"}),
               round_record(2, collection={"encoder_version": "v2"}), round_record(3)]
    cfg = RunConfig(rounds=4, collect_every=1, invariance_weight=1.0).validate()
    got = _resumed_discriminator(cfg, Store(), history)  # type: ignore[arg-type]
    assert asked == [("v2", 2)]
    want = fit_on_rows(rows["v2"], "v2", seed=2)
    assert got is not None and not isinstance(want, str)
    assert all(np.array_equal(got.to_arrays()[k], want.discriminator.to_arrays()[k])
               for k in got.to_arrays())
    assert _resumed_discriminator(cfg, Store(), [round_record(1)]) is None  # type: ignore[arg-type]
    off = RunConfig(rounds=4, collect_every=1).validate()
    assert _resumed_discriminator(off, Store(), history) is None  # type: ignore[arg-type]
