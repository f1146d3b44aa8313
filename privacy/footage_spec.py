"""Which footage a device trains on, as a small frozen value a run config or bundle can carry.

``synthetic``: the device's place in the run's synthetic fleet (the fleet spec travels in
the instructions). ``folder``: the device's own footage folder (``path``). ``manifest``:
the rows of the manifest file ``path`` whose ``device`` column is ``device_name``. The
clip shape (``frames``, ``image_size``) must match the encoder's; ``stride`` and
``frame_step`` are `privacy.footage.DecodeParams`'. ``path`` is read *on the device*: a
server sending a path only names a location in the device's own storage, which the
device's footage source confines (a manifest cannot leave its folder).

`fl_client.clip_source.source_for` builds the ClipSource of a spec. In `privacy` so the
server (run config, device bundles) and the device share one definition.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from privacy.checks import is_int
from privacy.footage import DecodeParams

__all__ = ["FOOTAGE_KINDS", "FootageSpec"]

FootageKind = Literal["synthetic", "folder", "manifest"]
FOOTAGE_KINDS: tuple[str, ...] = ("synthetic", "folder", "manifest")
_MAX_TEXT = 4096


@dataclass(frozen=True)
class FootageSpec:
    kind: FootageKind = "synthetic"
    path: str = ""  # folder / manifest file on the device
    device_name: str = ""  # manifest: this device's value of the `device` column
    frames: int = 8
    image_size: int = 32
    stride: int | None = None  # clip start step in kept frames; None: back-to-back
    frame_step: int = 1
    held_out_days: int = 1
    profile: str = "home-cam"

    def __post_init__(self) -> None:
        if self.kind not in FOOTAGE_KINDS:
            raise ValueError(f"footage kind must be one of {', '.join(FOOTAGE_KINDS)}, "
                             f"got {self.kind!r}")
        for name in ("path", "device_name", "profile"):
            v = getattr(self, name)
            if not isinstance(v, str) or len(v) > _MAX_TEXT:
                raise ValueError(f"footage {name} must be a string of <= {_MAX_TEXT} chars")
        if self.kind != "synthetic" and not self.path:
            raise ValueError(f"footage kind {self.kind!r} needs a path")
        if self.kind == "manifest" and not self.device_name:
            raise ValueError("footage kind 'manifest' needs a device_name (its 'device' value)")
        if not is_int(self.held_out_days) or self.held_out_days < 0:
            raise ValueError(f"footage held_out_days must be an int >= 0, got "
                             f"{self.held_out_days!r}")
        _ = self.params  # validates frames, image_size, stride, frame_step

    @property
    def params(self) -> DecodeParams:
        return DecodeParams(self.frames, self.image_size, self.stride, self.frame_step)

    def to_flat(self) -> dict[str, str | int]:
        """Flat scalars (a Flower ConfigRecord's values); ``stride`` None is 0."""
        return {"kind": self.kind, "path": self.path, "device-name": self.device_name,
                "frames": self.frames, "image-size": self.image_size,
                "stride": 0 if self.stride is None else self.stride,
                "frame-step": self.frame_step, "held-out-days": self.held_out_days,
                "profile": self.profile}

    @classmethod
    def from_flat(cls, flat: Mapping[str, object]) -> FootageSpec:
        """The inverse of :meth:`to_flat`; a wrong type or value is a ValueError naming it."""
        def text(key: str, default: str) -> str:
            v = flat.get(key, default)
            if not isinstance(v, str):
                raise ValueError(f"footage {key} must be a string, got {v!r}")  # noqa: TRY004
            return v

        def integer(key: str, default: int) -> int:
            v = flat.get(key, default)
            if not is_int(v):
                raise ValueError(f"footage {key} must be an int, got {v!r}")
            return int(v)

        kind = text("kind", "synthetic")
        if kind not in FOOTAGE_KINDS:
            raise ValueError(f"footage kind must be one of {', '.join(FOOTAGE_KINDS)}, "
                             f"got {kind!r}")
        stride = integer("stride", 0)
        return cls(kind, text("path", ""), text("device-name", ""),  # type: ignore[arg-type]
                   integer("frames", 8), integer("image-size", 32), stride or None,
                   integer("frame-step", 1), integer("held-out-days", 1),
                   text("profile", "home-cam"))
