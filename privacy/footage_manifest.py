"""The footage manifest: a CSV that says which recordings exist, whose they are, when and what.

One format for both sides: a device trains on the rows of its own name
(`fl_client.manifest_source`), a simulation over real data plays one virtual device per
``device`` value, and the operator's labelled evaluation set is a manifest too. So the
parser lives in `privacy` and imports neither side.

Format (UTF-8, optional BOM, comma-separated, a header row):

``path`` (required)
    A video file or a folder of frame images, relative to the manifest's own folder. It
    must stay inside that folder: an absolute path, a ``..`` that climbs out, or a symlink
    that resolves outside is an error (a manifest cannot point a device at arbitrary files).
    Paths use ``/``. The file need not exist when parsing: a missing or unreadable
    recording is skipped when decoding, like a corrupt one.
``device`` (required)
    Any non-empty string: the device (or virtual device) that holds the recording.
``captured_at`` and/or ``day`` [+ ``hour``] (at least one of ``captured_at``/``day``)
    ``captured_at`` is ISO 8601 (``datetime.fromisoformat``: ``2026-03-01T08:15:00``,
    ``...Z``, ``...+01:00``, or a bare date). Either every timestamp of a manifest has an
    offset or none has. ``day`` is an int >= 0, ``hour`` an int 0..23. Per row, a
    non-empty ``day`` wins; otherwise the day comes from ``captured_at``: **the number of
    calendar days between the capture's date and the earliest capture date in the
    manifest** (dates as written, in the timestamp's own offset: a life-log's "day" is the
    wearer's local day, not a UTC day). The hour is ``hour`` if given, else the
    timestamp's hour, else -1 (unknown). Each row needs a day from one of the two.
any other column
    A label. A non-empty cell is an int if it reads as one (``-3``, ``12``), else a
    string; an empty cell means *not labelled*. ``activity``, ``identity`` and
    ``location`` fill a clip batch's ``activity``, ``wearer`` and ``location`` labels;
    any other label column becomes a batch label of its own name. Names that are batch
    labels computed otherwise (``wearer``, ``indoor``, ``objects``, ``captured_at`` ...)
    cannot be label columns: use ``identity`` for who wears the camera.

Label ids: per label column, the sorted distinct values (ints before strings, ints
numerically) are numbered 0, 1, ...; an unknown or unlabelled value is -1. Ids are
therefore a property of one manifest: sources that must agree (the devices of one run
and the operator's eval set) should pass the same :class:`Vocabulary` explicitly.

Any problem raises one :class:`ManifestError` whose message names the file, the row (the
line number in the file, header = 1) and the column.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path, PurePosixPath, PureWindowsPath
from types import MappingProxyType

__all__ = [
    "LABEL_FIELDS",
    "MAX_FIELD_CHARS",
    "MAX_MANIFEST_BYTES",
    "Manifest",
    "ManifestError",
    "ManifestRow",
    "Vocabulary",
    "parse_manifest",
    "read_manifest",
]

#: a cell longer than this is an error (paths and labels are short; this stops a hostile
#: or corrupted file from making the parser hold megabytes per cell)
MAX_FIELD_CHARS = 4096
#: a manifest file larger than this is refused before it is read
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
#: manifest label column -> ClipBatch label key it fills
LABEL_FIELDS: Mapping[str, str] = MappingProxyType(
    {"activity": "activity", "identity": "wearer", "location": "location"})

_REQUIRED = ("path", "device")
_TIME = ("captured_at", "day", "hour")
#: not label columns: batch labels computed from something else, or time columns
_RESERVED = frozenset({"wearer", "indoor", "objects", "view", "profile", "clip_id", "location_id",
                       "activity_id", "bystanders"})

Label = int | str


class ManifestError(ValueError):
    """A manifest cannot be used; the message names the file, the row and the column."""


def _err(source: str, row: int | None, column: str | None, problem: str) -> ManifestError:
    where = source
    if row is not None:
        where += f": row {row}"
    if column is not None:
        where += f", column {column!r}" if row is not None else f": column {column!r}"
    return ManifestError(f"{where}: {problem}")


@dataclass(frozen=True)
class ManifestRow:
    """One recording: where it is, whose it is, when, and its labels."""

    path: Path  # the manifest's folder / the relative path (inside the folder)
    rel_path: str  # as written, normalised to '/' separators
    device: str
    day: int
    hour: int  # -1: unknown
    row: int  # line number in the manifest (header = 1), for messages
    captured_at: datetime | None = None
    labels: Mapping[str, Label] = field(default_factory=lambda: MappingProxyType({}),
                                        hash=False)


def _label_order(v: Label) -> tuple[int, int, str]:
    return (0, v, "") if isinstance(v, int) else (1, 0, v)


@dataclass(frozen=True)
class Vocabulary:
    """Per label column, the values in id order: id = position, unknown = -1."""

    columns: Mapping[str, tuple[Label, ...]] = field(hash=False)

    @classmethod
    def of(cls, rows: Sequence[ManifestRow], columns: Sequence[str]) -> Vocabulary:
        """The sorted distinct values of each column (ints before strings)."""
        return cls(MappingProxyType({c: tuple(sorted({r.labels[c] for r in rows if c in r.labels},
                                                     key=_label_order)) for c in columns}))

    def id_of(self, column: str, value: Label | None) -> int:
        values = self.columns.get(column, ())
        try:
            return values.index(value) if value is not None else -1
        except ValueError:
            return -1


@dataclass(frozen=True)
class Manifest:
    source: Path  # the manifest file
    root: Path  # the folder paths are relative to
    rows: tuple[ManifestRow, ...]
    label_columns: tuple[str, ...]

    @property
    def vocabulary(self) -> Vocabulary:
        return Vocabulary.of(self.rows, self.label_columns)

    def devices(self) -> tuple[str, ...]:
        """The distinct ``device`` values, sorted."""
        return tuple(sorted({r.device for r in self.rows}))

    def for_device(self, device: str) -> tuple[ManifestRow, ...]:
        return tuple(r for r in self.rows if r.device == device)


def _int(source: str, row: int, column: str, text: str, lo: int, hi: int | None) -> int:
    try:
        v = int(text.strip(), 10)
    except ValueError:
        raise _err(source, row, column, f"{text!r} is not an integer") from None
    if v < lo or (hi is not None and v > hi):
        bound = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise _err(source, row, column, f"{v} is out of range (expected {bound})")
    return v


def _timestamp(source: str, row: int, text: str) -> datetime:
    t = text.strip()
    try:
        if len(t) == 10:  # a bare date
            d = date.fromisoformat(t)
            return datetime(d.year, d.month, d.day)
        return datetime.fromisoformat(t)
    except ValueError:
        raise _err(source, row, "captured_at",
                   f"{text!r} is not an ISO 8601 time (e.g. 2026-03-01T08:15:00)") from None


def _label(text: str) -> Label:
    t = text.strip()
    try:
        return int(t, 10)
    except ValueError:
        return t


def _inside(source: str, row: int, root: Path, text: str) -> tuple[Path, str]:
    rel = text.strip().replace("\\", "/")
    if not rel:
        raise _err(source, row, "path", "is empty; give a video file or a frame folder")
    if PurePosixPath(rel).is_absolute() or PureWindowsPath(text.strip()).anchor:
        raise _err(source, row, "path", f"{text!r} is absolute; give a path relative to "
                                         "the manifest's folder")
    path = root / rel
    real_root = root.resolve()
    try:
        path.resolve().relative_to(real_root)
    except ValueError:
        raise _err(source, row, "path", f"{text!r} leads outside the manifest's folder "
                                         f"{root} ('..' or a symlink)") from None
    return path, str(PurePosixPath(rel))


def _decode(source: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        head = raw[:exc.start].decode("utf-8", errors="replace")
        line = head.count("\n") + 1
        header = next(csv.reader(io.StringIO(raw.split(b"\n", 1)[0].decode("utf-8", "replace"))),
                      [])
        col_ix = head.rsplit("\n", 1)[-1].count(",")
        column = header[col_ix] if line > 1 and col_ix < len(header) else f"#{col_ix + 1}"
        raise _err(source, line, column, "is not UTF-8; save the manifest as UTF-8") from None


def parse_manifest(text: str, root: str | Path, source: str = "<manifest>") -> Manifest:
    """Parse manifest `text` whose paths are relative to `root` (see the module docstring)."""
    root = Path(root)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise _err(source, None, None, "is empty; expected a header row "
                                       "(path,device,captured_at|day,...)") from None
    except csv.Error as exc:
        raise _err(source, 1, None, f"unreadable header: {exc}") from None
    header = [h.strip() for h in header]
    seen: set[str] = set()
    for h in header:
        if len(h) > MAX_FIELD_CHARS:
            raise _err(source, 1, h[:40] + "...", f"header name is over {MAX_FIELD_CHARS} chars")
        if not h:
            raise _err(source, 1, "", "the header has an empty column name")
        if h in seen:
            raise _err(source, 1, h, "appears twice in the header")
        seen.add(h)
    for need in _REQUIRED:
        if need not in seen:
            raise _err(source, 1, need, f"required column is missing (header: {', '.join(header)})")
    if "captured_at" not in seen and "day" not in seen:
        raise _err(source, 1, "captured_at", "the manifest needs a 'captured_at' (ISO 8601) "
                                             "or a 'day' (int) column")
    if "hour" in seen and "day" not in seen:
        raise _err(source, 1, "hour", "an 'hour' column needs a 'day' column ('captured_at' "
                                      "carries its own hour)")
    labels = tuple(h for h in header if h not in _REQUIRED and h not in _TIME)
    for c in labels:
        if c in _RESERVED:
            raise _err(source, 1, c, "is a batch label computed otherwise and cannot be a "
                                     "label column (use 'identity' for the wearer)")

    cells: list[tuple[int, dict[str, str]]] = []
    line = 1
    while True:
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise _err(source, reader.line_num, None, f"unreadable row: {exc}") from None
        line = reader.line_num
        if not record or all(not c.strip() for c in record) and len(record) <= 1:
            continue  # a blank line
        if len(record) != len(header):
            col = header[len(record)] if len(record) < len(header) else f"#{len(record)}"
            raise _err(source, line, col, f"the row has {len(record)} fields, the header "
                                          f"{len(header)}")
        for h, c in zip(header, record):
            if len(c) > MAX_FIELD_CHARS:
                raise _err(source, line, h, f"field is over {MAX_FIELD_CHARS} characters")
        cells.append((line, dict(zip(header, record))))

    stamps: dict[int, datetime] = {}
    for line, cell in cells:
        if cell.get("captured_at", "").strip():
            stamps[line] = _timestamp(source, line, cell["captured_at"])
    if stamps:
        aware = {ln for ln, t in stamps.items() if t.tzinfo is not None}
        if aware and len(aware) != len(stamps):
            odd = min(set(stamps) - aware) if len(aware) > len(stamps) / 2 else min(aware)
            raise _err(source, odd, "captured_at", "mixes times with and without a UTC offset; "
                                                   "give every time an offset or none")
    first = min(t.date() for t in stamps.values()) if stamps else None

    rows: list[ManifestRow] = []
    paths: dict[str, int] = {}
    for line, cell in cells:
        path, rel = _inside(source, line, root, cell["path"])
        if rel in paths:
            raise _err(source, line, "path", f"{rel!r} is already on row {paths[rel]}")
        paths[rel] = line
        device = cell["device"].strip()
        if not device:
            raise _err(source, line, "device", "is empty")
        stamp = stamps.get(line)
        if cell.get("day", "").strip():
            day = _int(source, line, "day", cell["day"], 0, None)
        elif stamp is not None and first is not None:
            day = (stamp.date() - first).days
        else:
            raise _err(source, line, "day" if "day" in cell else "captured_at",
                       "is empty: a row needs a 'day' or a 'captured_at'")
        if cell.get("hour", "").strip():
            hour = _int(source, line, "hour", cell["hour"], 0, 23)
        else:
            hour = stamp.hour if stamp is not None else -1
        labs = {c: _label(cell[c]) for c in labels if cell[c].strip()}
        rows.append(ManifestRow(path, rel, device, day, hour, line, stamp,
                                MappingProxyType(labs)))
    return Manifest(Path(source), root, tuple(rows), labels)


def read_manifest(path: str | Path) -> Manifest:
    """Read and parse the manifest file at `path`; relative paths are from its folder."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise _err(str(path), None, None, f"is {size} bytes; a manifest is at most "
                                              f"{MAX_MANIFEST_BYTES}")
        raw = path.read_bytes()
    except OSError as exc:
        raise _err(str(path), None, None, f"cannot be read: {exc.strerror or exc}") from None
    return parse_manifest(_decode(str(path), raw), path.parent, str(path))
