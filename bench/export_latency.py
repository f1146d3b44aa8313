"""Per-clip latency of the exported privatizer: onnxruntime vs PyTorch eager, same process.

    python bench/export_latency.py [--sizes 32 64] [--repeats 200] [--batch 1]

For each image size one freshly built encoder (seed 0) is exported to ONNX and
TorchScript (``privacy.privatizer_export``) into a temporary folder and loaded as a
device would (``privacy.privatizer.load_privatizer``, one thread). On the same uint8 clip
(a batch of ``--batch`` clips), the runtimes are timed one call at a time, interleaved
round-robin so drift hits all alike; the figure is the median per clip:

* ``torch-eager``  - ``VIBModel.posterior`` on ``frames_to_tensor(clip)`` under
                     ``torch.no_grad`` (the baseline: what ``privacy.encoder.encode`` runs);
* ``onnxruntime``  - the exported ONNX graph (conversion from uint8 inside it);
* ``torchscript``  - the traced TorchScript module;
* ``privatize``    - the whole device path on ONNX: graph, CSPRNG noise, payload v1.

Ratios are runtime / torch-eager. Also printed: payload bytes per clip and the file
(``fedmsr privatize``) bytes for 100 clips. torch runs with one thread too.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from privacy.encoder import EncoderConfig, build_model, frames_to_tensor  # noqa: E402
from privacy.payload_file import encode_payload_file  # noqa: E402
from privacy.privatizer import load_privatizer  # noqa: E402
from privacy.privatizer_card import EpsilonSpent, KlRate  # noqa: E402
from privacy.privatizer_export import export_privatizer  # noqa: E402


def _median_ms(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():  # warm-up
        for _ in range(5):
            fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def bench_size(size: int, repeats: int, batch: int, tmp: Path) -> None:
    cfg = EncoderConfig(image_size=size)
    model = build_model(cfg, seed=0).eval()
    none_kl, none_eps = KlRate(None, None, "benchmark"), EpsilonSpent(None, None, "benchmark")
    for fmt in ("onnx", "torchscript"):
        export_privatizer(model, fmt, tmp / f"{fmt}-{size}", run_id="bench", kl_rate=none_kl,
                          epsilon=none_eps)
    onnx = load_privatizer(tmp / f"onnx-{size}", threads=1)
    script = load_privatizer(tmp / f"torchscript-{size}", threads=1)
    torch.set_num_threads(1)
    clips = np.random.default_rng(0).integers(0, 256, (batch, cfg.frames, size, size, 3),
                                              dtype=np.uint8)

    def eager() -> object:
        with torch.no_grad():
            return model.posterior(frames_to_tensor(clips))

    ms = _median_ms({"torch-eager": eager, "onnxruntime": lambda: onnx.posterior(clips),
                     "torchscript": lambda: script.posterior(clips),
                     "privatize": lambda: onnx.privatize(clips)}, repeats)
    base = ms["torch-eager"]
    print(f"{size}x{size}, T={cfg.frames}, batch {batch}: per clip (median of {repeats})")
    for name, value in ms.items():
        print(f"  {name:<12} {value / batch:8.3f} ms   {value / base:5.2f}x torch-eager")
    one = len(onnx.privatize(clips[:1]).payloads[0])
    file_bytes = len(encode_payload_file([bytes(one)] * 100, onnx.card.encoder_version))
    print(f"  payload {one} B per clip ({onnx.card.payload_dtype}, D={cfg.latent_dim}); "
          f"a privatize file of 100 clips: {file_bytes} B")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, one thread")
    with tempfile.TemporaryDirectory(prefix="fedmsr-bench-export-") as tmp:
        for size in args.sizes:
            bench_size(size, args.repeats, args.batch, Path(tmp))


if __name__ == "__main__":
    main()
