"""Tests for the footage manifest parser (privacy.footage_manifest)."""

from __future__ import annotations

import os
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from privacy.footage_manifest import (
    MAX_FIELD_CHARS,
    ManifestError,
    Vocabulary,
    parse_manifest,
    read_manifest,
)


def _write(root: Path, text: str | bytes, name: str = "manifest.csv") -> Path:
    p = root / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text, encoding="utf-8")
    return p


def test_captured_at_manifest_days_hours_labels(tmp_path: Path) -> None:
    m = read_manifest(_write(tmp_path, (
        "\ufeffpath,device,captured_at,activity,identity,location,scene\n"
        "a/walk.avi,cam-a,2026-03-02T23:59:00,walk,7,kitchen,3\n"
        "frames/f1,cam-b,2026-03-01T08:15:00,eat,,garden,\n"
        "\n"  # blank lines are skipped
        "b.mp4,cam-a,2026-03-04,cook,12,kitchen,indoor\n")))
    assert m.label_columns == ("activity", "identity", "location", "scene")
    assert [r.rel_path for r in m.rows] == ["a/walk.avi", "frames/f1", "b.mp4"]
    assert [r.row for r in m.rows] == [2, 3, 5]
    # days since the earliest capture date (2026-03-01); hours from the timestamps
    assert [r.day for r in m.rows] == [1, 0, 3]
    assert [r.hour for r in m.rows] == [23, 8, 0]
    assert m.rows[0].path == tmp_path / "a" / "walk.avi"
    assert dict(m.rows[0].labels) == {"activity": "walk", "identity": 7, "location": "kitchen",
                                      "scene": 3}
    assert "identity" not in m.rows[1].labels and "scene" not in m.rows[1].labels
    assert m.devices() == ("cam-a", "cam-b")
    assert [r.rel_path for r in m.for_device("cam-a")] == ["a/walk.avi", "b.mp4"]
    vocab = m.vocabulary
    assert vocab.columns["activity"] == ("cook", "eat", "walk")
    assert vocab.columns["identity"] == (7, 12)  # numeric order, not text order
    assert vocab.columns["scene"] == (3, "indoor")  # ints before strings
    assert vocab.id_of("activity", "walk") == 2
    assert vocab.id_of("activity", "swim") == -1 and vocab.id_of("identity", None) == -1


def test_day_hour_manifest_and_day_wins(tmp_path: Path) -> None:
    m = parse_manifest("path,device,day,hour,captured_at\n"
                       "x.avi,d,4,,\n"
                       "y.avi,d,,,2026-01-05T10:00:00\n"
                       "z.avi,d,2,17,2026-01-09T10:00:00\n", tmp_path)
    assert [(r.day, r.hour) for r in m.rows] == [(4, -1), (0, 10), (2, 17)]
    assert m.label_columns == () and m.rows[0].captured_at is None


def test_aware_times_use_their_own_offset(tmp_path: Path) -> None:
    m = parse_manifest("path,device,captured_at\n"
                       "x.avi,d,2026-01-05T23:30:00+01:00\n"
                       "y.avi,d,2026-01-05T23:30:00Z\n", tmp_path)
    # both local dates are the 5th (UTC they differ by a day): a life-log day is local
    assert [r.day for r in m.rows] == [0, 0]
    assert m.rows[0].captured_at == datetime(2026, 1, 5, 23, 30,
                                             tzinfo=timezone(timedelta(hours=1)))


def test_shared_vocabulary_ids(tmp_path: Path) -> None:
    v = Vocabulary({"activity": ("eat", "walk")})
    assert v.id_of("activity", "walk") == 1 and v.id_of("location", "x") == -1


