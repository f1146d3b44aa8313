"""The server's side of randomized release, on SQLite and PostgreSQL: revision 0009 lets
the ledger hold the new kind and keeps it append-only; a collection reserves the release
before asking, commits it with the information rows, never under-counts a device that did
not answer, and training selection counts it like every other release. The ledger's
epsilon is checked against dp-accounting's PLD accountant on the plain Gaussian."""

from __future__ import annotations

import json

import pytest
from alembic import command
from dp_accounting import dp_event as dpa
from dp_accounting.pld import pld_privacy_accountant
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from fl_server import information_ledger as info
from fl_server import privacy_ledger as ledger
from fl_server.enrollment import BundleOptions, DeviceSpec, enroll
from fl_server.registry import db
from fl_server.registry.models import Device
from fl_server.release_budget import REFUSED_ACTION, ReleaseBudget
from privacy.accounting import DpEvent
from privacy.release_mechanism import GaussianRelease
from tests.test_privacy_ledger import fleet, rows

DELTA = 1e-5
M = 8
RELEASE = GaussianRelease(1.0, 4.0)
LOCAL = DpEvent(0.05, 1.0, 20)


def gaussian_epsilon(noise_multiplier: float, steps: int, delta: float) -> float:
    """dp-accounting's PLD accountant on `steps` plain Gaussian mechanisms (not our code)."""
    acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
    acc.compose(dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(noise_multiplier), steps))
    return acc.get_epsilon(delta)


def budget(url: str) -> ReleaseBudget:
    return ReleaseBudget(RELEASE, M, url, "run-r", DELTA, default_cap=None)


def charge(device_id: int, round_number: int) -> info.Charge:
    return info.Charge(device_id=device_id, run_id="run-r", collection_round=round_number,
                       encoder_version="e" * 64, requested=M, clips=M, bits=1,
                       device_bits_before=0, capped=False, cap_bits=None)


def test_revision_0009_holds_the_new_kind_and_keeps_the_ledger_append_only(
        registry_url, tmp_path) -> None:
    [a] = fleet(registry_url, tmp_path, [None])
    assert db.current_revision(registry_url) == "0009_randomized_release"
    ledger.reserve(registry_url, "run-r", 1, [ledger.Release(a, RELEASE.event(M))], DELTA,
                   None)
    assert rows(registry_url, "SELECT kind, steps FROM privacy_events") == [
        ("randomized-release", M)]
    for sql in ("DELETE FROM privacy_events",
                "UPDATE privacy_events SET steps = 1",
                "UPDATE device_budgets SET events = 0"):
        with pytest.raises(DBAPIError), db.get_engine(registry_url).begin() as c:
            c.execute(text(sql))
    with pytest.raises(DBAPIError), db.get_engine(registry_url).begin() as c:  # not a kind
        c.execute(text("INSERT INTO privacy_events (device_id, run_id, round_number, kind, "
                       "sample_rate, noise_multiplier, steps, status, reserved_at) VALUES "
                       f"({a}, 'x', 1, 'other', 1.0, 1.0, 1, 'reserved', '2026-01-01')"))
    # Below 0009 the row could not be kept, and a ledger row is never deleted: refused.
    with db.get_engine(registry_url).begin() as connection, pytest.raises(
            RuntimeError, match="never deleted"):
        command.downgrade(db.alembic_config(connection), "0008_unlinkable")


def test_downgrade_and_upgrade_of_an_empty_ledger_keep_every_trigger(registry_url,
                                                                     tmp_path) -> None:
    fleet(registry_url, tmp_path, [None])
    with db.get_engine(registry_url).begin() as connection:
        command.downgrade(db.alembic_config(connection), "0008_unlinkable")
    db.upgrade(registry_url)
    assert db.current_revision(registry_url) == "0009_randomized_release"
    with db.session_scope(registry_url) as s:
        device = s.query(Device.id).filter(Device.name == "cam-0").scalar()
    ledger.reserve(registry_url, "run-r", 1, [ledger.Release(device, RELEASE.event(M))],
                   DELTA, None)
    with pytest.raises(DBAPIError), db.get_engine(registry_url).begin() as c:
        c.execute(text("DELETE FROM privacy_events"))
    with pytest.raises(DBAPIError), db.get_engine(registry_url).begin() as c:
        c.execute(text("UPDATE device_budgets SET events = 5"))


def test_reserved_before_asking_committed_with_the_info_rows_never_undercounted(
        registry_url, tmp_path) -> None:
    """Two devices asked, one answers: its release is committed in the transaction of its
    information row; the silent one stays charged (reserved). The ledger's epsilon is the
    Gaussian mechanism composed over every released slot, by dp-accounting."""
    a, b = fleet(registry_url, tmp_path, [None, None])
    release = budget(registry_url)
    assert release.reserve(1, [a, b]) == {}
    assert rows(registry_url, "SELECT device_id, status FROM privacy_events ORDER BY "
                "device_id") == [(a, "reserved"), (b, "reserved")]
    with db.session_scope(registry_url) as session:
        info.append(session, [charge(a, 1)])
        release.commit(session, 1, [a])
    assert rows(registry_url, "SELECT device_id, status FROM privacy_events ORDER BY "
                "device_id") == [(a, "committed"), (b, "reserved")]
    # A commit that fails rolls the information rows back with it: never one without the other.
    with pytest.raises(db.RegistryError, match="no reserved randomized-release"), \
            db.session_scope(registry_url) as session:
        info.append(session, [charge(a, 2)])
        release.commit(session, 2, [a])
    assert rows(registry_url, "SELECT count(*) FROM information_ledger") == [(1,)]
    with db.session_scope(registry_url) as session:
        assert release.released_before(session, 1, [a, b]) == {a, b}
        assert release.released_before(session, 2, [a, b]) == set()
    exact = gaussian_epsilon(RELEASE.noise_multiplier, M, DELTA)
    for device in (a, b):  # the silent device is charged exactly like the one that answered
        reported = ledger.budget_state(registry_url, device, DELTA).epsilon
        assert exact <= reported <= exact * 1.005  # never below, and tight
    assert release.reserve(2, [a]) == {}
    exact = gaussian_epsilon(RELEASE.noise_multiplier, 2 * M, DELTA)
    assert exact <= ledger.budget_state(registry_url, a, DELTA).epsilon <= exact * 1.005


