"""`fedmsr eval`: evaluate encoders and baselines on DTP / PL / RR / SE and write the report.

The command checks its options and hands over to :mod:`fl_server.eval_pipeline`
(docs/evaluation.md); ``--reduced`` is the CI-sized scale, the other numeric options
override single settings of the chosen scale.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import typer

from fl_server.cli.errors import fail


def eval_command(
    reduced: Annotated[bool, typer.Option("--reduced", help="CI-sized run (a few minutes).")] = False,
    seed: Annotated[int, typer.Option(help="Seed for data, training, sampling and attacks.")] = 0,
    out: Annotated[str, typer.Option(help="Output folder for the report.")] = "eval-report",
    clips: Annotated[str | None, typer.Option(help="Real footage (video or folder) for RR and SE.")] = None,
    model: Annotated[str | None, typer.Option(help="A run folder with final_model.npz to evaluate too.")] = None,
    devices: Annotated[int | None, typer.Option(help="Override: target devices (>= 2).")] = None,
    clips_per_day: Annotated[int | None, typer.Option(help="Override: clips per device per day.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Override: encoder training epochs.")] = None,
    attack_steps: Annotated[int | None, typer.Option(help="Override: optimisation steps of the inversion attacks.")] = None,
) -> None:
    """Evaluate encoders and baselines on DTP / PL / RR / SE and write the report."""
    from fl_server import eval_pipeline as pipeline

    if seed < 0:
        fail("--seed", f"must be >= 0, got {seed}")
    for option, value in (("--devices", devices), ("--clips-per-day", clips_per_day),
                          ("--epochs", epochs), ("--attack-steps", attack_steps)):
        if value is not None and value < 1:
            fail(option, f"must be >= 1, got {value}")
    if devices is not None and devices < 2:
        fail("--devices", f"needs at least 2 target devices to attack identity, got {devices}")
    if clips is not None and not Path(clips).exists():
        fail("--clips", f"{clips} does not exist; pass a video file or a folder of videos/frames")
    try:
        run_model = pipeline.load_run_model(Path(model)) if model is not None else None
    except pipeline.EvalInputError as exc:
        fail("--model", str(exc))
    out_dir = Path(out)
    if out_dir.exists() and (not out_dir.is_dir() or
                             (any(out_dir.iterdir()) and not (out_dir / "metrics.json").exists())):
        fail("--out", f"{out_dir} exists and is not an earlier evaluation report; choose another folder")
    scale = pipeline.REDUCED if reduced else pipeline.FULL
    over: dict[str, Any] = {"targets": devices, "clips_per_day": clips_per_day, "epochs": epochs}
    scale = dataclasses.replace(scale, **{k: v for k, v in over.items() if v is not None})
    if attack_steps is not None:
        scale = dataclasses.replace(scale, attack_steps=attack_steps, gi_steps=attack_steps,
                                    decoder_epochs=min(scale.decoder_epochs, attack_steps))
    try:
        footage = pipeline.load_clips(clips, run_model) if clips is not None else None
    except pipeline.EvalInputError as exc:
        fail("--clips", str(exc))
    pipeline.run_evaluation(scale, seed, out_dir, run_model, footage)
