"""`fedmsr leakage show [DEVICE] [--run R] [--delta D] [--json]`: information ledgers,
randomized-release epsilon and the fleet's leakage curves.

Reads the registry only (`fedmsr --db URL`, else `FEDMSR_DB`, else `sqlite:///fedmsr.db`):
the append-only information ledger (bits each device's uploads may reveal, its cap), each
device's accumulated randomized-release epsilon (PLD at `--delta` over its
`randomized-release` events on the privacy ledger, every run), the stored representations
per encoder version, the newest leakage report (PL(k) curves, accumulation gains, the
attacks that crossed the run's alert level, linkage AUC at the largest k), and the alerts
the collection audit-logged. A newest collection that was unlinkable has no curve (its
store cannot be grouped by device); the view says so instead of showing an older one as
current.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fl_server import information_ledger as ledger
from fl_server import privacy_ledger
from fl_server.cli.errors import fail
from fl_server.leakage_tracker import crossed
from fl_server.registry import db
from fl_server.registry.devices import find_device
from fl_server.registry.models import (
    AuditEntry,
    Device,
    LeakageReport,
    Representation,
    UnlinkableRepresentation,
    as_utc,
)
from fl_server.release_budget import KIND as RELEASE_KIND
from fl_server.representations import default_store

console = Console(soft_wrap=True)
leakage_app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                          help="Information ledgers and temporal-accumulation leakage.")
#: Audit actions of the collection (docs/representations.md).
ALERT_ACTIONS = ("information.threshold", "information.stop", "leakage.threshold",
                 "device.erase")


@leakage_app.command("show")
def show(
    ident: Annotated[str | None, typer.Argument(metavar="[DEVICE]",
                                                help="Device id or name.")] = None,
    run: Annotated[str | None, typer.Option(help="Leakage report of this run "
                                            "(default: the newest).")] = None,
    delta: Annotated[float, typer.Option(help="The delta release epsilon is reported "
                                         "at (the run's --delta).")] = 1e-5,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The fleet's leakage curve and devices' information bits.

    With every device's information bits and release epsilon (or one device's)."""
    if not (math.isfinite(delta) and 0.0 < delta < 1.0):
        fail("--delta", f"must be in (0, 1), got {delta}")
    url = db.resolve_url()
    with db.session_scope(url) as session:
        report = _latest_report(session, run)
        data = (_device(session, ident, report, delta) if ident is not None
                else _fleet(session, report, delta))
    if as_json:
        print(json.dumps(data, indent=2))
    elif ident is not None:
        _print_device(data)
    else:
        _print_fleet(data)


# -- queries ------------------------------------------------------------------------------


def _latest_report(session: Session, run: str | None) -> dict[str, Any] | None:
    """The newest leakage report, or where the newest collection was unlinkable, what
    says so (`unlinkable`), with the last curve measured before it (`previous`)."""
    query = select(LeakageReport)
    if run is not None:
        query = query.where(LeakageReport.run_id == run)
    row = session.scalars(query.order_by(LeakageReport.id.desc())).first()
    unlinkable = _newest_unlinkable(session, run)
    if unlinkable is not None and (row is None or as_utc(row.created_at) <= unlinkable[2]):
        return {"unlinkable": True, "run_id": unlinkable[0], "round": unlinkable[1],
                "previous": None if row is None else _report(row)}
    if row is None:
        if run is not None:
            raise db.RegistryError("--run", f"no leakage report for run {run!r}; runs collect "
                                   "with `fedmsr run --collect-every N`")
        return None
    return _report(row)


def _report(row: LeakageReport) -> dict[str, Any]:
    report = json.loads(row.report)
    gains = {name: max(g.values()) for name, g in report["gain"].items() if g}
    # Reports saved before the alert level was recorded: unknown, nothing marked.
    above = report.get("crossed") or {}
    alert = above.get("alert")
    linkage = report["curves"].get("linkage_auc") or {}
    largest = max(linkage, key=int) if linkage else None
    return {"unlinkable": False, "run_id": row.run_id, "round": row.collection_round,
            "encoder_version": row.encoder_version, "devices": row.devices,
            "clips": row.clips, "max_gain": row.max_gain, "flagged": row.flagged,
            "created_at": as_utc(row.created_at).isoformat(),
            "device_chance": report["device_chance"], "curves": report["curves"],
            "gain": report["gain"], "max_gain_by_attack": gains, "alert": alert,
            "crossed": sorted(crossed(report["gain"], alert)) if alert is not None else [],
            "linkage_auc": None if largest is None else {"k": int(largest),
                                                         "auc": linkage[largest]}}


