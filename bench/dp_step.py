"""Time of one training step of the encoder: DP-SGD vs plain, in the same process.

    python bench/dp_step.py [--batch 16] [--frames 8] [--repeats 15] [--utility supervised]
                            [--sizes 32 64] [--threads N]

For each image size, every mode trains its own fresh copy of the same model (same
seed) with the same optimiser (Adam) on the same fixed batch, with the same torch
thread setting. Steps are timed one at a time, the modes interleaved round-robin so
drift hits all of them alike; the figure is the median over repeats. Modes:

* ``plain``        - forward, mean loss, backward, Adam step (the baseline);
* ``dp-hooks``     - the trainer's default DP-SGD step: Opacus per-sample-gradient hooks,
                     our per-clip samplers for the frame layers, Opacus' for Linear,
                     clipping + noise in Opacus' DPOptimizer, Adam;
* ``dp-ghost``     - Opacus fast gradient clipping (ghost norms for Linear layers, our
                     samplers for the frame layers), two backward passes, noise, Adam;
* ``dp-functorch`` - Opacus' generic per-sample gradients (torch.func vmap) for every
                     layer: a reference for what stock Opacus does with this model.

Ratios are DP step time / plain step time. The encoder's budget is <= 2x.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fl_client.trainer import (
    DEFAULT_GRAD_SAMPLE_MODE,
    DPStepper,
    PlainStepper,
    TrainConfig,
    make_batch,
    trained_parameter_names,
)
from privacy.encoder import EncoderConfig, build_model, frames_to_tensor
from privacy.vib import VIBCriterion, uses_ssl

MODES = ("plain", "dp-hooks", "dp-ghost", "dp-functorch")


def make_stepper(mode: str, model_cfg: EncoderConfig, cfg: TrainConfig, batch_size: int):
    model = build_model(model_cfg, seed=0).train()
    trained = set(trained_parameter_names(model, cfg.utility))
    for name, p in model.named_parameters():
        p.requires_grad_(name in trained)
    params = [p for name, p in model.named_parameters() if name in trained]
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    criterion = VIBCriterion(cfg.beta, cfg.utility, reduction="mean")
    if mode == "plain":
        return PlainStepper(model, optimizer, criterion)
    gen = torch.Generator().manual_seed(1)
    return DPStepper(model, optimizer, criterion, noise_multiplier=cfg.noise_multiplier,
                     clip_norm=cfg.clip_norm, expected_batch_size=float(batch_size),
                     noise_generator=gen, grad_sample_mode=mode.removeprefix("dp-"))


def bench_size(size: int, args) -> dict[str, float]:
    model_cfg = EncoderConfig(image_size=size, frames=args.frames)
    cfg = TrainConfig(batch_size=args.batch, utility=args.utility, dp_sgd=True)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.batch, args.frames, size, size, 3), dtype=np.uint8)
    y = torch.from_numpy(rng.integers(0, model_cfg.num_activities, args.batch))
    target = build_model(model_cfg, seed=0).eval().requires_grad_(False) if uses_ssl(cfg.utility) else None
    batch = make_batch(frames_to_tensor(x), y, latent_dim=model_cfg.latent_dim, utility=cfg.utility,
                       target_model=target, eps_gen=torch.Generator().manual_seed(2),
                       aug_gen=torch.Generator().manual_seed(3))
    modes = [m for m in MODES if m in args.modes]
    steppers = {m: make_stepper(m, model_cfg, cfg, args.batch) for m in modes}
    times: dict[str, list[float]] = {m: [] for m in modes}
    for m in modes:  # warm-up (allocator, oneDNN primitive caches)
        for _ in range(args.warmup):
            steppers[m].step(batch)
    for _ in range(args.repeats):
        for m in modes:
            t0 = time.perf_counter()
            steppers[m].step(batch)
            times[m].append(time.perf_counter() - t0)
    return {m: statistics.median(ts) for m, ts in times.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--utility", default="supervised")
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads for every mode (default: torch's default)")
    args = ap.parse_args(argv)
    if "plain" not in args.modes:
        ap.error("--modes must include plain (the baseline)")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()} (same for every mode), "
          f"batch={args.batch}, T={args.frames}, utility={args.utility}, optimizer=Adam, "
          f"median of {args.repeats} steps after {args.warmup} warm-up")
    print(f"modes compared: {', '.join(m for m in MODES if m in args.modes)}")
    worst = 0.0
    for size in args.sizes:
        med = bench_size(size, args)
        base = med["plain"]
        print(f"\n{size}x{size}:")
        for m, t in med.items():
            ratio = t / base
            print(f"  {m:13s} {t * 1e3:8.1f} ms/step   {ratio:5.2f}x plain")
        trainer_mode = f"dp-{DEFAULT_GRAD_SAMPLE_MODE}"
        if trainer_mode in med:
            ratio = med[trainer_mode] / base
            worst = max(worst, ratio)
            print(f"  ratio {size}x{size} (trainer's DP mode {trainer_mode} / plain): {ratio:.2f}x")
    print(f"\nworst trainer DP/plain ratio: {worst:.2f}x (budget <= 2x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
