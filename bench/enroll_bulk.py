"""Bulk enrollment: 10,000 devices, against baselines measured in the same process.

    python bench/enroll_bulk.py [--count 10000] [--db URL] [--row-sample 500]

Figures (each on a fresh, migrated registry; SQLite in a temporary directory unless
`--db` names another database, e.g. a PostgreSQL schema):

* ``keygen``      - generating and serialising `count` P-384 key pairs, nothing else: the
                    floor any enrollment of `count` devices pays;
* ``bulk enroll`` - `fl_server.enrollment.enroll` of `count` devices: keys, one
                    transaction (batched INSERT ... RETURNING for devices, batched audit
                    rows), bundles staged and published;
* ``row-at-a-time`` - the naive way for `row-sample` devices: one ORM add + commit per
                    device (keys included), scaled per device.

Printed ratios: bulk / keygen (how much enrollment adds to key generation), and
row-at-a-time / bulk per device (what batching buys).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import text
from sqlalchemy.orm import Session

from fl_server import enrollment
from fl_server.registry import db
from fl_server.registry.models import AuditEntry, Device, utcnow


def fresh_url(base: str | None, workdir: Path, tag: str) -> str:
    """A new empty registry: a SQLite file, or a new PostgreSQL schema under `base`."""
    if base is None:
        return f"sqlite:///{workdir / f'{tag}.db'}"
    schema = f"fedmsr_bench_{tag}_{int(time.time())}"
    with db.get_engine(base).connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        connection.commit()
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{schema}"


def time_keygen(count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        enrollment.generate_keypair()
    return time.perf_counter() - started


def time_bulk(url: str, count: int, bundles: Path) -> float:
    db.upgrade(url)
    specs = [enrollment.DeviceSpec(f"bulk-{i}") for i in range(count)]
    started = time.perf_counter()
    result = enrollment.enroll(url, specs, enrollment.BundleOptions(bundles_dir=bundles))
    elapsed = time.perf_counter() - started
    assert len(result.enrolled) == count
    return elapsed


def time_row_at_a_time(url: str, count: int) -> float:
    db.upgrade(url)
    engine = db.get_engine(url)
    started = time.perf_counter()
    for i in range(count):
        key = enrollment.generate_keypair()
        with Session(engine) as session:
            device = Device(name=f"row-{i}", profile="glasses", public_key=key.public_openssh,
                            key_fingerprint=key.fingerprint, status="enrolled",
                            consent_training=True, consent_evaluation=True,
                            data_source="synthetic", device_index=i, created_at=utcnow())
            session.add(device)
            session.flush()
            session.add(AuditEntry(actor="bench", action="device.enroll", device_id=device.id,
                                   detail=json.dumps({"name": device.name})))
            session.commit()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--row-sample", type=int, default=500)
    parser.add_argument("--db", default=None, help="PostgreSQL base URL (default: SQLite)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fedmsr-bench-") as tmp:
        workdir = Path(tmp)
        keygen = time_keygen(args.count)
        bulk = time_bulk(fresh_url(args.db, workdir, "bulk"), args.count, workdir / "devices")
        rows = time_row_at_a_time(fresh_url(args.db, workdir, "rows"), args.row_sample)
    backend = "sqlite" if args.db is None else db.redacted(args.db)
    per_bulk, per_row = bulk / args.count, rows / args.row_sample
    print(f"backend: {backend}")
    print(f"keygen alone        {args.count:>6} devices: {keygen:7.2f} s "
          f"({1e3 * keygen / args.count:.3f} ms/device)")
    print(f"bulk enroll         {args.count:>6} devices: {bulk:7.2f} s "
          f"({1e3 * per_bulk:.3f} ms/device, bundles included)")
    print(f"row-at-a-time       {args.row_sample:>6} devices: {rows:7.2f} s "
          f"({1e3 * per_row:.3f} ms/device)")
    print(f"ratio bulk / keygen-alone:            {bulk / keygen:.2f}x")
    print(f"ratio row-at-a-time / bulk, per device: {per_row / per_bulk:.2f}x")
    if args.db is not None:
        print("note: the bench schemas fedmsr_bench_* are left in place; drop them when done")


if __name__ == "__main__":
    main()
