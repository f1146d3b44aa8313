"""The collector's unlinkable route: devices' sealed batches -> shuffler -> analyzer -> store.

In unlinkable mode (`fedmsr run --shuffler URL`) the collection of `fl_server.collection`
changes in three places, all here:

* the upload request carries the analyzer's and the shuffler's public keys and the time
  granularity, so each device seals its records twice (`fl_client.uploads`);
* the server relays each reply's outer blob to the shuffler under the Flower node id it
  came from (the shuffler refuses a second batch per sender), then asks for the release;
  the collection's name at the shuffler is the label of the request the device answered,
  a hash of every setting it was given (`privacy.shuffle.records.collection_label`), so
  devices given different settings are released, and checked for their crowd, apart;
* the analyzer (this server's store side, holding the analyzer key) opens the released
  inner records, drops dummies and stores the rest in `unlinkable_representations`.

Two crowd checks, both before anything is stored: the collector asks for no release
unless at least the run's `min_crowd` devices (a) sent a batch the shuffler accepted and
(b) reported real clips in their ledger charge, and the shuffler releases nothing below
its own min-crowd (or the largest a device was pinned to). (b) matters because the
charges are public: real rows from fewer devices than that would be attributable through
the ledger alone. After the analyzer opens the release, the real records must be exactly
as many as the accepted devices reported; otherwise the charges do not describe the rows
(a forged or replayed batch) and nothing is stored, the round's figures say why. A
shuffler configured with a smaller min-crowd than the run's is refused outright.

The server still learns, per device, what its ledger charge says (bits, real clip count,
capped), the reply's size (constant) and timing; docs/representations.md lists it all.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fl_server.config import ConfigError, RunConfig
from fl_server.registry.identity import BUNDLES_EXTRA
from fl_server.representations import NewUnlinkable
from fl_server.shuffler_service import ShufflerClient, ShufflerError, ShufflerInfo, analyzer_key
from privacy.payload import decode_payload
from privacy.shuffle.analyzer import ReleaseRefused, open_release
from privacy.shuffle.pin import MAX_PINNED_CROWD, PIN_FILE, ShufflerPin
from privacy.shuffle.records import inner_context, outer_size
from privacy.shuffle.sealed import public_bytes
from privacy.wire.upload import sealed_size

log = logging.getLogger("fedmsr.collection")
ANALYZER_KEY_FILE = "analyzer.pem"


def analyzer_key_path(cfg: RunConfig) -> Path:
    """The run's analyzer key: --analyzer-key, else <runs-dir>/analyzer.pem (shared by runs)."""
    return Path(cfg.analyzer_key) if cfg.analyzer_key else Path(cfg.runs_dir) / ANALYZER_KEY_FILE


def check_shuffler(cfg: RunConfig) -> ShufflerInfo:
    """The shuffler answers and requires at least the run's crowd (ConfigError otherwise)."""
    try:
        info = ShufflerClient(cfg.shuffler).info()
    except (ShufflerError, ValueError) as exc:
        raise ConfigError("shuffler", str(exc)) from None
    if info.min_crowd < cfg.min_crowd:
        raise ConfigError("shuffler", f"the shuffler at {cfg.shuffler} releases crowds of "
                          f"{info.min_crowd}, fewer than --min-crowd {cfg.min_crowd}")
    return info


def provision_simulated_devices(cfg: RunConfig) -> int:
    """Simulation only: pin the shuffler that answers now in every simulated device's
    enrollment bundle (`privacy.shuffle.pin`), with the run's time window and crowd as the
    least each device accepts; returns how many bundles were provisioned.

    In a simulation the operator is also every device's provisioner, so this stands in for
    the out-of-band step; in a deployment the operator provisions each device (node config
    ``shuffler-key``), never the server, and a device without a pinned key refuses every
    unlinkable request.
    """
    info = check_shuffler(cfg)
    bundles = str(cfg.extra.get(BUNDLES_EXTRA, ""))
    if not bundles:
        return 0
    pin = ShufflerPin(info.public_key, max(1, cfg.time_granularity_days),
                      min(MAX_PINNED_CROWD, cfg.min_crowd))
    written = 0
    for info_path in sorted(Path(bundles).glob("*/device.json")):
        staging = info_path.parent / f".{PIN_FILE}.tmp"
        staging.write_text(pin.to_json())
        staging.replace(info_path.parent / PIN_FILE)
        written += 1
    return written


def reply_size(clips: int, payload_bytes: int) -> int:
    """The only size a device's sealed reply may have: a function of the request alone."""
    return sealed_size(outer_size(clips, payload_bytes))


