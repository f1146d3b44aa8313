"""What leaves a device after its local round: the arrays, and which metrics.

* **central DP-FedAvg** — the device clips its model update to the instructed L2 norm
  before sending (`privacy.update_clip`) and counts as weight 1 (user-level: every device
  counts once, and its number of clips is not released);
* **any DP mode** — loss and KL on the private clips are not covered by the guarantee
  (they are computed without noise), so a DP device reports only what the public plan or
  the hardware fixes (`DP_SAFE_METRICS`) and keeps the rest to itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from privacy.update_clip import clipped_arrays
from privacy.wire.instructions import Instructions

#: What a DP device reports besides its update: quantities fixed by the public plan
#: (dataset size, steps) or by the hardware, never a function of its clips' content.
DP_SAFE_METRICS = ("steps", "train_seconds", "sample_rate")


def released_arrays(instructions: Instructions, global_arrays: dict[str, np.ndarray],
                    trained: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The trained arrays, with the update clipped to ``update_clip`` under central DP."""
    if instructions.update_clip <= 0:
        return trained
    return clipped_arrays(global_arrays, trained, instructions.update_clip)


def releases_private_metrics(instructions: Instructions) -> bool:
    """Whether training metrics on the clips must stay on the device (any DP mode)."""
    return bool(instructions.train.dp_sgd or instructions.update_clip > 0)


def release_weight(instructions: Instructions, num_examples: int) -> int:
    """The update's aggregation weight: 1 under central DP (user level), else #clips."""
    return 1 if instructions.update_clip > 0 else int(num_examples)


def reported_metrics(metrics: Mapping[str, float], dp_sgd: bool) -> dict[str, float]:
    """Training metrics to send: all of them without DP, only `DP_SAFE_METRICS` with it.

    Under DP ``train_seconds`` is rounded up to whole seconds: it follows the clip count
    (public: it fixes q) and the random Poisson batch sizes, and finer timing of the
    sampled batches is not the server's to see (docs/privacy-accounting.md)."""
    out = {k: float(v) for k, v in metrics.items() if not dp_sgd or k in DP_SAFE_METRICS}
    if dp_sgd and "train_seconds" in out:
        out["train_seconds"] = float(math.ceil(out["train_seconds"]))
    return out
