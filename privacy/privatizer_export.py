"""Write the on-device privatizer: the posterior of a trained encoder as an ONNX graph or a
TorchScript module, plus its model card (``privacy.privatizer_card``).

What is exported is :class:`PosteriorGraph`: uint8 clips ``[N, T, H, W, 3]`` ->
``(mu, logvar)``, i.e. ``frames_to_tensor``'s conversion followed by
``VIBModel.posterior``. It calls ``posterior`` and nothing else of the model, so the
export does not depend on the encoder's layers (they may change; the graph is traced from
whatever ``posterior`` runs). The heads (activity, SSL projector / predictor) are not in
it: a device only releases ``z``.

Sampling is *not* in the graph: ONNX ``RandomNormal`` (and torch's generator) is not a
cryptographic source, and predictable noise would let the server subtract it and
recover ``mu``. The runtime (``privacy.privatizer``) draws the noise from the OS CSPRNG.

ONNX: ``torch.onnx.export`` with the dynamo exporter (needs ``onnxscript``; runs offline),
opset :data:`ONNX_OPSET`, the batch dimension ``N`` dynamic; the graph is checked with
``onnx.checker`` before it is written. TorchScript: ``torch.jit.trace`` of the same
module (the traced graph keeps ``N`` dynamic).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from privacy.atomic_write import write_bytes_atomic, write_text_atomic
from privacy.encoder import VIBModel, state_to_numpy
from privacy.privatizer_card import CARD_FILE, EpsilonSpent, KlRate, ModelCard, model_file_name
from privacy.wire.upload import encoder_version

__all__ = ["ONNX_OPSET", "PosteriorGraph", "export_privatizer"]

#: The ONNX opset written (onnxruntime 1.31 runs opsets up to 23).
ONNX_OPSET = 18


class PosteriorGraph(nn.Module):
    """uint8 clips ``[N, T, H, W, 3]`` -> ``(mu, logvar)``, each float32 ``[N, D]``."""

    def __init__(self, model: VIBModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, clips: Tensor) -> tuple[Tensor, Tensor]:
        # the same conversion as privacy.encoder.frames_to_tensor, in torch ops
        x = clips.permute(0, 1, 4, 2, 3).to(torch.float32).div(255.0)
        return self.model.posterior(x)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters' progress lines and deprecation chatter are not the user's concern."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _example(model: VIBModel) -> Tensor:
    cfg = model.cfg
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (2, cfg.frames, cfg.image_size, cfg.image_size, 3),
                         dtype=torch.uint8, generator=gen)


def _onnx_bytes(graph: PosteriorGraph, example: Tensor) -> bytes:
    import onnx

    with tempfile.TemporaryDirectory(prefix="fedmsr-export-") as tmp, _quiet():
        path = os.path.join(tmp, "graph.onnx")
        torch.onnx.export(graph, (example,), path, input_names=["clips"],
                          output_names=["mu", "logvar"], opset_version=ONNX_OPSET,
                          dynamo=True, external_data=False, verbose=False,
                          dynamic_shapes=({0: torch.export.Dim("N")},))
        proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def _torchscript_bytes(graph: PosteriorGraph, example: Tensor) -> bytes:
    with _quiet():
        traced = torch.jit.trace(graph, (example,), check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
    return buffer.getvalue()


def export_privatizer(model: VIBModel, fmt: str, out_dir: Path, *, run_id: str,
                      kl_rate: KlRate, epsilon: EpsilonSpent,
                      payload_dtype: str = "int8") -> ModelCard:
    """Write ``out_dir/<model file>`` and ``out_dir/model_card.json``; return the card.

    Everything is checked before anything is written; each file is written atomically.
    """
    model_file_name(fmt)
    base = model.eval()
    graph = PosteriorGraph(base).eval()
    example = _example(base)
    with torch.no_grad():
        blob = _onnx_bytes(graph, example) if fmt == "onnx" else _torchscript_bytes(graph, example)
    arrays = {k: np.asarray(v) for k, v in state_to_numpy(base).items()}
    card = ModelCard(format=fmt, model_sha256=hashlib.sha256(blob).hexdigest(),
                     encoder=base.cfg, encoder_version=encoder_version(base.cfg, arrays),
                     payload_dtype=payload_dtype, run_id=run_id, kl_rate=kl_rate,
                     epsilon=epsilon, opset=ONNX_OPSET if fmt == "onnx" else None)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out_dir / card.model_file, blob)
    write_text_atomic(out_dir / CARD_FILE, card.to_json())
    return card
