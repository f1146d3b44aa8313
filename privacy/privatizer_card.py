"""The model card of an exported on-device privatizer (``model_card.json``).

It says what the model file is (format, file name, SHA-256), which encoder it is
(configuration and ``encoder_version``, the digest stored with every representation),
what it takes (uint8 clips ``[N, T, H, W, 3]``, RGB, cut as ``privacy.footage`` cuts them)
and gives (``mu``, ``logvar``), how ``z`` is drawn and written (outside the graph: OS
CSPRNG noise, payload version 1), and what the run that trained it measured: the KL rate
on the server's evaluation set and the (epsilon, delta) it spent. A figure the run folder
does not hold is ``null`` with the reason beside it, never a guess.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from privacy.encoder import LOGVAR_BOUND, EncoderConfig
from privacy.payload import PAYLOAD_VERSION, payload_size

__all__ = ["CARD_FILE", "CARD_VERSION", "FORMATS", "EpsilonSpent", "KlRate", "ModelCard",
           "model_file_name"]

CARD_FILE = "model_card.json"
CARD_VERSION = 1
#: Export format -> the model file's name in the export folder.
FORMATS: dict[str, str] = {"onnx": "privatizer.onnx", "torchscript": "privatizer.pt"}

SAMPLING = ("z = mu + exp(logvar / 2) * eps, eps ~ N(0, I) drawn outside the model from the "
            "OS CSPRNG (os.urandom, Box-Muller on 53-bit uniforms: privacy/secure_normal.py)")


def model_file_name(fmt: str) -> str:
    """The model file of format ``fmt`` (ValueError naming the known formats)."""
    try:
        return FORMATS[fmt]
    except (KeyError, TypeError):
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}") from None


@dataclass(frozen=True)
class KlRate:
    """Mean KL(q(z|x) || N(0, I)) per clip, in bits, as the run last measured it."""

    bits_per_clip: float | None
    #: The round it was measured after (None with no figure).
    round: int | None
    #: Which clips (or why there is no figure).
    measured_on: str


@dataclass(frozen=True)
class EpsilonSpent:
    """The (epsilon, delta) the run spent, worst device, or None and why."""

    epsilon: float | None
    delta: float | None
    #: How it was computed, or why there is none.
    how: str


@dataclass(frozen=True)
class ModelCard:
    format: str
    model_sha256: str
    encoder: EncoderConfig
    encoder_version: str
    payload_dtype: str
    run_id: str
    kl_rate: KlRate
    epsilon: EpsilonSpent
    #: The ONNX opset of the graph (None for TorchScript).
    opset: int | None = None

    def __post_init__(self) -> None:
        model_file_name(self.format)
        payload_size(self.encoder.latent_dim, self.payload_dtype)  # checks the dtype

    @property
    def model_file(self) -> str:
        return model_file_name(self.format)

    @property
    def payload_bytes(self) -> int:
        return payload_size(self.encoder.latent_dim, self.payload_dtype)

    def input_spec(self) -> dict[str, Any]:
        cfg = self.encoder
        return {
            "name": "clips", "dtype": "uint8",
            "shape": ["N", cfg.frames, cfg.image_size, cfg.image_size, 3],
            "layout": "clips x frames x height x width x RGB",
            "conversion": "inside the model: float32 x / 255, moved to [N, T, 3, H, W]",
            "clip": {"frames": cfg.frames, "image_size": cfg.image_size, "stride": cfg.frames,
                     "frame_step": 1,
                     "crop": "centre square of each frame, resized to image_size "
                             "(privacy/footage.py)"},
        }

    def to_json(self) -> str:
        d = self.encoder.latent_dim
        card = {
            "card_version": CARD_VERSION,
            "format": self.format, "model_file": self.model_file,
            "model_sha256": self.model_sha256, "opset": self.opset,
            "encoder": dataclasses.asdict(self.encoder),
            "encoder_version": self.encoder_version,
            "run_id": self.run_id,
            "input": self.input_spec(),
            "outputs": {"mu": ["N", d], "logvar": ["N", d],
                        "logvar_range": [-LOGVAR_BOUND, LOGVAR_BOUND]},
            "sampling": SAMPLING,
            "payload": {"version": PAYLOAD_VERSION, "dtype": self.payload_dtype,
                        "bytes_per_clip": self.payload_bytes},
            "kl_rate": dataclasses.asdict(self.kl_rate),
            "epsilon": dataclasses.asdict(self.epsilon),
        }
        return json.dumps(card, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        """Read a card ``to_json`` wrote (ValueError naming what is wrong)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(data, dict):
            raise ValueError("must hold a JSON object")  # noqa: TRY004
        if data.get("card_version") != CARD_VERSION:
            raise ValueError(f"card_version {data.get('card_version')!r} is not supported "
                             f"(this build reads {CARD_VERSION})")
        if data.get("payload", {}).get("version") != PAYLOAD_VERSION:
            raise ValueError(f"payload version {data.get('payload', {}).get('version')!r} is "
                             f"not supported (this build writes {PAYLOAD_VERSION})")
        try:
            return cls(format=data["format"], model_sha256=str(data["model_sha256"]),
                       encoder=EncoderConfig(**data["encoder"]),
                       encoder_version=str(data["encoder_version"]),
                       payload_dtype=data["payload"]["dtype"], run_id=str(data["run_id"]),
                       kl_rate=KlRate(**data["kl_rate"]), epsilon=EpsilonSpent(**data["epsilon"]),
                       opset=data.get("opset"))
        except KeyError as exc:
            raise ValueError(f"is missing {exc.args[0]!r}") from None
        except TypeError as exc:
            raise ValueError(str(exc)) from None