def _newest_unlinkable(session: Session, run: str | None
                       ) -> tuple[str, int, Any] | None:
    """(run, round, stored at) of the newest unlinkable collection, if any."""
    query = select(UnlinkableRepresentation.run_id, UnlinkableRepresentation.collection_round,
                   UnlinkableRepresentation.stored_at)
    if run is not None:
        query = query.where(UnlinkableRepresentation.run_id == run)
    newest = session.execute(query.order_by(UnlinkableRepresentation.id.desc())
                             .limit(1)).first()
    return None if newest is None else (newest[0], newest[1], as_utc(newest[2]))


def _release_epsilons(session: Session, device_ids: list[int], delta: float
                      ) -> dict[int, float]:
    return privacy_ledger.kind_epsilons(session, RELEASE_KIND, delta, device_ids)


def _stored_counts(session: Session) -> dict[int, int]:
    return dict(session.execute(select(Representation.device_id, func.count())
                                .group_by(Representation.device_id)).all())


def _alerts(session: Session, device_id: int | None = None) -> list[dict[str, Any]]:
    query = select(AuditEntry).where(AuditEntry.action.in_(ALERT_ACTIONS))
    if device_id is not None:
        query = query.where(AuditEntry.device_id == device_id)
    return [{"at": as_utc(e.at).isoformat(), "action": e.action, "device_id": e.device_id,
             "run_id": e.run_id, "detail": json.loads(e.detail)}
            for e in session.scalars(query.order_by(AuditEntry.id))]


def _fleet(session: Session, report: dict[str, Any] | None, delta: float) -> dict[str, Any]:
    devices = list(session.scalars(select(Device).order_by(Device.id)))
    spends = ledger.states(session, [d.id for d in devices])
    released = _release_epsilons(session, [d.id for d in devices], delta)
    stored = _stored_counts(session)
    alerts = _alerts(session)
    flagged = {a["device_id"] for a in alerts if a["action"] == "information.threshold"}
    rows = [{"id": d.id, "name": d.name, "device_index": d.device_index,
             "bits": spends[d.id].bits, "clips": spends[d.id].clips,
             "collections": spends[d.id].collections, "info_bits_cap": d.info_bits_cap,
             "stored_representations": stored.get(d.id, 0), "flagged": d.id in flagged,
             "release_epsilon": released[d.id]}
            for d in devices]
    return {"report": report, "devices": rows, "alerts": alerts, "release_delta": delta,
            "release_epsilon_max": max(released.values(), default=0.0)}


def _device(session: Session, ident: str, report: dict[str, Any] | None,
            delta: float) -> dict[str, Any]:
    device = find_device(session, ident)
    spend = ledger.states(session, [device.id])[device.id]
    released = _release_epsilons(session, [device.id], delta)[device.id]
    rows = [{"run_id": e.run_id, "round": e.collection_round,
             "encoder_version": e.encoder_version, "requested": e.requested, "clips": e.clips,
             "bits": e.bits, "device_bits_before": e.device_bits_before, "capped": e.capped,
             "cap_bits": e.cap_bits, "recorded_at": as_utc(e.recorded_at).isoformat()}
            for e in ledger.entries(session, device.id)]
    return {"id": device.id, "name": device.name, "device_index": device.device_index,
            "info_bits_cap": device.info_bits_cap, "bits": spend.bits, "clips": spend.clips,
            "collections": spend.collections, "release_epsilon": released,
            "release_delta": delta,
            "stored_representations": default_store().versions(session, [device.id]),
            "ledger": rows, "alerts": _alerts(session, device.id), "fleet_report": report}


