"""`fedmsr fleet …`: enroll, list, show, revoke, erase and sync devices; the audit log.

The database URL is the global `fedmsr --db URL` (stored in `FEDMSR_DB` by the root
callback), else `FEDMSR_DB`, else `sqlite:///fedmsr.db` here. Errors are
:class:`~fl_server.registry.db.RegistryError`s, which `fedmsr`'s `main()` prints as one
line (exit 2).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fl_server import deployment, enrollment, revocation
from fl_server.registry import audit as registry_audit
from fl_server.registry import db
from fl_server.registry import devices as registry_devices
from fl_server.registry.db import RegistryError

console = Console(soft_wrap=True)  # no wrapping: output is read by scripts too
fleet_app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                        help="Enroll, list, show, revoke and sync devices.")


@fleet_app.command("enroll")
def enroll(
    name: Annotated[str | None, typer.Argument(help="Device name (one device).")] = None,
    profile: Annotated[str, typer.Option(help="glasses | bodycam | home-cam.")] = "glasses",
    epsilon_cap: Annotated[float, typer.Option(help="DP epsilon cap over the device's life.")]
    = enrollment.DEFAULT_EPSILON_CAP,
    delta_cap: Annotated[float, typer.Option(help="DP delta cap.")] = enrollment.DEFAULT_DELTA_CAP,
    info_bits_cap: Annotated[float | None, typer.Option(
        help="Cap on uploaded information (bits); none by default.")] = None,
    device_index: Annotated[int | None, typer.Option(
        help="Synthetic data index (default: the next unused one).")] = None,
    data_source: Annotated[str, typer.Option(help="synthetic | footage.")] = "synthetic",
    consent_training: Annotated[bool, typer.Option(
        "--consent-training/--no-consent-training", help="Device consents to training.")] = True,
    consent_evaluation: Annotated[bool, typer.Option(
        "--consent-evaluation/--no-consent-evaluation", help="Consents to evaluation.")] = True,
    count: Annotated[int | None, typer.Option(help="Bulk: enroll N devices PREFIX0..")] = None,
    prefix: Annotated[str, typer.Option(help="Bulk: name prefix for --count.")] = "",
    manifest: Annotated[Path | None, typer.Option(
        help="Bulk: CSV with a header (name required; profile, epsilon_cap, delta_cap, "
             "info_bits_cap, device_index, data_source, consent_training, "
             "consent_evaluation).")] = None,
    bundles_dir: Annotated[Path, typer.Option(help="Where device bundles are written.")]
    = Path("devices"),
    superlink: Annotated[str, typer.Option(help="SuperLink address written into bundles.")]
    = enrollment.DEFAULT_SUPERLINK,
    ca_cert: Annotated[Path | None, typer.Option(
        help="CA certificate to put in bundles (default: pki/ca.pem if it exists).")] = None,
    skip_existing: Annotated[bool, typer.Option(
        "--skip-existing", help="Leave already enrolled names alone (repeatable scripts).")]
    = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Enroll one device (NAME), or many (--count or --manifest).

    Many: --count N --prefix P, or --manifest devices.csv.
    """
    forms = [form for form, given in (("NAME", name is not None), ("--count", count is not None),
                                      ("--manifest", manifest is not None)) if given]
    if len(forms) != 1:
        raise RegistryError("NAME", "give exactly one of NAME, --count N --prefix P, or "
                            f"--manifest FILE (got {', '.join(forms) or 'none'})")
    template = enrollment.DeviceSpec(
        name="template", profile=profile, epsilon_cap=epsilon_cap, delta_cap=delta_cap,
        info_bits_cap=info_bits_cap, device_index=device_index, data_source=data_source,
        consent_training=consent_training, consent_evaluation=consent_evaluation)
    template.validate("--")
    if name is not None:
        specs = [dataclasses.replace(template, name=name).validate()]
    elif count is not None:
        specs = enrollment.specs_for_count(count, prefix, template)
    else:
        assert manifest is not None
        specs = enrollment.specs_from_manifest(manifest, template)
    if ca_cert is None and Path("pki/ca.pem").exists():
        ca_cert = Path("pki/ca.pem")
    started = time.perf_counter()
    result = enrollment.enroll(db.resolve_url(), specs, enrollment.BundleOptions(
        bundles_dir=bundles_dir, superlink=superlink, ca_certificate=ca_cert), skip_existing)
    elapsed = time.perf_counter() - started
    if as_json:
        print(json.dumps({"enrolled": result.enrolled, "skipped": result.skipped}, indent=2))
        return
    for device in result.enrolled[:10]:
        console.print(f"enrolled {device['id']} {device['name']} ({device['profile']}, index "
                      f"{device['device_index']}) -> {bundles_dir / device['name']}",
                      highlight=False)
    if len(result.enrolled) > 10:
        console.print(f"... and {len(result.enrolled) - 10} more", highlight=False)
    if result.skipped:
        console.print(f"skipped {len(result.skipped)} already enrolled: "
                      f"{', '.join(result.skipped[:5])}{' ...' if len(result.skipped) > 5 else ''}",
                      highlight=False)
    console.print(f"{len(result.enrolled)} device(s) enrolled in {elapsed:.2f} s", highlight=False)


