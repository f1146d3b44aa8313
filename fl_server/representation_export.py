"""Stored representations out of the registry: one encoder version, decoded, to a file.

`fedmsr representations export` (fl_server/cli/representations.py) is the way an analyst
gets the collected representations for work outside fedmsr. What it writes follows from
what the registry may say about each row:

* **One encoder version per file.** Two models' representations live in different spaces
  (fl_server.representations); the caller names the version (a unique prefix will do) and
  an unknown one is refused with the versions that exist.
* **Only what the collection mode recorded.** A linkable row carries its device id, clip
  id and capture day and hour; an unlinkable row (collected through the shuffler) carries
  its random pseudonym, the first day of its capture window and the window's length, and
  *no device*: its device column is empty, never filled in.
* **Consent.** Rows of a device that was erased (`fedmsr fleet erase`, audit action
  `device.erase`) or that does not consent to evaluation are withheld, even rows that
  reached the store after the erasure (a collection in flight); the summary counts them.
* **Accountable.** Every export adds one `representations.export` audit entry (version,
  format, path, row counts, the file's SHA-256), committed before the file appears: a
  file on disk has its audit entry. The file is written to a temporary name beside the
  target and renamed; on any error nothing is left behind and an existing file is kept.

Payloads are decoded with `privacy.payload.decode_payload` into float32 vectors
(docs/representations.md has the byte layout and a decoder that needs only numpy).
"""

from __future__ import annotations

import datetime as dt
import difflib
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from fl_server.registry import audit
from fl_server.registry.db import session_scope
from fl_server.registry.models import AuditEntry, Device
from fl_server.representations import (
    DatabaseStore,
    RepresentationQuery,
    StoredRepresentation,
    StoredUnlinkable,
    UnlinkableStore,
)
from privacy.atomic_write import replacing
from privacy.payload import decode_payload

FORMATS = ("parquet", "npz")
AUDIT_ACTION = "representations.export"
#: what the erasure writes to the audit log (fl_server.representations.erase_device)
ERASE_ACTION = "device.erase"
#: the layout of the exported file (columns, keys), written into it
EXPORT_FORMAT_VERSION = 1
#: npz stands for a missing capture hour or window day with this (integers have no null)
NPZ_UNKNOWN = -1


class ExportInputError(ValueError):
    """The request cannot be served as given; `option` names the flag to change."""

    def __init__(self, option: str, problem: str) -> None:
        super().__init__(f"{option}: {problem}")
        self.option = option
        self.problem = problem


@dataclass(frozen=True)
class ExportRequest:
    encoder_version: str  # the full version or a unique prefix of one
    format: str  # one of FORMATS
    out: Path
    force: bool = False  # replace an existing file


@dataclass(frozen=True)
class LinkableRow:
    """A representation collected with its device (table `representations`)."""

    id: int
    device_id: int
    run_id: str
    collection_round: int
    clip_id: str
    captured_day: int
    captured_hour: int | None  # None: the footage gave no hour
    payload_version: int
    stored_at: dt.datetime
    z: np.ndarray  # float32 [D], the decoded payload


@dataclass(frozen=True)
class UnlinkableRow:
    """A representation collected through the shuffler (table `unlinkable_representations`):
    no device, no clip id, no hour."""

    id: int
    run_id: str
    collection_round: int
    pseudonym: str
    window_day: int | None  # None: the capture time was dropped
    granularity_days: int
    payload_version: int
    stored_at: dt.datetime
    z: np.ndarray


@dataclass(frozen=True)
class Representations:
    """What one export holds: one encoder version's rows that may leave the registry."""

    encoder_version: str
    latent_dim: int  # 0 when no row is exported
    linkable: tuple[LinkableRow, ...]
    unlinkable: tuple[UnlinkableRow, ...]
    withheld_rows: int  # rows of erased / non-consenting devices, left out


@dataclass(frozen=True)
class ExportSummary:
    path: Path
    format: str
    encoder_version: str
    linkable_rows: int
    unlinkable_rows: int
    devices: int
    withheld_rows: int
    bytes: int
    sha256: str


