"""`fedmsr eval`: evaluate encoders and baselines on DTP / PL / RR / SE and write the report.

The command checks its options and hands over to :mod:`fl_server.eval_pipeline`
(docs/evaluation.md); ``--reduced`` is the CI-sized scale, the other numeric options
override single settings of the chosen scale. ``--dataset MANIFEST`` evaluates on an
operator's labelled footage manifest instead of the synthetic fleet
(:mod:`fl_server.eval_splits` checks it before anything is decoded or written).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import typer

from fl_server.cli.errors import fail


def eval_command(
    reduced: Annotated[bool, typer.Option(
        "--reduced", help="CI-sized run (~5 min on 2 idle cores).")] = False,
    seed: Annotated[int, typer.Option(help="Seed for data, training, sampling and attacks.")] = 0,
    out: Annotated[str, typer.Option(help="Output folder for the report.")] = "eval-report",
    clips: Annotated[str | None, typer.Option(help="Real footage (video or folder) for RR and SE.")] = None,
    model: Annotated[str | None, typer.Option(help="A run folder with final_model.npz to evaluate too.")] = None,
    devices: Annotated[int | None, typer.Option(help="Override: target devices (>= 2).")] = None,
    clips_per_day: Annotated[int | None, typer.Option(help="Override: clips per device per day.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Override: encoder training epochs.")] = None,
    attack_steps: Annotated[int | None, typer.Option(help="Override: optimisation steps of the inversion attacks.")] = None,
    dataset: Annotated[str | None, typer.Option(
        help="A labelled footage manifest (CSV) to evaluate on instead of the synthetic fleet.")] = None,
    utility_label: Annotated[str | None, typer.Option(
        help="With --dataset: the label column the encoders are trained for (default: activity).")] = None,
    privacy_labels: Annotated[str | None, typer.Option(
        help="With --dataset: comma-separated labels to attack (default: every other label + device).")] = None,
    image_size: Annotated[int | None, typer.Option(
        help="Frame size in pixels, 32 or 64 (default: the --model's, else 32).")] = None,
) -> None:
    """Score encoders and baselines; write a report."""
    from fl_server import eval_pipeline as pipeline
    from fl_server.eval_splits import DatasetProblem, plan_manifest

    if seed < 0:
        fail("--seed", f"must be >= 0, got {seed}")
    for option, value in (("--devices", devices), ("--clips-per-day", clips_per_day),
                          ("--epochs", epochs), ("--attack-steps", attack_steps)):
        if value is not None and value < 1:
            fail(option, f"must be >= 1, got {value}")
    if devices is not None and devices < 2:
        fail("--devices", f"needs at least 2 target devices to attack identity, got {devices}")
    if dataset is None:
        for option, given in (("--utility-label", utility_label), ("--privacy-labels", privacy_labels)):
            if given is not None:
                fail(option, "applies to a labelled manifest only; pass --dataset MANIFEST")
    else:
        for option, value in (("--devices", devices), ("--clips-per-day", clips_per_day)):
            if value is not None:
                fail(option, "a --dataset manifest decides its own devices and clips; drop the option")
    if image_size is not None and image_size not in (32, 64):
        fail("--image-size", f"must be 32 or 64, got {image_size}")
    if clips is not None and not Path(clips).exists():
        fail("--clips", f"{clips} does not exist; pass a video file or a folder of videos/frames")
    try:
        run_model = pipeline.load_run_model(Path(model)) if model is not None else None
    except pipeline.EvalInputError as exc:
        fail("--model", str(exc))
    if run_model is not None and image_size is not None and image_size != run_model.encoder.image_size:
        fail("--image-size", f"{image_size} differs from the --model's {run_model.encoder.image_size} px")
    plan = None
    if dataset is not None:
        privacy = None if privacy_labels is None else [p.strip() for p in privacy_labels.split(",")]
        if privacy is not None and not all(privacy):
            fail("--privacy-labels", f"{privacy_labels!r} has an empty name; give labels as a,b,c")
        try:
            plan = plan_manifest(dataset, utility_label, privacy)
        except DatasetProblem as exc:
            fail(exc.option, str(exc))
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
        footage = pipeline.load_clips(clips, run_model, image_size) if clips is not None else None
    except pipeline.EvalInputError as exc:
        fail("--clips", str(exc))
    try:
        pipeline.run_evaluation(scale, seed, out_dir, run_model, footage, dataset=plan,
                                image_size=image_size)
    except DatasetProblem as exc:  # found while decoding: nothing is written
        fail(exc.option, str(exc))
