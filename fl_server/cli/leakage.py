"""`fedmsr leakage show [DEVICE] [--json]`: information ledgers and the fleet's leakage curves.

Reads the registry only (`fedmsr --db URL`, else `FEDMSR_DB`, else `sqlite:///fedmsr.db`):
the append-only information ledger (bits each device's uploads may reveal, its cap), the
stored representations per encoder version, the newest leakage report (PL(k) curves and
accumulation gains after a collection), and the alerts the collection audit-logged.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fl_server import information_ledger as ledger
from fl_server.registry import db
from fl_server.registry.devices import find_device
from fl_server.registry.models import (
    AuditEntry,
    Device,
    LeakageReport,
    Representation,
    as_utc,
)
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
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The fleet's leakage curve and every device's information bits (or one device's)."""
    url = db.resolve_url()
    with db.session_scope(url) as session:
        report = _latest_report(session, run)
        data = (_device(session, ident, report) if ident is not None
                else _fleet(session, report))
    if as_json:
        print(json.dumps(data, indent=2))
    elif ident is not None:
        _print_device(data)
    else:
        _print_fleet(data)


# -- queries ------------------------------------------------------------------------------


def _latest_report(session: Session, run: str | None) -> dict[str, Any] | None:
    query = select(LeakageReport)
    if run is not None:
        query = query.where(LeakageReport.run_id == run)
    row = session.scalars(query.order_by(LeakageReport.id.desc())).first()
    if row is None:
        if run is not None:
            raise db.RegistryError("--run", f"no leakage report for run {run!r}; runs collect "
                                   "with `fedmsr run --collect-every N`")
        return None
    report = json.loads(row.report)
    return {"run_id": row.run_id, "round": row.collection_round,
            "encoder_version": row.encoder_version, "devices": row.devices,
            "clips": row.clips, "max_gain": row.max_gain, "flagged": row.flagged,
            "created_at": as_utc(row.created_at).isoformat(),
            "device_chance": report["device_chance"], "curves": report["curves"],
            "gain": report["gain"]}


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


def _fleet(session: Session, report: dict[str, Any] | None) -> dict[str, Any]:
    devices = list(session.scalars(select(Device).order_by(Device.id)))
    spends = ledger.states(session, [d.id for d in devices])
    stored = _stored_counts(session)
    alerts = _alerts(session)
    flagged = {a["device_id"] for a in alerts if a["action"] == "information.threshold"}
    rows = [{"id": d.id, "name": d.name, "device_index": d.device_index,
             "bits": spends[d.id].bits, "clips": spends[d.id].clips,
             "collections": spends[d.id].collections, "info_bits_cap": d.info_bits_cap,
             "stored_representations": stored.get(d.id, 0), "flagged": d.id in flagged}
            for d in devices]
    return {"report": report, "devices": rows, "alerts": alerts}


def _device(session: Session, ident: str, report: dict[str, Any] | None) -> dict[str, Any]:
    device = find_device(session, ident)
    spend = ledger.states(session, [device.id])[device.id]
    rows = [{"run_id": e.run_id, "round": e.collection_round,
             "encoder_version": e.encoder_version, "requested": e.requested, "clips": e.clips,
             "bits": e.bits, "device_bits_before": e.device_bits_before, "capped": e.capped,
             "cap_bits": e.cap_bits, "recorded_at": as_utc(e.recorded_at).isoformat()}
            for e in ledger.entries(session, device.id)]
    return {"id": device.id, "name": device.name, "device_index": device.device_index,
            "info_bits_cap": device.info_bits_cap, "bits": spend.bits, "clips": spend.clips,
            "collections": spend.collections,
            "stored_representations": default_store().versions(session, [device.id]),
            "ledger": rows, "alerts": _alerts(session, device.id), "fleet_report": report}


# -- text output --------------------------------------------------------------------------


def _print_report(report: dict[str, Any] | None) -> None:
    if report is None:
        console.print("no leakage report yet (runs collect with `fedmsr run --collect-every N`)")
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
    for name, curve in report["curves"].items():
        gain = report["gain"].get(name) or {}
        table.add_row(name, *[f"{curve[str(k)]:.2f}" if str(k) in curve else "" for k in ks],
                      f"{max(gain.values()):+.2f}" if gain else "")
    console.print(table)


def _print_fleet(data: dict[str, Any]) -> None:
    _print_report(data["report"])
    table = Table(title="information ledger (bits = sum of per-clip KL rates)")
    for column in ("id", "name", "bits", "cap", "clips", "collections", "stored", "flag"):
        table.add_column(column)
    for d in data["devices"]:
        table.add_row(str(d["id"]), d["name"], str(d["bits"]),
                      "-" if d["info_bits_cap"] is None else f"{d['info_bits_cap']:g}",
                      str(d["clips"]), str(d["collections"]),
                      str(d["stored_representations"]), "!" if d["flagged"] else "")
    console.print(table)


def _print_device(data: dict[str, Any]) -> None:
    cap = "none" if data["info_bits_cap"] is None else f"{data['info_bits_cap']:g}"
    console.print(f"device {data['id']} {data['name']}: {data['bits']} bits over "
                  f"{data['clips']} clips in {data['collections']} collections (cap {cap})",
                  highlight=False)
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
