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
from typing import Any

from fl_server.atomic import write_text_atomic

#: Columns every record has, in CSV order; further keys follow alphabetically.
CORE_COLUMNS = ("round", "loss", "kl_bits", "utility_acc", "identity_acc", "wall_s")


def write_history(run_dir: Path, records: Sequence[dict[str, Any]]) -> None:
    write_text_atomic(run_dir / "history.json", json.dumps(list(records), indent=2) + "\n")
    extra = sorted({key for record in records for key in record} - set(CORE_COLUMNS))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*CORE_COLUMNS, *extra], lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    write_text_atomic(run_dir / "history.csv", buffer.getvalue())


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "history.json"
    return json.loads(path.read_text()) if path.exists() else []
