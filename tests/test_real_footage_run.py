"""Runs over real footage: `fedmsr run --dataset` simulates one device per manifest device,
each on its own rows (decoded from real video files and frame folders), with the server
probing on the operator's own eval manifest; and the device-side rules of whose footage a
node trains on."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict

from fl_client.checkin_handler import checkin
from fl_client.local_clips import own_source, training_clips
from fl_client.manifest_source import ManifestSource
from fl_server.cli import main
from fl_server.round_plan import Plan
from fl_server.config import RunConfig
from privacy.footage_manifest import read_manifest
from privacy.footage_samples import PANS, write_pan_dataset
from privacy.wire.checkin import CheckinAnswer
from privacy.wire.instructions import Instructions
from privacy.wire.keys import CONFIG_KEY, DEVICE_KEY
from tests.helpers import fedmsr, history


@pytest.fixture(scope="module")
def footage(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("footage")
    return (write_pan_dataset(root / "train", devices=3, days=2, per_day=3),
            write_pan_dataset(root / "eval", devices=2, days=2, per_day=3, seed=1))


def _config(train: Path, evaluation: Path, **changes) -> RunConfig:
    return RunConfig(devices=3, rounds=1, dataset=str(train), eval_dataset=str(evaluation),
                     **changes).validate()


@pytest.mark.slow
def test_collection_over_real_footage_tracks_what_the_server_knows(footage, tmp_path) -> None:
    """Uploads of a --dataset run are tracked by device id (re-identification; routine from
    the upload hours) and attributes are probed only on the operator's eval set."""
    from fl_server.enrollment import BundleOptions, DeviceSpec, enroll
    from fl_server.registry import db

    train, evaluation = footage
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    db.upgrade(url)
    enroll(url, [DeviceSpec(f"cam-{i}") for i in range(3)],
           BundleOptions(bundles_dir=tmp_path / "devices"))
    result = fedmsr("--db", url, "run", "--dataset", str(train), "--eval-dataset",
                    str(evaluation), "--rounds", "2", "--collect-every", "1",
                    "--collect-clips", "4", "--runs-dir", str(tmp_path / "runs"),
                    "--run-id", "col", cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    last = history(tmp_path / "runs" / "col")[-1]
    uploaded = last["collection"]["uploaded"]
    assert sorted(uploaded) == ["0", "1", "2"] and all(n > 0 for n in uploaded.values())
    curves = last["leakage"]
    assert curves is not None, last.get("leakage_skipped")
    # what the server knows of an upload: its device (set statistics) and hour; these
    # clips were all filmed 08:00-10:59 (one routine bin), so routine is not attacked, and
    # no wearer or place of a device's clip is known, so neither is attacked on uploads
    assert {"identity_set", "identity_best"} <= set(curves)
    assert not {"identity", "location", "routine"} & set(curves)
    assert all(0.0 <= v <= 1.0 for c in curves.values() for v in c.values())
    # attribute leakage from the eval set alone: its identity column, with chance
    attributes = last["leakage_eval_attributes"]
    assert set(attributes) == {"identity"}
    assert 0.0 <= attributes["identity"]["linear"] <= 1.0
    assert 0.0 < attributes["identity"]["chance"] <= 1.0
    entry = json.loads((tmp_path / "runs" / "col" / "leakage.json").read_text())[-1]
    assert entry["devices"] == 3 and entry["report"]["split"] == "clips of one capture day"
    assert entry["report"]["eval_attributes"] == attributes


@pytest.mark.slow
def test_a_run_over_a_manifest_of_real_video(footage, tmp_path) -> None:
    train, evaluation = footage
    result = fedmsr("run", "--dataset", str(train), "--eval-dataset", str(evaluation),
                    "--utility-label", "activity", "--rounds", "1", "--runs-dir",
                    str(tmp_path / "runs"), "--run-id", "real", cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "3 devices" in result.stdout  # one per distinct `device` of the manifest
    rounds = history(tmp_path / "runs" / "real")
    assert [r["devices"] for r in rounds] == [[0, 1, 2]]
    for r in rounds:
        # the devices evaluated on their own held-out day, with its labels
        assert 0.0 <= r["device_activity_acc"] <= 1.0 and r["device_kl_bits"] >= 0.0
        # the server's probes ran on the eval manifest: 4 pan directions, 2 photographs
        assert r["utility_chance"] <= 0.5 and 0.0 <= r["utility_acc"] <= 1.0
        assert np.isfinite(r["loss"])


def test_each_simulated_device_plays_its_own_rows(footage, task_identity) -> None:
    train, evaluation = footage
    cfg = _config(train, evaluation, utility_label="activity")
    plan = Plan.from_config(cfg)
    assert plan.model.num_activities == len(PANS)  # the label's values in the manifest
    names = read_manifest(train).devices()
    instructions = Instructions.from_record(plan.instructions(1))
    for index, name in enumerate(names):
        context = Context(run_id=1, node_id=index + 1, node_config={"partition-id": index},
                          state=RecordDict(), run_config={})
        source = own_source(instructions, context)
        assert isinstance(source, ManifestSource) and source.device_name == name
        clips = training_clips(instructions, context)
        expected = ManifestSource(train, name).clips(source.split().train)
        np.testing.assert_array_equal(clips.x, expected.x)
        assert clips.utility == "supervised"
        assert set(clips.y) <= set(range(len(PANS)))


def test_without_a_label_devices_train_self_supervised(footage) -> None:
    train, evaluation = footage
    cfg = _config(train, evaluation, utility="ssl")
    instructions = Instructions.from_record(Plan.from_config(cfg).instructions(1))
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0}, state=RecordDict(),
                      run_config={})
    assert training_clips(instructions, context).utility == "ssl"