@fleet_app.command("list")
def list_devices(
    as_json: Annotated[bool, typer.Option("--json", help="A JSON list of device objects.")]
    = False,
) -> None:
    """The enrolled devices (all statuses)."""
    devices = registry_devices.list_devices(db.resolve_url())
    if as_json:
        print(json.dumps(devices, indent=2))
        return
    table = Table(title=f"fleet ({len(devices)} devices)")
    for column in ("id", "name", "profile", "status", "index", "eps cap", "key"):
        table.add_column(column)
    for d in devices:
        table.add_row(str(d["id"]), d["name"], d["profile"], d["status"],
                      str(d["device_index"]), str(d["epsilon_cap"]), d["key_fingerprint"][:19])
    console.print(table)


@fleet_app.command("show")
def show(ident: Annotated[str, typer.Argument(metavar="ID", help="Device id or name.")]) -> None:
    """One device as JSON: fields, key, rounds, audit trail.

    Its fields, public key, the rounds it took part in and its audit trail.
    """
    print(json.dumps(registry_devices.show_device(db.resolve_url(), ident), indent=2))


@fleet_app.command("revoke")
def revoke(
    ident: Annotated[str, typer.Argument(metavar="ID", help="Device id or name.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the audit log).")] = "",
) -> None:
    """Revoke a device for ever.

    A key registered at the SuperLink is unregistered at once.
    """
    url = db.resolve_url()
    device = revocation.revoke(url, ident, reason)
    console.print(f"revoked {device['id']} {device['name']} at {device['revoked_at']}: "
                  f"{device['revoke_reason']}", highlight=False)
    if device["superlink_node_id"] is None:
        return
    try:
        deployment.unregister_device(url, device["id"], deployment.operator_flwr_home())
    except RegistryError as exc:  # revoked in the registry; the SuperLink must still hear it
        print(f"error: revoked in the registry, but not yet at the SuperLink ({exc}); "
              "run `fedmsr fleet sync` once it is reachable", file=sys.stderr)
        raise typer.Exit(1) from None
    console.print(f"unregistered node {device['superlink_node_id']} at the SuperLink: its "
                  "SuperNode is cut off", highlight=False)


@fleet_app.command("identities")
def identities(
    out: Annotated[Path, typer.Option(help="Where to write the JSON table.")],
) -> None:
    """Export the devices' public keys that SecAgg+ devices check.

    Export {device index: public key} of the devices not revoked: the registry-issued
    identities SecAgg+ devices verify each other against (`--node-config
    identities-file=PATH`). Distribute it out of band, not through the server."""
    from fl_server.secagg_identities import identities_table, write_identities

    table = identities_table(db.resolve_url())
    write_identities(out, table)
    console.print(f"wrote {len(table)} identities to {out}", highlight=False)


@fleet_app.command("erase")
def erase(
    ident: Annotated[str, typer.Argument(metavar="ID", help="Device id or name.")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Consent withdrawn: delete a device's representations.

    Every stored representation of the device is deleted; its ledgers stay.
    """
    from fl_server.representations import erase_device

    url = db.resolve_url()
    # an unknown id: one clear error, nothing asked
    device = registry_devices.show_device(url, ident)
    if not yes:
        typer.confirm(f"delete every stored representation of device {device['id']} "
                      f"({device['name']})?", abort=True)
    erased = erase_device(url, ident)
    console.print(f"erased {erased['deleted']} representation(s) of device {erased['id']} "
                  f"({erased['name']}); its ledgers are kept and it is no longer asked for "
                  "uploads", highlight=False)


@fleet_app.command("sync")
def sync() -> None:
    """Register enrolled devices' keys with the SuperLink.

    Keys of revoked devices are unregistered.
    """
    result = deployment.sync(db.resolve_url(), deployment.operator_flwr_home())
    console.print(f"registered {len(result.registered)} key(s), unregistered "
                  f"{len(result.unregistered)}", highlight=False)
    if result.burnt:  # enrolled here, but the SuperLink unregistered the key for good
        print(f"warning: the SuperLink had already unregistered the key of "
              f"{', '.join(result.burnt[:5])}{' ...' if len(result.burnt) > 5 else ''}: "
              "such a key is never accepted again; revoke and re-enroll those devices",
              file=sys.stderr)


@fleet_app.command("audit")
def audit(
    limit: Annotated[int, typer.Option(help="Newest N entries (0: all).")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="JSON list.")] = False,
) -> None:
    """The append-only audit log of operator actions (oldest first)."""
    entries = registry_audit.audit_log(db.resolve_url(), limit or None)
    if as_json:
        print(json.dumps(entries, indent=2))
        return
    for e in entries:
        target = f"device {e['device_id']}" if e["device_id"] else (e["run_id"] or "")
        console.print(f"{e['at']} {e['actor']} {e['action']} {target} "
                      f"{json.dumps(e['detail'])}", highlight=False, soft_wrap=True)
