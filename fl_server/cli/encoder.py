"""`fedmsr encoder export RUN_DIR --format onnx|torchscript --out DIR`: a run's final
model as the on-device privatizer (model file + model_card.json; docs/export.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fl_server.cli.errors import fail

encoder_app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                          help="A trained encoder, exported for devices.")


@encoder_app.command("export")
def encoder_export(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR",
                                            help="A run folder (runs/<run-id>).")],
    format: Annotated[str, typer.Option(  # noqa: A002  (the option is --format)
        "--format", help="onnx (onnxruntime) or torchscript (torch.jit.load).")] = "onnx",
    out: Annotated[Path | None, typer.Option(help="Folder to write the export into.")] = None,
    payload_dtype: Annotated[str, typer.Option(
        help="Payload v1 value type: int8, float16 or float32.")] = "int8",
) -> None:
    """Write the encoder, its posterior head and model card to --out.

    The posterior head gives (mu, logvar).
    """
    from fl_server.encoder_export import ExportInputError, export_run
    from privacy.privatizer_card import FORMATS

    from privacy.payload import payload_size

    try:
        payload_size(1, payload_dtype)
    except ValueError as exc:
        fail("--payload-dtype", str(exc))
    if format not in FORMATS:
        fail("--format", f"must be one of {', '.join(FORMATS)}, got {format!r}")
    if out is None:
        fail("--out", "give the folder to write the export into")
    if out.exists() and not out.is_dir():
        fail("--out", f"{out} exists and is not a folder")
    if not run_dir.is_dir():
        fail("RUN_DIR", f"{run_dir} is not a run folder (no such directory)")
    try:
        card = export_run(run_dir, format, out, payload_dtype)
    except ExportInputError as exc:
        fail("RUN_DIR", str(exc))
    eps = card.epsilon.epsilon
    print(f"wrote {out / card.model_file} (sha256 {card.model_sha256[:16]}…) and "
          f"{out / 'model_card.json'}: encoder {card.encoder_version[:12]}, "
          f"{card.payload_bytes} B per clip, KL "
          f"{'n/a' if card.kl_rate.bits_per_clip is None else f'{card.kl_rate.bits_per_clip:.2f} bits'}, "
          f"epsilon {'n/a' if eps is None else f'{eps:.3g}'}")
