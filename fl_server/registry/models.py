"""The registry's tables as SQLAlchemy 2 typed ORM models.

The Alembic revisions in `migrations/versions/` create exactly these tables; a test
compares the two (autogenerate finds no difference) on SQLite and PostgreSQL, so a model
change without a migration fails CI.

Room for the privacy-event ledger (budget issue): it will be a new table keyed by
`devices.id` and `rounds.id`, added by its own revision; nothing here has to change.
"""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

#: Deterministic constraint names: migrations can refer to them on every backend.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: Device profiles (the same names as the synthetic fleet's, `fl_client.synthetic.PROFILES`).
PROFILES: tuple[str, ...] = ("glasses", "bodycam", "home-cam")
DATA_SOURCES: tuple[str, ...] = ("synthetic", "footage")


class DeviceStatus(str, enum.Enum):
    """enrolled (keys issued) -> active (took part in a round) -> revoked (for ever)."""

    ENROLLED = "enrolled"
    ACTIVE = "active"
    REVOKED = "revoked"


RUN_STATUSES: tuple[str, ...] = ("running", "completed", "failed")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def as_utc(moment: dt.datetime) -> dt.datetime:
    """SQLite hands back naive datetimes; every timestamp we store is UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Device(Base):
    """One enrolled device. Only its public key is kept; the private key lives in its bundle."""

    __tablename__ = "devices"
    __table_args__ = (
        CheckConstraint(_in("profile", PROFILES), name="profile"),
        CheckConstraint(_in("status", tuple(s.value for s in DeviceStatus)), name="status"),
        CheckConstraint(_in("data_source", DATA_SOURCES), name="data_source"),
        CheckConstraint("epsilon_cap IS NULL OR epsilon_cap > 0", name="epsilon_cap"),
        CheckConstraint("delta_cap IS NULL OR (delta_cap > 0 AND delta_cap < 1)", name="delta_cap"),
        CheckConstraint("info_bits_cap IS NULL OR info_bits_cap > 0", name="info_bits_cap"),
        CheckConstraint("(status = 'revoked') = (revoked_at IS NOT NULL)", name="revoked_at"),
        Index(None, "data_source", "device_index"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    profile: Mapped[str] = mapped_column(String(16))
    #: OpenSSH public key ("ecdsa-sha2-nistp384 AAAA..."): the form Flower's SuperNode auth takes.
    public_key: Mapped[str] = mapped_column(Text, unique=True)
    #: SHA-256 of the key blob, as `ssh-keygen -l` prints it ("SHA256:..."), for logs and lookups.
    key_fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16), default=DeviceStatus.ENROLLED.value)
    consent_training: Mapped[bool] = mapped_column(Boolean, default=True)
    consent_evaluation: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    revoke_reason: Mapped[str | None] = mapped_column(Text)
    epsilon_cap: Mapped[float | None] = mapped_column(Float)
    delta_cap: Mapped[float | None] = mapped_column(Float)
    info_bits_cap: Mapped[float | None] = mapped_column(Float)
    #: Where the device's clips come from; for `synthetic`, `device_index` is its index in
    #: the synthetic fleet (Flower's `partition-id` / `--node-config device-index=N`).
    data_source: Mapped[str] = mapped_column(String(16), default="synthetic")
    device_index: Mapped[int | None] = mapped_column(Integer)
    #: The node id the operator's SuperLink gave the key (`fedmsr fleet sync`); a uint64,
    #: kept as text. Unregistered once revoked: Flower never accepts that key again.
    superlink_node_id: Mapped[str | None] = mapped_column(String(20))
    superlink_registered_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    superlink_unregistered_at: Mapped[dt.datetime | None] = mapped_column(
        DateTime(timezone=True))


class Run(Base):
    """One federated run (`runs/<run-id>/` on disk)."""

    __tablename__ = "runs"
    __table_args__ = (CheckConstraint(_in("status", RUN_STATUSES), name="status"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    planned_rounds: Mapped[int] = mapped_column(Integer)
    completed_rounds: Mapped[int] = mapped_column(Integer, default=0)
    seed: Mapped[int] = mapped_column(Integer)
    dp_sgd: Mapped[bool] = mapped_column(Boolean)
    #: The frozen run configuration (run.json), as JSON text.
    config_json: Mapped[str] = mapped_column(Text)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    reason: Mapped[str | None] = mapped_column(Text)

    rounds: Mapped[list[Round]] = relationship(back_populates="run", order_by="Round.number")


class Round(Base):
    """A finished (checkpointed) round of a run."""

    __tablename__ = "rounds"
    __table_args__ = (UniqueConstraint("run_id", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    finished_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    loss: Mapped[float] = mapped_column(Float)
    kl_bits: Mapped[float] = mapped_column(Float)
    utility_acc: Mapped[float] = mapped_column(Float)
    identity_acc: Mapped[float] = mapped_column(Float)
    sampled: Mapped[int] = mapped_column(Integer)
    responded: Mapped[int] = mapped_column(Integer)
    failed: Mapped[int] = mapped_column(Integer)
    wall_s: Mapped[float] = mapped_column(Float)

    run: Mapped[Run] = relationship(back_populates="rounds")
    participants: Mapped[list[Participation]] = relationship(back_populates="round")


class Participation(Base):
    """A device returned an update in a round (with the DP-SGD release it made, if any)."""

    __tablename__ = "round_participation"

    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"),
                                          primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"), primary_key=True, index=True)
    device_index: Mapped[int] = mapped_column(Integer)
    dp_sample_rate: Mapped[float | None] = mapped_column(Float)
    dp_noise_multiplier: Mapped[float | None] = mapped_column(Float)
    dp_steps: Mapped[int | None] = mapped_column(Integer)

    round: Mapped[Round] = relationship(back_populates="participants")


class AuditEntry(Base):
    """An operator action. Append-only: the migration installs triggers refusing UPDATE/DELETE."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    device_id: Mapped[int | None] = mapped_column(ForeignKey("devices.id"), index=True)
    run_id: Mapped[str | None] = mapped_column(String(64))
    #: JSON object with the action's parameters (reason, caps, counts ...).
    detail: Mapped[str] = mapped_column(Text, default="{}")