@dataclass(frozen=True)
class Routed:
    """What went through the shuffler: rows to store, senders refused, the figures."""

    rows: list[NewUnlinkable]
    refused: dict[int, str]  # node id -> why the shuffler refused its batch
    figures: dict[str, Any]


class UnlinkableRoute:
    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.client = ShufflerClient(cfg.shuffler)
        self._analyzer = analyzer_key(analyzer_key_path(cfg))

    def request_keys(self) -> tuple[bytes, bytes]:
        """(analyzer public key, shuffler public key) for this collection's requests. The
        shuffler is asked every collection: a restarted shuffler has a new key, and it must
        still require the run's crowd (ConfigError otherwise)."""
        return public_bytes(self._analyzer), check_shuffler(self.cfg).public_key

    def route(self, collection: int, server_round: int, version: str,
              blobs: Mapping[int, bytes], real_clips: Mapping[int, int],
              labels: Mapping[int, str]) -> Routed:
        """Hand every accepted blob to the shuffler, release, open, keep the real records.

        `blobs`: node id -> outer blob; `real_clips`: node id -> R from its ledger charge;
        `labels`: node id -> the collection label of the request it was sent (a hash of
        every setting it was given). Devices given different settings are different
        collections: each is released, and checked for its crowd, on its own.
        """
        groups: dict[str, dict[int, bytes]] = {}
        for node_id, blob in sorted(blobs.items()):
            groups.setdefault(labels[node_id], {})[node_id] = blob
        refused: dict[int, str] = {}
        figures: dict[str, Any] = {"min_crowd": self.cfg.min_crowd,
                                   "time_granularity_days": self.cfg.time_granularity_days,
                                   "collections": len(groups), "senders": 0, "stored": 0,
                                   "dummies": 0, "unopened": 0}
        rows: list[NewUnlinkable] = []
        reasons: list[str] = []
        for label, group in groups.items():
            reason = self._route_one(label, collection, server_round, version, group,
                                     real_clips, refused, rows, figures)
            if reason:
                log.warning("round %d: nothing stored for %s: %s", server_round, label[:15],
                            reason)
                reasons.append(reason)
        if reasons:
            figures["refused"] = "; ".join(reasons)
        return Routed(rows, refused, figures)

    def _route_one(self, label: str, collection: int, server_round: int, version: str,
                   blobs: Mapping[int, bytes], real_clips: Mapping[int, int],
                   refused: dict[int, str], rows: list[NewUnlinkable],
                   figures: dict[str, Any]) -> str | None:
        """One label's collection through the shuffler and the analyzer; rows and figures
        are added to; why nothing was stored (None: stored)."""
        for node_id, blob in blobs.items():
            try:
                self.client.submit(label, str(node_id), blob)
            except ShufflerError as exc:
                refused[node_id] = str(exc)
        accepted = [n for n in blobs if n not in refused]
        with_real = sum(1 for n in accepted if real_clips.get(n, 0) > 0)
        if with_real < self.cfg.min_crowd:  # before the release: nothing is opened
            return (f"{with_real} device(s) reported real clips, fewer than min-crowd "
                    f"{self.cfg.min_crowd}: the ledger would attribute the rows; nothing "
                    f"released or stored")
        try:
            released = self.client.release(label)
        except ShufflerError as exc:
            return str(exc)
        figures["senders"] += released.senders
        try:
            opened = open_release(self._analyzer, released.records,
                                  inner_context(self.cfg.run_id, collection, version))
        except ReleaseRefused as exc:
            return f"analyzer refused: {exc}"
        reported = sum(real_clips.get(n, 0) for n in accepted)
        if reported != len(opened.real):
            return (f"the devices reported {reported} real clip(s), the release opened "
                    f"{len(opened.real)} real record(s): the ledger charges do not account "
                    f"for the rows; nothing stored")
        real = [r for r in opened.real if _decodes(r.payload)]
        rows += [NewUnlinkable(run_id=self.cfg.run_id, collection_round=server_round,
                               pseudonym=r.pseudonym.hex(), window_day=r.day,
                               granularity_days=self.cfg.time_granularity_days,
                               payload=r.payload, encoder_version=version) for r in real]
        figures["stored"] += len(real)
        figures["dummies"] += opened.dummies
        figures["unopened"] += opened.unopened + len(opened.real) - len(real)
        return None


def _decodes(payload: bytes) -> bool:
    """A real record's payload is stored only if it is a whole payload-v1."""
    try:
        decode_payload(payload)
    except ValueError:
        return False
    return True
