"""Representation collection and temporal-accumulation leakage tracking.

Every `collect_every` rounds (off by default), once the round's new global model exists
and before its checkpoint, the federation loop hands the round to :class:`Collector`:

1. roll call (the signed check-in of an ordinary round);
2. for each admitted device that consents to evaluation and whose information ledger
   leaves room for a batch, a `query.upload` request carrying the global arrays, the
   encoder version, the count M (`collect_clips`), its cap and the server's record of its
   spend. The request is the same size and comes at the same round whatever the device
   filmed; the device answers with exactly M fixed-size records (`fl_client.uploads`);
3. one transaction: the information-ledger rows (append-only), the real records in the
   representation store, audit entries for devices that cross their alert level or that
   the server stops asking;
4. the fleet's leakage curves on the stored representations of this encoder version:
   PL(k) for identity, location and routine (profile fusion), identity from set
   statistics, cross-day linkage AUC (privacy.evaluation.leakage). The attacker fits on
   its own split — every device's held-out days, which no device trains on and none
   uploads, passed through the public encoder and the same sampling + quantisation
   channel — never on a network used in training. The curves go to the registry
   (`leakage_reports`), to `runs/<id>/leakage.json` and to the round's history record
   (`leakage`, `information_bits`: what the metrics observer exports); crossing the
   `leakage_alert` level is audit-logged, and which attacks crossed it, with the level,
   is in the report and the record (`leakage_crossed`).

A redone round (resume after a crash before the checkpoint) asks no device twice: the
ledger has one row per (device, run, round), and devices already charged are skipped.

**Unlinkable mode** (`--shuffler URL`, `fl_server.unlinkable_collection`): devices answer
with sealed batches; step 3 stores what the shuffler released and the analyzer opened, in
`unlinkable_representations`, with no device; step 4 is skipped (nothing can be grouped
by device) and the round's record says the store is unlinkable.

With a randomized release (`fedmsr run --release-epsilon`) each upload is also a DP
release: it is reserved on the registry's privacy ledger before the requests go out and
committed with the information rows (`fl_server.release_budget`), and the attacker's own
representations go through the same mechanism. The round's record then carries the run
devices' accumulated release epsilon, max and mean (`release_epsilon`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from sqlalchemy import select

from fl_server import information_ledger as ledger
from fl_server.checkin import checkin
from fl_server.config import ConfigError, RunConfig
from fl_server.evaluation import HeldOut
from fl_server.invariance import FittedDiscriminator, fit_on_rows
from fl_server.leakage_tracker import (
    Tracked,
    crossed,
    eval_observed,
    observed_synthetic,
    observed_uploads,
    synthetic_held_out,
    synthetic_labels,
    track_synthetic,
    track_uploads,
)
from fl_server.registry import audit
from fl_server.registry.db import resolve_url, session_scope
from fl_server.registry.devices import device_ids_for_indices
from fl_server.registry.identity import BUNDLES_EXTRA, CheckinGate
from fl_server.registry.models import AuditEntry, Device, LeakageReport
from fl_server.release_budget import ReleaseBudget, ReleaseTerms
from fl_server.representations import (
    NewRepresentation,
    NewUnlinkable,
    RepresentationQuery,
    RepresentationStore,
    UnlinkableStore,
    default_store,
)
from fl_server.round_plan import Plan
from fl_server.unlinkable_collection import Routed, UnlinkableRoute, reply_size
from privacy.atomic_write import write_text_atomic
from privacy.encoder import build_model, encode, load_numpy_state
from privacy.evaluation.leakage import Observed
from privacy.payload import decode_payload, encode_payload, payload_size
from privacy.vib import kl_bits
from privacy.wire.arrays import record_bytes, record_of
from privacy.wire.keys import ARRAYS_KEY, BATCH_KEY, CONFIG_KEY, UPLOAD, UPLOAD_KEY
from privacy.wire.records import config_bytes, config_record
from privacy.wire.round_record import LeakageCrossed
from privacy.wire.upload import (
    SealedBatch,
    UploadRequest,
    batch_size,
    decode_batch,
    decode_sealed,
    encoder_version,
)
from strategies.messaging import send_and_collect

log = logging.getLogger("fedmsr.collection")
PAYLOAD_DTYPE = "int8"
LEAKAGE_FILE = "leakage.json"
_Blob = bytes  # `_Received.bytes` (a count) shadows the type inside that class


@dataclass(frozen=True)
class Target:
    """An admitted device the collection may ask."""

    node_id: int
    index: int
    device_id: int
    name: str
    cap: float | None
    state: ledger.InfoState
    release: ReleaseTerms = ReleaseTerms()


@dataclass(frozen=True)
class Collected:
    """A collection's figures for the round's history record, and the traffic it caused;
    with identity-invariant training, the device discriminator fitted on what it stored."""

    figures: dict[str, Any]
    bytes_sent: int
    bytes_received: int
    discriminator: FittedDiscriminator | None = None


@dataclass(frozen=True)
class Attacker:
    """The attacker's own labelled representations (synthetic fleet: the run devices'
    held-out days; real footage: the operator's eval set, fit and test days), and the
    rate they show."""

    observed: Observed | None
    eval_set: tuple[Observed, Observed] | None
    mean_rate_bits: float


class Collector:
    """Asks devices for their representations every `collect_every` rounds (see module doc).

    `eval_set`: the server's own labelled clips on a run over real footage (None: the
    synthetic fleet's, which the tracker reads from the generator).
    """

    def __init__(self, cfg: RunConfig, url: str, store: RepresentationStore | None = None,
                 eval_set: HeldOut | None = None):
        self.cfg, self.url = cfg, url
        self.store = store or default_store()
        self.eval_set = eval_set
        self.unlinkable = UnlinkableRoute(cfg) if cfg.shuffler else None
        self.release = ReleaseBudget.for_config(cfg, url)

    @classmethod
    def for_config(cls, cfg: RunConfig, held_out: HeldOut | None = None) -> Collector | None:
        """A collector when the run collects; collection needs the registry's fleet."""
        if cfg.collect_every == 0:
            return None
        if cfg.device_indices is None:
            raise ConfigError("collect_every", "collection stores representations in the "
                              "registry: run `fedmsr db upgrade` and enroll the fleet first")
        return cls(cfg, resolve_url(), eval_set=held_out if cfg.eval_dataset else None)

    def due(self, server_round: int) -> bool:
        return self.cfg.collect_every > 0 and server_round % self.cfg.collect_every == 0

    # -- the round's collection -----------------------------------------------------------

    def collect(self, grid: Grid, plan: Plan, arrays: dict[str, np.ndarray],
                server_round: int) -> Collected:
        """Collect, store, charge and track; what happened, for the round's record."""
        started = time.perf_counter()
        version = encoder_version(plan.model, arrays)
        attacker = self._attacker(plan, arrays, server_round)
        expected = ledger.expected_batch_bits(attacker.mean_rate_bits, self.cfg.collect_clips)
        admitted = checkin(grid, plan, server_round, CheckinGate.for_config(self.cfg)).devices
        targets, skipped, stopped = self._targets(admitted, server_round, expected)
        keys = None  # first: a shuffler that is down means no release is reserved
        if self.unlinkable:
            try:
                keys = self.unlinkable.request_keys()
            except ConfigError as exc:  # the shuffler is down or too lax: ask no device
                log.warning("round %d: no unlinkable collection: %s", server_round, exc)
                skipped.update({t.index: f"shuffler: {exc.problem}" for t in targets})
                targets = []
        if self.release is not None:  # reserved before a single request leaves
            refused = self.release.reserve(server_round, [t.device_id for t in targets])
            skipped.update({t.index: refused[t.device_id] for t in targets
                            if t.device_id in refused})
            targets = [t for t in targets if t.device_id not in refused]
        global_record = record_of(arrays)
        requests = {t.node_id: self._upload_request(t, server_round, version, keys)
                    for t in targets}
        messages = [self._message(plan, global_record, t, server_round, requests[t.node_id])
                    for t in targets]
        replies = send_and_collect(grid, messages, plan.waits.reply_s) if messages else []
        reply_bytes = self._reply_bytes(plan)
        received = _Received.of(replies, targets, version, reply_bytes, self.cfg, server_round,
                                sealed=self.unlinkable is not None)
        routed = self._route(received, targets, server_round, version,
                             {n: r.collection_label for n, r in requests.items()})
        flagged = self._record(targets, received, stopped, server_round,
                               routed.rows if routed else [])
        totals = self._totals()
        figures: dict[str, Any] = {
            "collection": {
                "encoder_version": version, "clips_per_device": self.cfg.collect_clips,
                "batch_bytes": reply_bytes,
                "requested": sorted(t.index for t in targets),
                "uploaded": {str(i): n for i, n in sorted(received.clips.items())},
                "bits": {str(i): b for i, b in sorted(received.bits.items())},
                "skipped": {str(i): r for i, r in sorted(skipped.items())},
                "rejected": {str(i): r for i, r in sorted(received.rejected.items())},
                "expected_batch_bits": expected,
                "release_noise_multiplier": (self.release.release.noise_multiplier
                                             if self.release else 0.0),
            },
            "information_bits": {str(i): b for i, b in sorted(totals.items())},
            "information_flagged": flagged,
            **(self._unlinkable(routed, version, server_round) if routed else
               self._track(plan, version, attacker, server_round)),
        }
        if self.release is not None:  # after the commit: this collection's releases count
            figures["release_epsilon"] = self.release.fleet(
                self._run_devices().values()).to_json()
        fitted = None
        if self.cfg.invariance_weight > 0:
            outcome = self.discriminator(version, server_round)
            fitted = outcome if isinstance(outcome, FittedDiscriminator) else None
            figures["invariance"] = fitted.figures() if fitted else {"skipped": outcome}
        figures["collect_s"] = time.perf_counter() - started
        return Collected(figures, record_bytes(global_record) * len(messages), received.bytes,
                         fitted)

    def discriminator(self, version: str, server_round: int) -> FittedDiscriminator | str:
        """The device discriminator fitted on this run's stored representations of encoder
        `version` (fl_server.invariance), seeded by the collection round: the same after a
        resume; a reason string when there is too little to fit on."""
        with session_scope(self.url) as session:
            rows = self.store.select(session, RepresentationQuery(version, run_id=self.cfg.run_id))
        return fit_on_rows(rows, version, self.cfg.seed + server_round)

    def _reply_bytes(self, plan: Plan) -> int:
        """The one size every device's reply has (a function of the request alone)."""
        clips, latent = self.cfg.collect_clips, plan.model.latent_dim
        if self.unlinkable:
            return reply_size(clips, payload_size(latent, PAYLOAD_DTYPE))
        return batch_size(clips, latent, PAYLOAD_DTYPE)

    def _route(self, received: _Received, targets: list[Target], server_round: int,
               version: str, labels: Mapping[int, str]) -> Routed | None:
        """Unlinkable mode: the sealed batches through the shuffler and the analyzer."""
        if self.unlinkable is None:
            return None
        by_node = {t.node_id: t for t in targets}
        real = {n: received.clips[by_node[n].index] for n in received.sealed}
        routed = self.unlinkable.route(server_round // self.cfg.collect_every, server_round,
                                       version, received.sealed, real, labels)
        for node_id, reason in routed.refused.items():
            received.rejected[by_node[node_id].index] = reason
        return routed

    def _unlinkable(self, routed: Routed, version: str, server_round: int) -> dict[str, Any]:
        """Unlinkable mode: what the route did, and no per-device leakage curve, since the
        store has no device to accumulate by (what a link-then-accumulate attacker gets is
        the evaluation's to measure). runs/<id>/leakage.json records that too."""
        skipped = ("unlinkable store: representations carry no device, so no device-grouped "
                   "accumulation curve")
        _append_run_file(self.cfg.run_dir() / LEAKAGE_FILE, {
            "round": server_round, "encoder_version": version, "unlinkable": True,
            "skipped": skipped, "stored": routed.figures["stored"]})
        return {"unlinkable": routed.figures, "leakage": None, "leakage_skipped": skipped}

    def _attacker(self, plan: Plan, arrays: dict[str, np.ndarray], server_round: int
                  ) -> Attacker:
        """The attacker's clips through the current encoder and the upload channel (a
        sample of q(z|x), quantised), with the attacker's own noise: every run device's
        held-out days (synthetic fleet), or the operator's eval set (real footage)."""
        model = build_model(plan.model)
        load_numpy_state(model, arrays)
        rng = np.random.default_rng([self.cfg.seed, server_round, 0xA77])
        mechanism = None if self.release is None else self.release.release

        def release(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            mu, logvar = encode(model, x)
            if mechanism is not None:  # the devices' channel: clipped mean + Gaussian noise
                z = mechanism.apply(mu, rng.standard_normal(mu.shape))
                bits = np.full(len(mu), mechanism.information_bits(mu.shape[1]))
            else:
                z = mu + np.exp(0.5 * logvar) * rng.standard_normal(mu.shape).astype(np.float32)
                bits = kl_bits(mu, logvar)
            quantised = [decode_payload(encode_payload(row, PAYLOAD_DTYPE)) for row in z]
            return np.stack(quantised).astype(np.float32), bits

        if self.eval_set is None:
            batch = synthetic_held_out(plan.fleet, tuple(self.cfg.device_indices or ()),
                                       plan.train_days)
            released, bits = release(batch.x)
            return Attacker(Observed(released, synthetic_labels(batch)), None,
                            float(np.mean(bits)))
        (z_fit, bits_fit), (z_test, bits_test) = (release(self.eval_set.fit.x),
                                                  release(self.eval_set.test.x))
        return Attacker(None, eval_observed(self.eval_set, z_fit, z_test),
                        float(np.mean(np.concatenate([bits_fit, bits_test]))))

    def _targets(self, admitted: Mapping[int, int], server_round: int, expected: int
                 ) -> tuple[list[Target], dict[int, str], dict[int, str]]:
        """Admitted devices to ask; why the others are not asked (index -> reason); and,
        among those, the devices stopped by their information cap (device id -> reason)."""
        ids = device_ids_for_indices(self.url, admitted.values()) if admitted else {}
        skipped: dict[int, str] = {}
        stopped: dict[int, str] = {}
        targets: list[Target] = []
        with session_scope(self.url) as session:
            devices = {d.id: d for d in session.scalars(select(Device).where(
                Device.id.in_(list(ids.values()))))}
            done = ledger.collected(session, self.cfg.run_id, server_round)
            spends = ledger.states(session, ids.values())
            released = (set() if self.release is None else
                        self.release.released_before(session, server_round, ids.values()))
        for node_id, index in sorted(admitted.items(), key=lambda item: item[1]):
            device = devices[ids[index]]
            cap = ledger.effective_cap(device.info_bits_cap, self.cfg.info_bits_cap)
            stop = ledger.stop_reason(spends[device.id], cap, expected)
            reason = ("no consent to evaluation" if not device.consent_evaluation else
                      "already collected in this round" if device.id in done else
                      "released in this round before a restart (still charged)"
                      if device.id in released else stop)
            if reason:
                skipped[index] = reason
                if reason == stop:
                    stopped[device.id] = reason
            else:
                targets.append(Target(node_id, index, device.id, device.name, cap,
                                      spends[device.id], ReleaseTerms() if self.release is None
                                      else self.release.terms(device)))
        return targets, skipped, stopped

    def _upload_request(self, target: Target, server_round: int, version: str,
                        keys: tuple[bytes, bytes] | None) -> UploadRequest:
        unlinkable: dict[str, Any] = {} if keys is None else {
            "analyzer_key": keys[0], "shuffler_key": keys[1],
            "time_granularity_days": self.cfg.time_granularity_days}
        request = UploadRequest(
            run_id=self.cfg.run_id, server_round=server_round,
            collection=server_round // self.cfg.collect_every,
            clips=self.cfg.collect_clips, dtype=PAYLOAD_DTYPE, encoder_version=version,
            info_bits_cap=target.cap or 0.0, server_bits=target.state.bits,
            bundles_dir=str(self.cfg.extra.get(BUNDLES_EXTRA, "")),
            release_clip=target.release.clip_norm,
            release_noise=target.release.noise_multiplier,
            release_epsilon_cap=target.release.epsilon_cap, **unlinkable)
        return request

    def _message(self, plan: Plan, arrays: Any, target: Target, server_round: int,
                 request: UploadRequest) -> Message:
        content = RecordDict({ARRAYS_KEY: arrays, CONFIG_KEY: plan.instructions(server_round),
                              UPLOAD_KEY: request.to_record()})
        return Message(content=content, message_type=UPLOAD, dst_node_id=target.node_id)

    def _record(self, targets: list[Target], received: _Received, stopped: dict[int, str],
                server_round: int, unlinkable: list[NewUnlinkable]) -> list[int]:
        """One transaction: ledger rows, stored representations, audit entries.

        Returns the indices of devices that crossed their alert level in this collection.
        """
        flagged: list[int] = []
        with session_scope(self.url) as session:
            ledger.append(session, received.charges)
            if self.release is not None:  # with the information rows, in one transaction
                self.release.commit(session, server_round,
                                    [c.device_id for c in received.charges])
            self.store.add(session, received.representations)
            UnlinkableStore().add(session, unlinkable)
            for charge in received.charges:
                target = next(t for t in targets if t.device_id == charge.device_id)
                level = ledger.alert_level(target.cap, self.cfg.info_bits_alert)
                after = target.state.bits + charge.bits
                if level is not None and target.state.bits < level <= after:
                    flagged.append(target.index)
                    self._audit(session, "information.threshold", target.device_id,
                                {"bits": after, "alert_bits": level, "cap_bits": target.cap,
                                 "round": server_round})
            for device_id, reason in stopped.items():
                self._audit_stop_once(session, device_id, reason, server_round)
        return sorted(flagged)

    def _audit(self, session: Any, action: str, device_id: int | None,
               detail: dict[str, Any]) -> None:
        audit.record(session, action, detail, device_id=device_id, run_id=self.cfg.run_id)

    def _audit_stop_once(self, session: Any, device_id: int, reason: str,
                         server_round: int) -> None:
        """The server stops asking a device: logged once per run and device."""
        seen = session.scalars(select(AuditEntry.id).where(
            AuditEntry.action == "information.stop", AuditEntry.device_id == device_id,
            AuditEntry.run_id == self.cfg.run_id)).first()
        if seen is None:
            self._audit(session, "information.stop", device_id,
                        {"reason": reason, "round": server_round})

    def _run_devices(self) -> dict[int, int]:
        """The run's devices: index -> registry id."""
        indices = list(self.cfg.device_indices or ())
        return device_ids_for_indices(self.url, indices) if indices else {}

    def _totals(self) -> dict[int, int]:
        """Information bits of every run device (for the fleet distribution metric)."""
        ids = self._run_devices()
        with session_scope(self.url) as session:
            spends = ledger.states(session, ids.values())
        return {index: spends[device_id].bits for index, device_id in ids.items()}

    # -- temporal accumulation ------------------------------------------------------------

    def _track(self, plan: Plan, version: str, attacker: Attacker, server_round: int
               ) -> dict[str, Any]:
        """The fleet's leakage curves on this version's stored representations; recorded."""
        with session_scope(self.url) as session:
            rows = self.store.select(session, RepresentationQuery(version, run_id=self.cfg.run_id))
            index_of = dict(session.execute(select(Device.id, Device.device_index)).all())
        seed = self.cfg.seed + server_round
        if attacker.observed is not None:
            tracked = track_synthetic(attacker.observed,
                                      observed_synthetic(rows, index_of, plan.fleet), seed)
        else:
            tracked = track_uploads(observed_uploads(rows, index_of), attacker.eval_set, seed)
        extra: dict[str, Any] = ({} if tracked.eval_attributes is None else
                                 {"leakage_eval_attributes": tracked.eval_attributes})
        report = tracked.report
        if report is None:
            log.info("round %d: no leakage curve (%s)", server_round, tracked.skipped)
            return {"leakage": None, "leakage_skipped": tracked.skipped, **extra}
        if tracked.eval_attributes is not None:
            report = {**report, "eval_attributes": tracked.eval_attributes}
        max_gain = max((max(g.values()) for g in report["gain"].values() if g), default=0.0)
        flagged = max_gain >= self.cfg.leakage_alert
        above = LeakageCrossed(self.cfg.leakage_alert,
                               crossed(report["gain"], self.cfg.leakage_alert)).to_json()
        report = {**report, "crossed": above}
        self._save_report(server_round, version, tracked, report, max_gain, flagged)
        curves = {name: {str(k): v for k, v in curve.items()}
                  for name, curve in report["curves"].items() if 1 in curve}
        return {"leakage": curves, "leakage_gain": max_gain, "leakage_flagged": flagged,
                "leakage_crossed": above, "leakage_chance": report["device_chance"], **extra}

    def _save_report(self, server_round: int, version: str, tracked: Tracked,
                     report: dict[str, Any], max_gain: float, flagged: bool) -> None:
        text = json.dumps(report, sort_keys=True, default=float)
        devices, clips = tracked.devices, tracked.clips
        with session_scope(self.url) as session:
            previous = session.scalars(select(LeakageReport).where(
                LeakageReport.run_id == self.cfg.run_id,
                LeakageReport.collection_round < server_round)
                .order_by(LeakageReport.collection_round.desc())).first()
            if session.scalars(select(LeakageReport.id).where(
                    LeakageReport.run_id == self.cfg.run_id,
                    LeakageReport.collection_round == server_round)).first() is None:
                session.add(LeakageReport(
                    run_id=self.cfg.run_id, collection_round=server_round,
                    encoder_version=version, devices=devices, clips=clips,
                    max_gain=max_gain, flagged=flagged, report=text))
            if flagged and (previous is None or not previous.flagged):
                self._audit(session, "leakage.threshold", None,
                            {"round": server_round, "max_gain": max_gain,
                             "alert": self.cfg.leakage_alert, "encoder_version": version})
        _append_run_file(self.cfg.run_dir() / LEAKAGE_FILE, {
            "round": server_round, "encoder_version": version, "devices": devices,
            "clips": clips, "max_gain": max_gain, "flagged": flagged,
            "report": json.loads(text)})


@dataclass
class _Received:
    """What the replies brought: ledger charges, representations to store, rejections."""

    charges: list[ledger.Charge]
    representations: list[NewRepresentation]
    clips: dict[int, int]
    bits: dict[int, int]
    rejected: dict[int, str]
    bytes: int
    sealed: dict[int, _Blob]  # unlinkable mode: node id -> outer blob, for the shuffler

    @classmethod
    def of(cls, replies: list[Message], targets: list[Target], version: str, expected: int,
           cfg: RunConfig, server_round: int, sealed: bool = False) -> _Received:
        """`expected`: the reply size asked for; `sealed`: unlinkable mode (only SEALED
        replies are accepted: a plain batch would store linkable rows)."""
        by_node = {t.node_id: t for t in targets}
        out = cls([], [], {}, {}, {}, 0, {})
        answered = set()
        for reply in replies:
            target = by_node.get(reply.metadata.src_node_id)
            if target is None:
                continue
            answered.add(target.index)
            if reply.has_error():
                out.rejected[target.index] = f"device error: {(reply.error.reason or '')[:200]}"
                continue
            try:
                blob = config_bytes(config_record(reply.content, BATCH_KEY), BATCH_KEY)
                out.bytes += len(blob)
                if sealed:
                    sealed_batch = decode_sealed(blob)
                    _check_sealed(sealed_batch, len(blob), expected, cfg.collect_clips, version)
                else:
                    batch = decode_batch(blob)
                    _check(batch, len(blob), expected, cfg.collect_clips, version)
            except (KeyError, TypeError, ValueError) as exc:
                out.rejected[target.index] = f"malformed batch: {exc}"
                continue
            if sealed:
                out._accept_sealed(target, sealed_batch, version, cfg, server_round)
            else:
                out._accept(target, batch, version, cfg, server_round)
        for target in targets:
            if target.index not in answered:
                out.rejected[target.index] = "no reply in time"
        return out

    def _charge(self, target: Target, clips: int, bits: int, before: int, capped: bool,
                version: str, cfg: RunConfig, server_round: int) -> None:
        self.clips[target.index], self.bits[target.index] = clips, bits
        self.charges.append(ledger.Charge(
            device_id=target.device_id, run_id=cfg.run_id, collection_round=server_round,
            encoder_version=version, requested=cfg.collect_clips, clips=clips,
            bits=bits, device_bits_before=before, capped=capped, cap_bits=target.cap))

    def _accept_sealed(self, target: Target, batch: SealedBatch, version: str, cfg: RunConfig,
                       server_round: int) -> None:
        """The ledger charge, in the clear; the records, sealed, wait for the shuffler."""
        self._charge(target, batch.clips, batch.bits, batch.device_bits_before, batch.capped,
                     version, cfg, server_round)
        self.sealed[target.node_id] = batch.outer

    def _accept(self, target: Target, batch: Any, version: str, cfg: RunConfig,
                server_round: int) -> None:
        real = batch.real
        self._charge(target, len(real), batch.bits, batch.device_bits_before, batch.capped,
                     version, cfg, server_round)
        self.representations += [NewRepresentation(
            device_id=target.device_id, run_id=cfg.run_id, collection_round=server_round,
            clip_id=r.clip_id, captured_day=r.day, captured_hour=r.hour, payload=r.payload,
            encoder_version=version) for r in real]


def _check_sealed(batch: SealedBatch, size: int, expected_size: int, clips: int,
                  version: str) -> None:
    """A sealed batch is relayed only if it is exactly what was asked for."""
    if size != expected_size or batch.records != clips:
        raise ValueError(f"{batch.records} sealed records in {size} bytes, asked for {clips} "
                         f"({expected_size} bytes)")
    if batch.encoder_version != version:
        raise ValueError(f"made with encoder {batch.encoder_version[:12]}, asked for "
                         f"{version[:12]}")
    if batch.device_bits_before >= 2 ** 63:
        raise ValueError("a ledger total out of range")


def _check(batch: Any, size: int, expected_size: int, clips: int, version: str) -> None:
    """A batch is stored only if it is exactly what was asked for."""
    if size != expected_size or len(batch.records) != clips:
        raise ValueError(f"{len(batch.records)} records in {size} bytes, asked for {clips} "
                         f"({expected_size} bytes)")
    if batch.encoder_version != version:
        raise ValueError(f"made with encoder {batch.encoder_version[:12]}, asked for "
                         f"{version[:12]}")
    if any(not r.clip_id for r in batch.real) or len({r.clip_id for r in batch.real}) != len(
            batch.real):
        raise ValueError("real records need distinct, non-empty clip ids")
    if any(r.day >= 2 ** 31 for r in batch.real) or batch.device_bits_before >= 2 ** 63:
        raise ValueError("a capture day or a ledger total out of range")


def _append_run_file(path: Path, entry: dict[str, Any]) -> None:
    """runs/<id>/leakage.json: one entry per collection (a redone round replaces its own)."""
    try:
        entries = json.loads(path.read_text()) if path.exists() else []
    except ValueError:
        entries = []
    entries = [e for e in entries if e.get("round") != entry["round"]] + [entry]
    write_text_atomic(path, json.dumps(entries, indent=1, default=float) + "\n")
