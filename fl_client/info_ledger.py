"""The device's information ledger: how many bits its uploaded representations may reveal.

Per uploaded clip the device charges KL(q(z|x) || N(0, I)) in bits, the rate of the
channel that produced the upload. Each upload draws fresh noise and depends on its own
clip only, so the sum of the charges is an upper bound on the mutual information between
everything the device ever uploaded and the clips it came from (docs/representations.md).
The device refuses to send a clip that would take this sum past its cap.

Charges are whole bits, rounded up per batch: the ledger never under-counts, and the one
figure a batch reveals about its content (its total rate) is coarse.

The file (``<state dir>/information_ledger.json``) follows the device's DP ledger
(`fl_client.device_ledger`): atomic writes under an exclusive lock, a SHA-256 of its own
content, and a corrupt file is an error, never a reset. A missing file is created on the
first upload; what keeps a deleted file from resetting the spend is the server's figure,
sent with every request and used as a floor (`spend(..., floor=...)`).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fl_client.device_ledger import locked, sealed, verified
from privacy.atomic_write import write_bytes_atomic

FILE_NAME = "information_ledger.json"
FORMAT = "fedmsr-information-ledger"
VERSION = 1


class InfoLedgerError(Exception):
    """The information ledger cannot be used (corrupt, unreadable); never upload then."""


@dataclass(frozen=True)
class Spend:
    """One decision: how many of the offered clips go out, what they cost, from what total."""

    clips: int
    bits: int
    before: int


def affordable(bits: np.ndarray, spent: int, cap: float | None) -> tuple[int, int]:
    """(n, charge): the longest prefix of clips whose rounded-up total keeps `spent + charge`
    within `cap` (every clip when there is no cap), and that charge in whole bits."""
    totals = [math.ceil(float(t)) for t in np.cumsum(np.asarray(bits, np.float64))]
    n = len(totals) if cap is None else sum(1 for t in totals if spent + t <= cap)
    return n, (totals[n - 1] if n else 0)


class InfoLedger:
    """A device's uploads (run, collection, clips, bits) and their running total."""

    def __init__(self, path: Path, uploads: tuple[dict[str, Any], ...] = ()) -> None:
        self.path = path
        self.uploads = uploads

    @classmethod
    def at(cls, state_dir: Path) -> InfoLedger:
        """The ledger in `state_dir` (read now if it exists; an empty one otherwise)."""
        path = Path(state_dir) / FILE_NAME
        with locked(path):
            return cls._read(path)

    @property
    def total_bits(self) -> int:
        return sum(int(u["bits"]) for u in self.uploads)

    @property
    def total_clips(self) -> int:
        return sum(int(u["clips"]) for u in self.uploads)

    def spend(self, run_id: str, collection: int, bits: np.ndarray, cap: float | None,
              floor: int = 0) -> Spend:
        """Decide and record, under the lock, how many of the clips (rates `bits`) go out.

        The device counts from max(its own total, `floor`); a charge of zero (nothing
        affordable, or nothing to send) writes nothing.
        """
        with locked(self.path):
            current = self._read(self.path)
            before = max(current.total_bits, int(floor))
            clips, charge = affordable(bits, before, cap)
            if clips:
                entry = {"run": run_id, "collection": int(collection), "clips": clips,
                         "bits": charge, "at": dt.datetime.now(dt.UTC).isoformat()}
                current.uploads = (*current.uploads, entry)
                current._write()
        self.uploads = current.uploads
        return Spend(clips, charge, before)

    @classmethod
    def _read(cls, path: Path) -> InfoLedger:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls(path)
        except OSError as exc:
            raise InfoLedgerError(f"information ledger {path} is unreadable ({exc.strerror}): "
                                  "refusing to upload") from None
        try:
            body = verified(text.encode("utf-8"), FORMAT, VERSION)
            uploads = tuple(dict(u) for u in body["uploads"])
            if any(int(u["bits"]) < 0 or int(u["clips"]) < 1 for u in uploads):
                raise ValueError("an upload with negative bits or no clips")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InfoLedgerError(f"information ledger {path} is corrupt ({exc}): refusing to "
                                  "upload; it is never reset, restore it from a backup") from None
        return cls(path, uploads)

    def _write(self) -> None:
        body = {"format": FORMAT, "version": VERSION, "uploads": list(self.uploads),
                "total_bits": self.total_bits}
        write_bytes_atomic(self.path, sealed(body))