def test_a_real_node_never_reads_a_manifest_the_server_names(footage) -> None:
    train, evaluation = footage
    instructions = Instructions.from_record(
        Plan.from_config(_config(train, evaluation, utility="ssl")).instructions(1))
    real = Context(run_id=1, node_id=1, node_config={"device-index": 0}, state=RecordDict(),
                   run_config={})
    with pytest.raises(PermissionError, match="only on its own footage"):
        own_source(instructions, real)


def test_a_node_with_no_usable_footage_declines_naming_why(tmp_path, task_identity) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no video here")
    cfg = RunConfig(devices=2, rounds=1).validate()
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0,
                                                        "footage": str(tmp_path / "empty")},
                      state=RecordDict(), run_config={})
    msg = Message(RecordDict({CONFIG_KEY: Plan.from_config(cfg).instructions(1)}),
                  dst_node_id=1, message_type="query")
    reply = checkin(msg, context)
    answer = CheckinAnswer.from_record(reply.content.config_records[DEVICE_KEY])
    assert answer.num_clips == 0 and answer.declined is not None
    assert answer.declined.startswith("no usable footage") and "empty" in answer.declined


def _write(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


@pytest.mark.parametrize(("extra", "says"), [
    (["--utility-label", "colour"], "error: --utility-label: 'colour' is not a label column"),
    (["--devices", "5"], "error: --devices: the manifest"),
    (["--utility", "both"], "error: --utility: --utility both needs labels"),
])
def test_bad_dataset_runs_are_one_line(footage, tmp_path, capsys, extra, says) -> None:
    train, evaluation = footage
    code = main(["run", "--dataset", str(train), "--eval-dataset", str(evaluation), *extra,
                 "--runs-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(says) and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()  # nothing written


def test_bad_manifests_name_row_and_column(footage, tmp_path, capsys) -> None:
    train, evaluation = footage
    outside = _write(tmp_path / "m.csv", [["path", "device", "day"], ["../x.avi", "a", "0"]])
    assert main(["run", "--dataset", str(outside), "--eval-dataset", str(evaluation)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --dataset: ") and "row 2" in err and "'path'" in err
    assert main(["run", "--dataset", str(train)]) == 2
    assert "--eval-dataset MANIFEST" in capsys.readouterr().err
    one_day = _write(tmp_path / "e.csv", [["path", "device", "day", "activity"],
                                          ["train/cam-0/day0-0.avi", "a", "0", "left"]])
    assert main(["run", "--dataset", str(train), "--eval-dataset", str(one_day)]) == 2
    assert "spans 1 day(s)" in capsys.readouterr().err


def test_device_accuracy_is_a_mean_over_the_devices_that_have_the_label(task_identity) -> None:
    """A mixed fleet: a device without the utility label reports no accuracy, and the
    fleet's figure is over labelled clips only (not dragged down by the others' clips)."""
    from flwr.app import MessageType, MetricRecord

    from fl_server.federated_evaluation import labelled_mean
    from privacy.wire.keys import ACTIVITY_CLIPS_KEY, METRICS_KEY, WEIGHT_KEY

    def reply(clips: int, acc: float | None = None, labelled: int = 0) -> Message:
        metrics = {"kl_bits": 1.0, WEIGHT_KEY: clips}
        if acc is not None:
            metrics |= {"activity_acc": acc, ACTIVITY_CLIPS_KEY: labelled}
        return Message(RecordDict({METRICS_KEY: MetricRecord(metrics)}), dst_node_id=1,
                       message_type=MessageType.EVALUATE)

    replies = [reply(10, 0.5, 10), reply(30, 1.0, 10), reply(100)]  # the last: no label
    assert labelled_mean(replies) == pytest.approx((0.5 * 10 + 1.0 * 10) / 20)
    assert labelled_mean([reply(100)]) is None
    assert labelled_mean([reply(10, 7.0, 10), reply(10, 0.25, 4)]) == pytest.approx(0.25)
