"""The registry's tables as SQLAlchemy 2 typed ORM models.

The Alembic revisions in `migrations/versions/` create exactly these tables; a test
compares the two (autogenerate finds no difference) on SQLite and PostgreSQL, so a model
change without a migration fails CI.

The privacy-event ledger (`PrivacyEvent`, `DeviceBudget`) is added by revision
0002_privacy_ledger; `fl_server.privacy_ledger` is the only code that writes it.
"""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
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

#: Device profiles (the same names as the synthetic fleet's, `privacy.synthetic.PROFILES`).
PROFILES: tuple[str, ...] = ("glasses", "bodycam", "home-cam")
DATA_SOURCES: tuple[str, ...] = ("synthetic", "footage")


class DeviceStatus(str, enum.Enum):
    """enrolled (keys issued) -> active (took part in a round) -> revoked (for ever)."""

    ENROLLED = "enrolled"
    ACTIVE = "active"
    REVOKED = "revoked"


RUN_STATUSES: tuple[str, ...] = ("running", "completed", "failed", "budget-exhausted")


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
        # Finite: an infinite cap would fail every reservation (revision 0004).
        CheckConstraint("epsilon_cap IS NULL OR (epsilon_cap > 0 AND "
                        "epsilon_cap <= 1.7976931348623157e308)", name="epsilon_cap"),
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
    #: The directory (absolute) its enrollment bundle was written under; a registry-backed
    #: simulation signs with the bundles found there (revision 0005_bundles).
    bundle_dir: Mapped[str | None] = mapped_column(Text)
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


#: Kinds of DP release (the values of `privacy.accounting.events.EventKind`).
PRIVACY_EVENT_KINDS: tuple[str, ...] = ("local-dp-sgd", "central-dp-fedavg",
                                        "randomized-release")
PRIVACY_EVENT_STATUSES: tuple[str, ...] = ("reserved", "committed")


