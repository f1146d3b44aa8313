"""Run an exported privatizer on a device: clips -> payload version 1 records.

``load_privatizer(DIR)`` reads ``DIR/model_card.json``, checks the model file against the
SHA-256 the card names (a modified model is refused), and opens it with onnxruntime
(ONNX) or ``torch.jit.load`` (TorchScript), on ``threads`` CPU threads.
``Privatizer.privatize`` then runs, per clip:

1. the exported graph: uint8 clip -> ``(mu, logvar)``;
2. ``eps`` ~ N(0, I) from the OS CSPRNG (``privacy.secure_normal``; never from the graph
   or a seeded generator, see there), ``z = mu + exp(logvar / 2) * eps``;
3. ``privacy.payload.encode_payload(z, dtype)`` with the card's dtype.

Only the payloads leave (``privacy.payload_file`` holds them); ``mu``, ``logvar`` and the
clips stay in memory. The KL rate of each clip (bits, the information-budget unit) is
returned beside them so a device can charge its own ledger.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from privacy.encoder import check_clips
from privacy.payload import encode_payload
from privacy.privatizer_card import CARD_FILE, ModelCard
from privacy.secure_normal import secure_standard_normal
from privacy.vib import kl_bits

__all__ = ["PrivatizerError", "Privatized", "Privatizer", "load_privatizer"]

Posterior = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
_BATCH = 64


class PrivatizerError(ValueError):
    """An export folder that cannot be run (missing, modified or unreadable), and why."""


@dataclass(frozen=True)
class Privatized:
    """One payload per clip (in order) and each clip's KL rate in bits (stays on the device)."""

    payloads: tuple[bytes, ...]
    kl_bits: np.ndarray


def _onnx_posterior(path: Path, threads: int) -> Posterior:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own, unexported exception types
        raise PrivatizerError(f"onnxruntime cannot load {path.name}: {exc}") from None

    def run(clips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu, logvar = session.run(["mu", "logvar"], {"clips": clips})
        return np.asarray(mu, np.float32), np.asarray(logvar, np.float32)

    return run


def _torchscript_posterior(path: Path, threads: int) -> Posterior:
    import torch

    torch.set_num_threads(threads)
    try:
        with warnings.catch_warnings():  # TorchScript is deprecated in torch 2.13; still runs
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu").eval()
    except (RuntimeError, ValueError, OSError) as exc:
        raise PrivatizerError(f"torch.jit cannot load {path.name}: {exc}") from None

    def run(clips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            mu, logvar = module(torch.from_numpy(np.ascontiguousarray(clips)))
        return mu.numpy(), logvar.numpy()

    return run


class Privatizer:
    """An export folder opened for running (build with :func:`load_privatizer`)."""

    def __init__(self, card: ModelCard, posterior: Posterior) -> None:
        self.card = card
        self._posterior = posterior

    def posterior(self, clips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(mu, logvar)`` of uint8 clips ``[N, T, H, W, 3]`` (the card's geometry)."""
        check_clips(self.card.encoder, clips, "clips")
        d = self.card.encoder.latent_dim
        mus, logvars = [np.zeros((0, d), np.float32)], [np.zeros((0, d), np.float32)]
        for start in range(0, clips.shape[0], _BATCH):
            mu, logvar = self._posterior(np.ascontiguousarray(clips[start:start + _BATCH]))
            mus.append(mu)
            logvars.append(logvar)
        return np.concatenate(mus), np.concatenate(logvars)

    def privatize(self, clips: np.ndarray) -> Privatized:
        """One payload per clip: z sampled with CSPRNG noise, quantised (payload v1)."""
        mu, logvar = self.posterior(clips)
        z = mu + np.exp(0.5 * logvar) * secure_standard_normal(mu.shape)
        payloads = tuple(encode_payload(row, self.card.payload_dtype) for row in z)
        return Privatized(payloads, kl_bits(mu, logvar))


def load_privatizer(model_dir: str | Path, threads: int = 1) -> Privatizer:
    """Open ``model_dir`` (written by ``fedmsr encoder export``); PrivatizerError if not."""
    folder = Path(model_dir)
    card_path = folder / CARD_FILE
    if not card_path.is_file():
        raise PrivatizerError(f"{folder} has no {CARD_FILE}; pass a folder written by "
                              "`fedmsr encoder export`")
    try:
        card = ModelCard.from_json(card_path.read_text())
    except (ValueError, OSError) as exc:
        raise PrivatizerError(f"{card_path}: {exc}") from None
    model_path = folder / card.model_file
    try:
        blob = model_path.read_bytes()
    except OSError as exc:
        raise PrivatizerError(f"cannot read {model_path}: {exc.strerror or exc}") from None
    if hashlib.sha256(blob).hexdigest() != card.model_sha256:
        raise PrivatizerError(f"{model_path.name} does not match the SHA-256 in {CARD_FILE}: "
                              "the model was modified or belongs to another export")
    build = _onnx_posterior if card.format == "onnx" else _torchscript_posterior
    return Privatizer(card, build(model_path, threads))
