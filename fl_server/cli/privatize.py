"""`fedmsr privatize VIDEO_OR_DIR --model DIR --out FILE`: footage -> payload bytes, on the
device, with an exported privatizer (docs/export.md). Only the payload file leaves."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import typer

from fl_server.cli.errors import fail


def privatize_command(
    footage: Annotated[Path, typer.Argument(
        metavar="VIDEO_OR_DIR", help="A video file, or a folder of videos / frame images.")],
    model: Annotated[Path | None, typer.Option(
        help="Folder written by `fedmsr encoder export`.")] = None,
    out: Annotated[Path | None, typer.Option(help="Payload file to write.")] = None,
    max_clips: Annotated[int | None, typer.Option(help="Privatize at most this many clips.")] = None,
    threads: Annotated[int, typer.Option(help="CPU threads for the model.")] = 1,
) -> None:
    """Privatize footage into payloads with an exported encoder.

    Cut the footage into clips as the model card says, privatize each clip (z sampled
    with OS CSPRNG noise, payload v1) and write the payloads to --out."""
    from privacy.footage import load_footage
    from privacy.payload_file import encode_payload_file
    from privacy.privatizer import PrivatizerError, load_privatizer

    if model is None:
        fail("--model", "give the folder `fedmsr encoder export` wrote")
    if out is None:
        fail("--out", "give the payload file to write")
    if out.is_dir():
        fail("--out", f"{out} is a folder; give a file name")
    if not out.parent.is_dir():
        fail("--out", f"{out.parent} does not exist")
    if max_clips is not None and max_clips < 1:
        fail("--max-clips", f"must be >= 1, got {max_clips}")
    if not 1 <= threads <= 256:
        fail("--threads", f"must be between 1 and 256, got {threads}")
    try:
        privatizer = load_privatizer(model, threads)
    except PrivatizerError as exc:
        fail("--model", str(exc))
    cfg = privatizer.card.encoder
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            clips = load_footage(footage, frames=cfg.frames, image_size=cfg.image_size,
                                 max_clips=max_clips)
    except (FileNotFoundError, ValueError) as exc:
        fail("VIDEO_OR_DIR", str(exc).replace("load_footage: ", ""))
    for w in caught:
        print(f"warning: {str(w.message).replace('load_footage: ', '')}")
    import numpy as np

    from privacy.atomic_write import write_bytes_atomic

    result = privatizer.privatize(np.stack([c.frames for c in clips]))
    blob = encode_payload_file(result.payloads, privatizer.card.encoder_version)
    write_bytes_atomic(out, blob)
    print(f"wrote {out}: {len(result.payloads)} clips, {len(blob)} bytes "
          f"({privatizer.card.payload_bytes} B per clip); KL bound "
          f"{float(result.kl_bits.sum()):.1f} bits in all ({float(result.kl_bits.mean()):.2f} per clip)")
