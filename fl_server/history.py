"""The run's history: one record per finished round, as JSON and CSV.

Written in full (atomically) after every round from the list the checkpoint carries, so
the files always agree with the newest checkpoint, including after a resume.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

from privacy.atomic_write import write_text_atomic
from privacy.wire.round_record import RoundRecord

#: Columns every record has, in CSV order; further keys follow alphabetically.
CORE_COLUMNS = ("round", "loss", "kl_bits", "utility_acc", "identity_acc", "wall_s")


def write_history(run_dir: Path, records: Sequence[RoundRecord]) -> None:
    rows = [record.to_json() for record in records]
    write_text_atomic(run_dir / "history.json", json.dumps(rows, indent=2) + "\n")
    extra = sorted({key for row in rows for key in row} - set(CORE_COLUMNS))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*CORE_COLUMNS, *extra], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(run_dir / "history.csv", buffer.getvalue())


def read_history(run_dir: Path) -> list[RoundRecord]:
    """The run's finished rounds (none when it has not finished one)."""
    path = run_dir / "history.json"
    return [RoundRecord.from_json(row) for row in json.loads(path.read_text())] \
        if path.exists() else []
