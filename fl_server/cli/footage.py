"""`fedmsr footage …`: footage on disk (sample footage of real photographs, to try a run or
a deployment on real pixels)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fl_server.cli.errors import fail

footage_app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                          help="Footage on disk (sample footage of real photographs).")


@footage_app.command("sample")
def footage_sample(
    out: Annotated[Path, typer.Argument(metavar="OUT", help="New folder to write.")],
    devices: Annotated[int, typer.Option(help="Devices (one footage folder each).")] = 3,
    days: Annotated[int, typer.Option(help="Days of footage per device.")] = 2,
    per_day: Annotated[int, typer.Option(help="Recordings per device and day.")] = 4,
    seed: Annotated[int, typer.Option(help="Where the camera looks.")] = 0,
) -> None:
    """Write sample footage and its manifests into OUT.

    Write OUT/cam-N/ (each device's recordings), OUT/manifest.csv over them (for `fedmsr
    run --dataset`) and OUT/eval/manifest.csv (another set, for --eval-dataset)."""
    from privacy.footage_samples import write_pan_dataset

    for name, value, low in (("--devices", devices, 1), ("--days", days, 2),
                             ("--per-day", per_day, 1)):
        if not 1 <= value <= 1000 or value < low:
            fail(name, f"must be between {low} and 1000, got {value}")
    if out.exists():
        fail("OUT", f"{out} exists; sample footage goes into a new folder")
    manifest = write_pan_dataset(out, devices, days, per_day, seed=seed)
    evaluation = write_pan_dataset(out / "eval", max(2, devices), days, per_day, seed=seed + 1)
    print(f"wrote {devices} devices' footage under {out}/cam-*, {manifest} and {evaluation}")