# -- text output --------------------------------------------------------------------------


def _print_report(report: dict[str, Any] | None) -> None:
    if report is None:
        console.print("no leakage report yet (runs collect with `fedmsr run --collect-every N`)")
        return
    if report["unlinkable"]:
        console.print(f"no leakage curve for round {report['round']} of run "
                      f"{report['run_id']}: an unlinkable collection (its representations "
                      "carry no device, so nothing accumulates by device)", highlight=False)
        if report["previous"] is not None:
            console.print("the last curve measured before it:", highlight=False)
            _print_report(report["previous"])
        return
    console.print(f"leakage after round {report['round']} of run {report['run_id']} "
                  f"(encoder {report['encoder_version'][:12]}, {report['devices']} devices, "
                  f"{report['clips']} representations; chance {report['device_chance']:.2f})"
                  + (" FLAGGED" if report["flagged"] else ""), highlight=False)
    table = Table(title="PL(k): attack success with k accumulated representations")
    ks = sorted({int(k) for curve in report["curves"].values() for k in curve})
    table.add_column("attack")
    for k in ks:
        table.add_column(f"k={k}", justify="right")
    table.add_column("gain", justify="right")
    table.add_column("alert")
    for name, curve in report["curves"].items():
        gain = report["max_gain_by_attack"].get(name)
        table.add_row(name, *[f"{curve[str(k)]:.2f}" if str(k) in curve else "" for k in ks],
                      "" if gain is None else f"{gain:+.2f}",
                      "CROSSED" if name in report["crossed"] else "")
    console.print(table)
    alert = report["alert"]
    console.print("alert level: " + ("unknown (report saved without it)" if alert is None else
                                     f"gain >= {alert:.2f}")
                  + (f"; crossed by {', '.join(report['crossed'])}" if report["crossed"]
                     else ""), highlight=False)
    linkage = report["linkage_auc"]
    console.print("linkage AUC: " + ("not measured" if linkage is None else
                                     f"{linkage['auc']:.3f} at k={linkage['k']} (0.5: chance)"),
                  highlight=False)


def _print_fleet(data: dict[str, Any]) -> None:
    _print_report(data["report"])
    table = Table(title="information ledger (bits = sum of per-clip KL rates) and "
                  f"randomized-release epsilon (PLD, delta={data['release_delta']:g})")
    for column in ("id", "name", "bits", "cap", "clips", "collections", "stored",
                   "release eps", "flag"):
        table.add_column(column)
    for d in data["devices"]:
        table.add_row(str(d["id"]), d["name"], str(d["bits"]),
                      "-" if d["info_bits_cap"] is None else f"{d['info_bits_cap']:g}",
                      str(d["clips"]), str(d["collections"]),
                      str(d["stored_representations"]), f"{d['release_epsilon']:.3g}",
                      "!" if d["flagged"] else "")
    console.print(table)
    console.print(f"fleet max release epsilon: {data['release_epsilon_max']:.4g} "
                  f"(delta={data['release_delta']:g})", highlight=False)


def _print_device(data: dict[str, Any]) -> None:
    cap = "none" if data["info_bits_cap"] is None else f"{data['info_bits_cap']:g}"
    console.print(f"device {data['id']} {data['name']}: {data['bits']} bits over "
                  f"{data['clips']} clips in {data['collections']} collections (cap {cap}); "
                  f"randomized-release epsilon {data['release_epsilon']:.4g} at "
                  f"delta={data['release_delta']:g}", highlight=False)
    for version, n in sorted(data["stored_representations"].items()):
        console.print(f"  stored: {n} representations of encoder {version[:12]}",
                      highlight=False)
    for e in data["ledger"]:
        console.print(f"  {e['recorded_at']} run {e['run_id']} round {e['round']}: "
                      f"{e['clips']}/{e['requested']} clips, {e['bits']} bits"
                      + (" (capped)" if e["capped"] else ""), highlight=False)
    for a in data["alerts"]:
        console.print(f"  alert {a['at']} {a['action']} {json.dumps(a['detail'])}",
                      highlight=False)
