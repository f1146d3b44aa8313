"""The encoder's shape: image size, frames, latent width and heads.

Kept apart from `privacy.encoder` (the torch model) so that what only describes the
model, such as a round's instructions on the wire, can be read without importing torch:
a device answering a check-in never loads it.
"""

from __future__ import annotations

from dataclasses import dataclass

from privacy.checks import is_int


@dataclass(frozen=True)
class EncoderConfig:
    image_size: int = 32  # 32 or 64
    frames: int = 8
    latent_dim: int = 32
    width: int = 32
    num_activities: int = 8
    proj_dim: int = 32

    def __post_init__(self) -> None:
        if self.image_size not in (32, 64):
            raise ValueError(f"image_size must be 32 or 64, got {self.image_size!r}")
        for name in ("frames", "latent_dim", "width", "num_activities", "proj_dim"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.num_activities < 2:
            raise ValueError(f"num_activities must be >= 2, got {self.num_activities}")
        if self.width % 4:
            raise ValueError(f"width must be a multiple of 4 (GroupNorm groups), got {self.width}")