HEADER = "path,device,day,hour,activity"
BAD: list[tuple[str, str, int, str, str]] = [
    ("missing-device", "path,day\nx.avi,1\n", 1, "device", "required column is missing"),
    ("missing-path", "device,day\nd,1\n", 1, "path", "required column is missing"),
    ("no-time", "path,device,activity\nx.avi,d,walk\n", 1, "captured_at", "needs a"),
    ("hour-without-day", "path,device,captured_at,hour\nx.avi,d,2026-01-01,3\n", 1, "hour",
     "needs a 'day'"),
    ("dup-header", "path,device,day,activity,activity\nx.avi,d,1,a,b\n", 1, "activity",
     "appears twice"),
    ("empty-header-name", "path,device,day,\nx.avi,d,1,a\n", 1, "", "empty column name"),
    ("reserved-label", "path,device,day,wearer\nx.avi,d,1,3\n", 1, "wearer", "identity"),
    ("short-row", f"{HEADER}\nx.avi,d,1,2,walk\ny.avi,d,1\n", 3, "hour", "has 3 fields"),
    ("long-row", f"{HEADER}\nx.avi,d,1,2,walk,extra\n", 2, "#6", "has 6 fields"),
    ("bad-quote", f'{HEADER}\nx.avi,d,1,2,"wa"lk\n', 2, None, "unreadable row"),
    ("bad-day", f"{HEADER}\nx.avi,d,1,2,walk\ny.avi,d,one,2,walk\n", 3, "day",
     "not an integer"),
    ("negative-day", f"{HEADER}\nx.avi,d,-1,2,walk\n", 2, "day", "out of range"),
    ("hour-24", f"{HEADER}\nx.avi,d,1,24,walk\n", 2, "hour", "out of range (expected 0..23)"),
    ("bad-iso", "path,device,captured_at\nx.avi,d,2026-01-01\ny.avi,d,yesterday\n", 3,
     "captured_at", "not an ISO 8601"),
    ("bad-iso-month", "path,device,captured_at\nx.avi,d,2026-13-01T00:00:00\n", 2,
     "captured_at", "not an ISO 8601"),
    ("mixed-offsets", ("path,device,captured_at\nx.avi,d,2026-01-01T00:00:00+00:00\n"
                       "y.avi,d,2026-01-01T00:00:00+01:00\nz.avi,d,2026-01-02T00:00:00\n"), 4,
     "captured_at",
     "with and without a UTC offset"),
    ("no-day-in-row", "path,device,day,captured_at\nx.avi,d,,\n", 2, "day", "needs a 'day'"),
    ("empty-device", f"{HEADER}\nx.avi, ,1,2,walk\n", 2, "device", "is empty"),
    ("empty-path", f"{HEADER}\n,d,1,2,walk\n", 2, "path", "is empty"),
    ("absolute-path", f"{HEADER}\nx.avi,d,1,2,walk\n/etc/passwd,d,1,2,walk\n", 3, "path",
     "is absolute"),
    ("windows-absolute", f"{HEADER}\nC:\\clips\\x.avi,d,1,2,walk\n", 2, "path", "is absolute"),
    ("dotdot", f"{HEADER}\n../outside.avi,d,1,2,walk\n", 2, "path", "outside"),
    ("dotdot-inner", f"{HEADER}\na/../../x.avi,d,1,2,walk\n", 2, "path", "outside"),
    ("dup-path", f"{HEADER}\nx.avi,d,1,2,walk\n./x.avi,e,1,2,walk\n", 3, "path",
     "already on row 2"),
    ("long-field", f"{HEADER}\nx.avi,d,1,2,{'w' * (MAX_FIELD_CHARS + 1)}\n", 2, "activity",
     "over 4096"),
]


@pytest.mark.parametrize("text,row,column,problem", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_manifest_names_file_row_column(tmp_path: Path, text: str, row: int,
                                            column: str | None, problem: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    msg = str(info.value)
    where = f"{path}: row {row}" + (f", column {column!r}" if column is not None else "")
    assert msg.startswith(where + ":"), msg
    assert problem in msg, msg
    assert isinstance(info.value, ValueError)


def test_not_utf8_names_row_and_column(tmp_path: Path) -> None:
    path = _write(tmp_path, b"path,device,day,activity\nx.avi,d,1,walk\ny.avi,d,2,caf\xe9\n")
    with pytest.raises(ManifestError, match=re.escape(f"{path}: row 3, column 'activity': "
                                                      "is not UTF-8")):
        read_manifest(path)


def test_symlink_escaping_the_folder(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "ok").mkdir(parents=True)
    outside = tmp_path / "secret"
    outside.mkdir()
    os.symlink(outside, root / "link")
    os.symlink(root / "ok", root / "inner-link")  # a symlink that stays inside is fine
    path = _write(root, "path,device,day\ninner-link/x.avi,d,0\nlink/x.avi,d,1\n")
    with pytest.raises(ManifestError, match=re.escape(f"{path}: row 3, column 'path'")):
        read_manifest(path)
    assert len(read_manifest(_write(root, "path,device,day\ninner-link/x.avi,d,0\n",
                                    "ok.csv")).rows) == 1


def test_empty_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="is empty"):
        read_manifest(_write(tmp_path, ""))
    with pytest.raises(ManifestError, match="cannot be read"):
        read_manifest(tmp_path / "nope.csv")
    # a header alone is a valid manifest with no rows
    assert read_manifest(_write(tmp_path, "path,device,day\n")).rows == ()
