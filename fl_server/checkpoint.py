"""Per-round checkpoints: model arrays, round number, sampling RNG state, history.

A checkpoint is two files per round, `round-NNNN.npz` (arrays) then `round-NNNN.json`
(metadata with the SHA-256 of the npz). Both are written atomically and the JSON last,
so a JSON file's presence means its checkpoint is complete. Loading verifies the hash:
a corrupt or truncated checkpoint is reported by name and the previous good one is used,
so a crash during a checkpoint write costs at most the round being written.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fl_server.fault_points import fault_point
from privacy.atomic_write import write_bytes_atomic, write_text_atomic
from privacy.checks import is_int

FORMAT_VERSION = 1
_NAME = re.compile(r"^round-(\d{4,})\.json$")
log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint file is unreadable; the message names the file."""


@dataclass
class Checkpoint:
    """Everything needed to continue a run after `server_round`."""

    server_round: int
    arrays: dict[str, np.ndarray]
    strategy_state: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def save_checkpoint(run_dir: Path, ckpt: Checkpoint) -> Path:
    """Write the checkpoint for `ckpt.server_round`; returns the metadata file's path."""
    directory = checkpoint_dir(run_dir)
    stem = f"round-{ckpt.server_round:04d}"
    blob = npz_bytes(ckpt.arrays)
    write_bytes_atomic(directory / f"{stem}.npz", blob)
    fault_point("checkpoint", ckpt.server_round)  # test-only: a crash between the two files
    meta = {
        "format_version": FORMAT_VERSION,
        "server_round": ckpt.server_round,
        "arrays_file": f"{stem}.npz",
        "arrays_sha256": hashlib.sha256(blob).hexdigest(),
        "strategy_state": ckpt.strategy_state,
        "history": ckpt.history,
    }
    meta_path = directory / f"{stem}.json"
    write_text_atomic(meta_path, json.dumps(meta) + "\n")
    return meta_path


def load_checkpoint(meta_path: Path) -> Checkpoint:
    """Load and verify one checkpoint; raise CheckpointError naming the bad file."""
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(f"{meta_path}: unsupported checkpoint format "
                                  f"{meta.get('format_version')!r} (expected {FORMAT_VERSION})")
        server_round = _checked_round(meta_path, meta["server_round"])
        arrays_path = meta_path.parent / _checked_arrays_file(meta_path, meta["arrays_file"])
        blob = arrays_path.read_bytes()
        expected_sha = str(meta["arrays_sha256"])
        state, history = dict(meta.get("strategy_state", {})), list(meta.get("history", []))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        # AttributeError: valid JSON that is not an object (e.g. a file of `null`)
        raise CheckpointError(f"{meta_path}: unreadable checkpoint ({exc})") from exc
    if hashlib.sha256(blob).hexdigest() != expected_sha:
        raise CheckpointError(f"{arrays_path}: checksum mismatch (corrupt or truncated)")
    return Checkpoint(server_round, _arrays_of(arrays_path, blob), state, history)


def _checked_round(meta_path: Path, value: object) -> int:
    """The round the metadata claims must be the file's own (an int, never 1e400 or -3)."""
    named = _NAME.match(meta_path.name)
    expected = int(named.group(1)) if named else None
    if not is_int(value) or value < 0 or (expected is not None and value != expected):
        raise ValueError(f"server_round must be the file's round {expected}, got {value!r}")
    return int(value)


def _checked_arrays_file(meta_path: Path, value: object) -> str:
    """The arrays live next to the metadata under the same stem: a name, never a path
    (an absolute or `../` arrays_file would read any file the server can)."""
    expected = f"{meta_path.stem}.npz"
    if value != expected:
        raise ValueError(f"arrays_file must be {expected!r}, got {value!r}")
    return expected


def _arrays_of(arrays_path: Path, blob: bytes) -> dict[str, np.ndarray]:
    """The arrays of an .npz blob; CheckpointError for anything else (a bare .npy, a
    pickle, an archive of object arrays), even when its checksum matches."""
    problem = "not an .npz archive"
    try:
        loaded = np.load(io.BytesIO(blob), allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded as npz:
                arrays = {name: npz[name] for name in npz.files}
            problem = ""
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        problem = str(exc)
    if problem:
        raise CheckpointError(f"{arrays_path}: not a checkpoint's .npz arrays ({problem})")
    for name, array in arrays.items():
        if array.dtype.kind not in "biuf":
            raise CheckpointError(f"{arrays_path}: array {name!r} has dtype {array.dtype}, "
                                  "not numeric")
    return arrays


def latest_checkpoint(run_dir: Path, skipped: list[str] | None = None) -> Checkpoint | None:
    """The newest checkpoint that verifies; corrupt ones are logged by name and skipped
    (and their errors appended to `skipped`, for the caller to show the operator)."""
    directory = checkpoint_dir(run_dir)
    if not directory.is_dir():
        return None
    candidates = sorted(
        (int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))
    )
    for _, meta_path in reversed(candidates):
        try:
            return load_checkpoint(meta_path)
        except CheckpointError as exc:
            log.warning("skipping checkpoint: %s; falling back to the previous one", exc)
            if skipped is not None:
                skipped.append(str(exc))
    return None


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """The arrays as one .npz file (no pickled objects)."""
    buffer = io.BytesIO()
    # numpy's stub: a ** mapping could name savez's own `allow_pickle` flag
    np.savez(buffer, **{name: np.asarray(value)  # type: ignore[arg-type]
                        for name, value in arrays.items()})
    return buffer.getvalue()
