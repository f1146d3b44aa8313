"""`fedmsr representations export --encoder-version V --format parquet|npz --out PATH`:
one encoder version's stored representations, decoded, for work outside fedmsr
(fl_server/representation_export.py; docs/representations.md, "Exporting")."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fl_server.cli.errors import fail

representations_app = typer.Typer(add_completion=False, no_args_is_help=True,
                                  rich_markup_mode=None,
                                  help="Stored representations, exported from the registry.")


@representations_app.command("export")
def representations_export(
    encoder_version: Annotated[str | None, typer.Option(
        help="The encoder version to export (the full SHA-256 or a unique prefix).")] = None,
    format: Annotated[str, typer.Option(  # noqa: A002  (the option is --format)
        "--format", help="parquet (pyarrow, one table) or npz (numpy, one array per "
        "column).")] = "parquet",
    out: Annotated[Path | None, typer.Option(help="File to write.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
) -> None:
    """Export one encoder version's representations to a file.

    Payloads are decoded to float32 vectors; erased devices are left out, unlinkable rows
    have no device, and the export is audit-logged."""
    from fl_server.registry import db
    from fl_server.representation_export import ExportInputError, ExportRequest, export

    if out is None:
        fail("--out", "give the file to write")
    try:  # no --encoder-version: the error lists the stored versions
        summary = export(db.resolve_url(), ExportRequest(encoder_version or "", format, out,
                                                         force))
    except ExportInputError as exc:
        fail(exc.option, exc.problem)
    withheld = (f"; {summary.withheld_rows} row(s) of erased devices withheld"
                if summary.withheld_rows else "")
    print(f"wrote {summary.path} ({summary.format}, {summary.bytes} bytes, sha256 "
          f"{summary.sha256[:16]}…): encoder {summary.encoder_version[:12]}, "
          f"{summary.linkable_rows} linkable row(s) from {summary.devices} device(s), "
          f"{summary.unlinkable_rows} unlinkable row(s){withheld}")