def check_request(request: ExportRequest) -> None:
    """Everything about the request that needs no database: format and the out path."""
    if request.format not in FORMATS:
        raise ExportInputError("--format", f"must be one of {', '.join(FORMATS)}, got "
                               f"{request.format!r}")
    out = request.out
    if out.is_dir():
        raise ExportInputError("--out", f"{out} is a folder; give a file path")
    if out.exists() and not request.force:
        raise ExportInputError("--out", f"{out} exists; pass --force to replace it")
    if not out.parent.is_dir():
        raise ExportInputError("--out", f"folder {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise ExportInputError("--out", f"folder {out.parent} is not writable")


def known_versions(session: Session) -> dict[str, int]:
    """Encoder version -> stored rows, linkable and unlinkable together."""
    found = DatabaseStore().versions(session)
    for version, n in UnlinkableStore().versions(session).items():
        found[version] = found.get(version, 0) + n
    return found


def resolve_version(session: Session, given: str) -> str:
    """The stored version `given` names (itself or a unique prefix); ExportInputError with
    the closest versions, or the list of known ones, otherwise."""
    counts = known_versions(session)
    known = sorted(counts)
    listed = ", ".join(f"{v[:16]} ({counts[v]} rows)" for v in known)
    if not given:
        raise ExportInputError("--encoder-version", "give the encoder version to export; "
                               + (f"known: {listed}" if known else "the registry holds no "
                                  "representations"))
    if given in known:
        return given
    matches = [v for v in known if given and v.startswith(given)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ExportInputError("--encoder-version", f"{given!r} is the start of "
                               f"{len(matches)} versions ({', '.join(v[:16] for v in matches)}); "
                               "give more of it")
    if not known:
        raise ExportInputError("--encoder-version", f"no version {given!r}: the registry "
                               "holds no representations")
    heads = {v[:len(given)]: v for v in known}  # a mistyped prefix is close to a prefix
    close = difflib.get_close_matches(given, known, n=3, cutoff=0.6) or [
        heads[h] for h in difflib.get_close_matches(given, list(heads), n=3, cutoff=0.6)]
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ExportInputError("--encoder-version", f"no stored representations of version "
                           f"{given!r}; {hint}known: {listed}")


def withheld_devices(session: Session) -> set[int]:
    """Devices whose representations may not leave: erased, or no consent to evaluation."""
    erased = set(session.scalars(select(AuditEntry.device_id).where(
        AuditEntry.action == ERASE_ACTION, AuditEntry.device_id.is_not(None))))
    refused = set(session.scalars(select(Device.id).where(Device.consent_evaluation.is_(False))))
    return {int(d) for d in erased | refused if d is not None}


def read(session: Session, version: str) -> Representations:
    """One encoder version's exportable rows, payloads decoded."""
    withheld = withheld_devices(session)
    stored = DatabaseStore().select(session, RepresentationQuery(version))
    linkable = tuple(_linkable(r) for r in stored if r.device_id not in withheld)
    unlinkable = tuple(_unlinkable(r) for r in UnlinkableStore().select(session, None, version))
    dims = {len(r.z) for r in linkable} | {len(r.z) for r in unlinkable}
    if len(dims) > 1:  # one encoder version has one latent size; the store says otherwise
        raise ExportInputError("--encoder-version", f"the rows of {version[:16]} decode to "
                               f"vectors of {sorted(dims)} values; the store is inconsistent")
    return Representations(version, dims.pop() if dims else 0, linkable, unlinkable,
                           len(stored) - len(linkable))


def _linkable(r: StoredRepresentation) -> LinkableRow:
    return LinkableRow(r.id, r.device_id, r.run_id, r.collection_round, r.clip_id,
                       r.captured_day, r.captured_hour, r.payload_version, r.stored_at,
                       decode_payload(r.payload))


def _unlinkable(r: StoredUnlinkable) -> UnlinkableRow:
    return UnlinkableRow(r.id, r.run_id, r.collection_round, r.pseudonym, r.window_day,
                         r.granularity_days, r.payload_version, r.stored_at,
                         decode_payload(r.payload))


# -- writers ------------------------------------------------------------------------------


def _vectors(rows: tuple[LinkableRow, ...] | tuple[UnlinkableRow, ...], dim: int) -> np.ndarray:
    return np.stack([r.z for r in rows]).astype(np.float32) if rows else np.zeros((0, dim), np.float32)


def _micros(moment: dt.datetime) -> np.datetime64:
    return np.datetime64(moment.astimezone(dt.UTC).replace(tzinfo=None), "us")


def to_npz(reps: Representations) -> bytes:
    """numpy's npz: `linkable/<column>` and `unlinkable/<column>` arrays (one element per
    row, `z` [rows, D] float32), plus `encoder_version` and `format_version`. An unlinkable
    row has no device, so the unlinkable group has no device column. A missing hour or
    window day is NPZ_UNKNOWN. Loads with `np.load(path)`, no pickle."""
    unknown = NPZ_UNKNOWN
    link, unl = reps.linkable, reps.unlinkable
    arrays: dict[str, np.ndarray] = {
        "encoder_version": np.array(reps.encoder_version),
        "format_version": np.array(EXPORT_FORMAT_VERSION, np.int32),
        "linkable/z": _vectors(link, reps.latent_dim),
        "linkable/id": np.array([r.id for r in link], np.int64),
        "linkable/device_id": np.array([r.device_id for r in link], np.int64),
        "linkable/run_id": np.array([r.run_id for r in link], np.str_),
        "linkable/collection_round": np.array([r.collection_round for r in link], np.int32),
        "linkable/clip_id": np.array([r.clip_id for r in link], np.str_),
        "linkable/captured_day": np.array([r.captured_day for r in link], np.int32),
        "linkable/captured_hour": np.array(
            [unknown if r.captured_hour is None else r.captured_hour for r in link], np.int32),
        "linkable/payload_version": np.array([r.payload_version for r in link], np.int32),
        "linkable/stored_at": np.array([_micros(r.stored_at) for r in link], "datetime64[us]"),
        "unlinkable/z": _vectors(unl, reps.latent_dim),
        "unlinkable/id": np.array([r.id for r in unl], np.int64),
        "unlinkable/run_id": np.array([r.run_id for r in unl], np.str_),
        "unlinkable/collection_round": np.array([r.collection_round for r in unl], np.int32),
        "unlinkable/pseudonym": np.array([r.pseudonym for r in unl], np.str_),
        "unlinkable/window_day": np.array(
            [unknown if r.window_day is None else r.window_day for r in unl], np.int32),
        "unlinkable/granularity_days": np.array([r.granularity_days for r in unl], np.int32),
        "unlinkable/payload_version": np.array([r.payload_version for r in unl], np.int32),
        "unlinkable/stored_at": np.array([_micros(r.stored_at) for r in unl], "datetime64[us]"),
    }
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]  # (numpy's stubs: a str-keyed mapping)
    return buf.getvalue()


def to_parquet(reps: Representations) -> bytes:
    """One Parquet table, a row per representation: `collection` ("linkable" or
    "unlinkable"), the columns of both tables (null where a row's mode records nothing:
    `device_id`, `clip_id` and `captured_hour` of an unlinkable row, `pseudonym` and the
    window of a linkable one) and `z` (fixed-size list of D float32). The schema metadata
    holds `encoder_version` and `format_version`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    link, unl = reps.linkable, reps.unlinkable
    none_l: list[Any] = [None] * len(link)
    none_u: list[Any] = [None] * len(unl)
    flat = np.concatenate([_vectors(link, reps.latent_dim), _vectors(unl, reps.latent_dim)])
    dim = reps.latent_dim
    z = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1), pa.float32()), dim) \
        if dim else pa.array([], pa.list_(pa.float32(), 1))
    columns: dict[str, Any] = {
        "collection": pa.array(["linkable"] * len(link) + ["unlinkable"] * len(unl), pa.string()),
        "id": pa.array([r.id for r in link] + [r.id for r in unl], pa.int64()),
        "run_id": pa.array([r.run_id for r in link] + [r.run_id for r in unl], pa.string()),
        "collection_round": pa.array([r.collection_round for r in link]
                                     + [r.collection_round for r in unl], pa.int32()),
        "device_id": pa.array([r.device_id for r in link] + none_u, pa.int64()),
        "clip_id": pa.array([r.clip_id for r in link] + none_u, pa.string()),
        "captured_day": pa.array([r.captured_day for r in link] + none_u, pa.int32()),
        "captured_hour": pa.array([r.captured_hour for r in link] + none_u, pa.int32()),
        "pseudonym": pa.array(none_l + [r.pseudonym for r in unl], pa.string()),
        "window_day": pa.array(none_l + [r.window_day for r in unl], pa.int32()),
        "granularity_days": pa.array(none_l + [r.granularity_days for r in unl], pa.int32()),
        "payload_version": pa.array([r.payload_version for r in link]
                                    + [r.payload_version for r in unl], pa.int32()),
        "stored_at": pa.array([r.stored_at for r in link] + [r.stored_at for r in unl],
                              pa.timestamp("us", tz="UTC")),
        "z": z,
    }
    table = pa.table(columns).replace_schema_metadata({
        "encoder_version": reps.encoder_version, "format_version": str(EXPORT_FORMAT_VERSION)})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return bytes(sink.getvalue().to_pybytes())


WRITERS = {"parquet": to_parquet, "npz": to_npz}


def export(url: str, request: ExportRequest) -> ExportSummary:
    """Write one encoder version's exportable representations to `request.out`, audited.

    Order: check the request, read and serialize (nothing written yet), write a temporary
    file beside the target, commit the audit entry, rename. A failure at any step leaves
    no file and no entry (an existing target is kept)."""
    check_request(request)
    with session_scope(url) as session:
        version = resolve_version(session, request.encoder_version)
        reps = read(session, version)
        data = WRITERS[request.format](reps)
        digest = hashlib.sha256(data).hexdigest()
        summary = ExportSummary(
            request.out, request.format, version, len(reps.linkable), len(reps.unlinkable),
            len({r.device_id for r in reps.linkable}), reps.withheld_rows, len(data), digest)
        try:
            with replacing(request.out) as tmp:
                tmp.write_bytes(data)
                audit.record(session, AUDIT_ACTION, {
                    "encoder_version": version, "format": request.format,
                    "path": str(request.out.resolve()), "linkable_rows": summary.linkable_rows,
                    "unlinkable_rows": summary.unlinkable_rows, "devices": summary.devices,
                    "withheld_rows": summary.withheld_rows, "bytes": summary.bytes,
                    "sha256": digest})
                session.commit()  # the entry is recorded before the file appears
        except OSError as exc:
            raise ExportInputError("--out", f"cannot write {request.out}: "
                                   f"{exc.strerror or exc}") from None
    return summary