class PrivacyEvent(Base):
    """One DP release charged to one device: steps x Poisson(q)-subsampled Gaussian(sigma).

    Append-only (the migration's triggers refuse DELETE and every UPDATE but
    reserved -> committed): a reserved release counts as spent for ever, because the device
    may have trained and sent even if the server crashed before aggregating. One row per
    (device, run, round, kind), so a resumed round never charges twice. `run_id` is not a
    foreign key: the ledger outlives any run row, and a release is reserved before the
    round it belongs to is recorded.
    """

    __tablename__ = "privacy_events"
    __table_args__ = (
        UniqueConstraint("device_id", "run_id", "round_number", "kind"),
        Index(None, "run_id", "round_number"),
        CheckConstraint(_in("kind", PRIVACY_EVENT_KINDS), name="kind"),
        CheckConstraint(_in("status", PRIVACY_EVENT_STATUSES), name="status"),
        CheckConstraint("sample_rate > 0 AND sample_rate <= 1", name="sample_rate"),
        CheckConstraint("noise_multiplier > 0", name="noise_multiplier"),
        CheckConstraint("steps >= 1", name="steps"),
        CheckConstraint("round_number >= 1", name="round_number"),
        CheckConstraint("(status = 'committed') = (committed_at IS NOT NULL)",
                        name="committed_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"))
    run_id: Mapped[str] = mapped_column(String(64))
    round_number: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(32))
    sample_rate: Mapped[float] = mapped_column(Float)
    noise_multiplier: Mapped[float] = mapped_column(Float)
    steps: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="reserved")
    reserved_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    committed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class DeviceBudget(Base):
    """A device's whole DP history as one RDP vector (the enforcement hot path).

    `rdp` is float64 little-endian over `privacy.accounting.rdp.ORDERS` (`orders_sha256`
    names the grid it was computed on); it is the sum of the step RDP of every
    `privacy_events` row of the device and is updated in the same transaction that inserts
    one. `events` counts those rows; the migration's triggers refuse DELETE and any UPDATE
    that lowers it, so a device's spend never decreases.
    """

    __tablename__ = "device_budgets"
    __table_args__ = (CheckConstraint("events >= 0", name="events"),)

    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    rdp: Mapped[bytes] = mapped_column(LargeBinary)
    orders_sha256: Mapped[str] = mapped_column(String(64))
    events: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Representation(Base):
    """One uploaded clip representation (revision 0003_representations).

    `payload` is the device's payload-v1 (`privacy.payload`: the quantised z); nothing else
    about the clip is stored but its id and capture time. `encoder_version` names the
    exact global model that produced it (`fl_client.uploads.encoder_version`): readers go
    through `fl_server.representations`, which never hands out two versions at once.
    Deleted only by `fedmsr fleet erase` (consent withdrawn).
    """

    __tablename__ = "representations"
    __table_args__ = (
        UniqueConstraint("device_id", "run_id", "collection_round", "clip_id"),
        CheckConstraint("collection_round >= 1", name="collection_round"),
        CheckConstraint("captured_day >= 0", name="captured_day"),
        CheckConstraint("captured_hour IS NULL OR (captured_hour >= 0 AND captured_hour <= 23)",
                        name="captured_hour"),
        CheckConstraint("payload_version >= 1", name="payload_version"),
        Index(None, "encoder_version", "device_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"))
    run_id: Mapped[str] = mapped_column(String(64))
    collection_round: Mapped[int] = mapped_column(Integer)
    clip_id: Mapped[str] = mapped_column(String(64))
    captured_day: Mapped[int] = mapped_column(Integer)
    captured_hour: Mapped[int | None] = mapped_column(Integer, nullable=True)  # None: unknown
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    payload_version: Mapped[int] = mapped_column(Integer)
    encoder_version: Mapped[str] = mapped_column(String(64))
    stored_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class UnlinkableRepresentation(Base):
    """One representation collected through the shuffler (revision 0008_unlinkable).

    Deliberately no device: the row keeps only what the analyzer opened from a shuffled
    inner record (`privacy.shuffle.records`): the payload, a random pseudonym in place of
    the clip id, and the first day of the capture window (NULL: the run dropped capture
    time; `granularity_days` says how wide the window is). No foreign key, no hour, no
    order that follows the senders: the store cannot be grouped by device.
    """

    __tablename__ = "unlinkable_representations"
    __table_args__ = (
        UniqueConstraint("run_id", "collection_round", "pseudonym"),
        CheckConstraint("collection_round >= 1", name="collection_round"),
        CheckConstraint("window_day IS NULL OR window_day >= 0", name="window_day"),
        CheckConstraint("granularity_days >= 0", name="granularity_days"),
        CheckConstraint("payload_version >= 1", name="payload_version"),
        Index(None, "encoder_version", "run_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(64))
    collection_round: Mapped[int] = mapped_column(Integer)
    pseudonym: Mapped[str] = mapped_column(String(32))  # 16 random bytes, hex
    window_day: Mapped[int | None] = mapped_column(Integer, nullable=True)
    granularity_days: Mapped[int] = mapped_column(Integer)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    payload_version: Mapped[int] = mapped_column(Integer)
    encoder_version: Mapped[str] = mapped_column(String(64))
    stored_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class InformationEntry(Base):
    """One collection's charge to a device's information ledger (bits = sum of KL rates).

    Append-only (the migration's triggers refuse UPDATE and DELETE), one row per
    (device, run, collection round) so a redone round never charges twice; an erase
    leaves it: the ledger is accounting, not data. `capped`: the device's own cap stopped
    it from sending every clip it had (`cap_bits`: the cap in force then).
    """

    __tablename__ = "information_ledger"
    __table_args__ = (
        UniqueConstraint("device_id", "run_id", "collection_round"),
        CheckConstraint("collection_round >= 1", name="collection_round"),
        CheckConstraint("requested >= 1", name="requested"),
        CheckConstraint("clips >= 0 AND clips <= requested", name="clips"),
        CheckConstraint("bits >= 0", name="bits"),
        CheckConstraint("device_bits_before >= 0", name="device_bits_before"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"), index=True)
    run_id: Mapped[str] = mapped_column(String(64))
    collection_round: Mapped[int] = mapped_column(Integer)
    encoder_version: Mapped[str] = mapped_column(String(64))
    requested: Mapped[int] = mapped_column(Integer)
    clips: Mapped[int] = mapped_column(Integer)
    bits: Mapped[int] = mapped_column(BigInteger)
    #: The device's own total before this batch, as it reported it (audits disagreements).
    device_bits_before: Mapped[int] = mapped_column(BigInteger)
    capped: Mapped[bool] = mapped_column(Boolean)
    cap_bits: Mapped[float | None] = mapped_column(Float)
    recorded_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class LeakageReport(Base):
    """The fleet's leakage curves after one collection (PL(k) per attack, gains, chance)."""

    __tablename__ = "leakage_reports"
    __table_args__ = (UniqueConstraint("run_id", "collection_round"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(64))
    collection_round: Mapped[int] = mapped_column(Integer)
    encoder_version: Mapped[str] = mapped_column(String(64))
    devices: Mapped[int] = mapped_column(Integer)
    clips: Mapped[int] = mapped_column(Integer)
    #: max over attacks of PL(k_max) - PL(1); what the threshold is compared with.
    max_gain: Mapped[float] = mapped_column(Float)
    flagged: Mapped[bool] = mapped_column(Boolean)
    #: JSON: curves, gains, single-clip results, chance (privacy.evaluation.leakage).
    report: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