def test_a_release_past_the_cap_is_refused_audited_and_counts_for_training(
        registry_url, tmp_path) -> None:
    one = gaussian_epsilon(RELEASE.noise_multiplier, M, DELTA)
    two = gaussian_epsilon(RELEASE.noise_multiplier, 2 * M, DELTA)
    a, b = fleet(registry_url, tmp_path, [(one + two) / 2, None])
    release = budget(registry_url)
    assert release.reserve(1, [a, b]) == {}
    refused = release.reserve(2, [a, b])
    assert set(refused) == {a} and "would pass its epsilon cap" in refused[a]
    assert rows(registry_url, "SELECT device_id, round_number FROM privacy_events ORDER BY "
                "device_id, round_number") == [(a, 1), (b, 1), (b, 2)]
    assert rows(registry_url, f"SELECT device_id FROM audit_log WHERE action = "
                f"'{REFUSED_ACTION}'") == [(a,)]
    # Training selection counts the randomized release: a DP-SGD round that fits the cap
    # of an empty ledger does not fit after the release.
    after = ledger.pld_epsilon([RELEASE.event(M), LOCAL], DELTA)
    cap = (ledger.pld_epsilon([RELEASE.event(M)], DELTA) + after) / 2
    assert ledger.pld_epsilon([LOCAL], DELTA) < cap < after
    enroll(registry_url, [DeviceSpec("train-0", epsilon_cap=cap, delta_cap=DELTA)],
           BundleOptions(bundles_dir=tmp_path / "c"))
    with db.session_scope(registry_url) as s:
        c = s.query(Device.id).filter(Device.name == "train-0").scalar()
    assert ledger.eligible(registry_url, [c], [LOCAL], DELTA, None)[0] == [c]
    assert release.reserve(1, [c]) == {}
    ok, out = ledger.eligible(registry_url, [c], [LOCAL], DELTA, None)
    assert ok == [] and [r.device_id for r in out] == [c]


# -- the operator's view -------------------------------------------------------------------


def test_budget_plan_prices_a_randomized_release_like_dp_accounting(capsys) -> None:
    from fl_server.cli import main

    assert main(["budget", "plan", "--kind", "randomized-release", "--clips", "32",
                 "--release-epsilon", "4", "--release-clip", "2", "--latent-dim", "16",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    sigma = out["noise_multiplier"]
    assert (out["kind"], out["sample_rate"], out["steps_per_round"], out["calibrated"]) == \
        ("randomized-release", 1.0, 32, True)
    assert gaussian_epsilon(sigma, 32, DELTA) <= 4.0 <= gaussian_epsilon(sigma, 32, DELTA) * 1.02
    assert out["epsilon"] == pytest.approx(4.0, rel=0.01)
    assert out["noise_std"] == pytest.approx(2 * 2.0 * sigma)
    assert out["information_bits_per_clip"] == pytest.approx(
        GaussianRelease(2.0, sigma).information_bits(16))
    assert main(["budget", "plan", "--kind", "randomized-release", "--clips", "32",
                 "--noise", str(sigma)]) == 0
    text_out = capsys.readouterr().out
    assert "32 released clips" in text_out and f"{out['epsilon']:.4f}" in text_out


@pytest.mark.parametrize(("args", "option"), [
    (["--kind", "randomized-release", "--release-epsilon", "1"], "--clips"),
    (["--kind", "randomized-release", "--clips", "4", "--rounds", "2", "--noise", "1"],
     "--rounds"),
    (["--kind", "randomized-release", "--clips", "4"], "--noise/--release-epsilon"),
    (["--kind", "randomized-release", "--clips", "4", "--noise", "1", "--release-clip", "0"],
     "--release-clip"),
    (["--rounds", "2", "--sample-rate", "0.1", "--noise", "1", "--clips", "3"], "--clips"),
    (["--sample-rate", "0.1", "--noise", "1"], "--rounds"),
])
def test_budget_plan_bad_release_input_is_one_line(args, option, capsys) -> None:
    from fl_server.cli import main

    assert main(["budget", "plan", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {option}:")


def test_budget_show_lists_randomized_releases(registry_url, tmp_path, monkeypatch,
                                               capsys) -> None:
    from fl_server.cli import main

    [a] = fleet(registry_url, tmp_path, [None])
    budget(registry_url).reserve(1, [a])
    monkeypatch.setenv("FEDMSR_DB", registry_url)
    assert main(["budget", "show", "cam-0", "--json"]) == 0
    [device] = json.loads(capsys.readouterr().out)["devices"]
    assert [(e["kind"], e["sample_rate"], e["steps"], e["status"]) for e in device["events"]] \
        == [("randomized-release", 1.0, M, "reserved")]
    assert main(["budget", "show"]) == 0
    assert "run-r#1 randomized-release reserved" in capsys.readouterr().out
