"""Which devices a run may use: the registry's answer, frozen into the run's configuration.

`fedmsr run` asks the registry for its eligible synthetic devices (enrolled or active, not
revoked, consenting to training, data index below `--devices`) and records their indices
in `RunConfig.device_indices`; the check-in then leaves every other node out. Without a
registry (no `--db`, no `FEDMSR_DB`, no `fedmsr.db` here) a run uses the whole synthetic
fleet, as before, and says so.

A resumed run asks again and keeps only devices that are still eligible: a device revoked
while the run was stopped takes no part in the rounds that remain.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from fl_server.config import RunConfig
from fl_server.privacy_ledger import fleet_rdp_epsilons
from fl_server.registry.db import (
    RegistryError,
    redacted,
    registry_configured,
    resolve_url,
    session_scope,
)
from fl_server.registry.devices import bundle_dirs, devices_for_indices, eligible_indices
from fl_server.registry.models import DeviceStatus
from fl_server.registry.identity import BUNDLES_EXTRA, bundles_dir_for_run


def fleet_for_new_run(cfg: RunConfig) -> RunConfig:
    """`cfg` with the registry's eligible devices, or unchanged when no registry is in use."""
    if not registry_configured():
        return cfg
    url = resolve_url()
    indices = eligible_indices(url, cfg.devices)
    if not indices:
        raise RegistryError("--devices", f"the registry {redacted(url)} has no enrolled, "
                            f"consenting synthetic device with index below {cfg.devices}; "
                            "enroll some with `fedmsr fleet enroll --count N --prefix P`")
    extra = {**cfg.extra, BUNDLES_EXTRA: enrolled_bundles_dir(url, indices)}
    return dataclasses.replace(cfg, device_indices=indices, extra=extra).validate()


def enrolled_bundles_dir(url: str, indices: list[int]) -> str:
    """Where the simulated devices' keys are: the directory the registry recorded when it
    enrolled them (`fedmsr fleet enroll --bundles-dir`), else `./devices` for devices
    enrolled before that was recorded. The run's devices must share one directory."""
    recorded = {where: found for where, found in bundle_dirs(url, indices).items() if where}
    if len(recorded) > 1:
        listing = "; ".join(f"{where} (indices {', '.join(map(str, found[:5]))}"
                            f"{', ...' if len(found) > 5 else ''})"
                            for where, found in sorted(recorded.items()))
        raise RegistryError("--devices", "the run's devices were enrolled into several bundle "
                            f"directories: {listing}; a simulation signs with one, so pass "
                            "--devices to keep only one enrollment's devices")
    return next(iter(recorded)) if recorded else bundles_dir_for_run()


def fleet_for_resume(cfg: RunConfig) -> tuple[RunConfig, list[int]]:
    """The frozen device list narrowed to devices still eligible; and those dropped."""
    if cfg.device_indices is None:
        return cfg, []
    url = resolve_url()
    still = set(eligible_indices(url, cfg.devices))
    kept = [i for i in cfg.device_indices if i in still]
    dropped = [i for i in cfg.device_indices if i not in still]
    if not kept:
        raise RegistryError("--resume", f"none of the run's devices is still eligible in the "
                            f"registry {redacted(url)} (revoked or withdrawn consent)")
    return dataclasses.replace(cfg, device_indices=kept).validate(), dropped


@dataclass(frozen=True)
class LeftOut:
    """Synthetic indices below `--devices` that take no part in the run, and why."""

    reason: str
    indices: tuple[int, ...]
    #: The registry names of the devices (empty where none is enrolled).
    names: tuple[str, ...] = ()


def left_out(cfg: RunConfig) -> list[LeftOut]:
    """Why each index of the synthetic fleet (`--devices`) is not among the run's devices
    (not enrolled, revoked, no consent to training), and which of the run's devices are
    already at their DP cap (they check in but are never sampled). Empty without a registry.

    Said once, in the run's header: in simulation every index is a virtual SuperNode, and
    the check-in refuses the left-out ones every round without logging each time.
    """
    if cfg.device_indices is None:
        return []
    url = resolve_url()
    taking_part = set(cfg.device_indices)
    groups: dict[str, list[tuple[int, str]]] = {}
    with session_scope(url) as session:
        holders = devices_for_indices(session, range(cfg.devices))
        for index in range(cfg.devices):
            device = holders.get(index)
            if index in taking_part:
                continue
            if device is None:
                reason, name = "not enrolled", ""
            elif device.status == DeviceStatus.REVOKED.value:
                reason, name = "revoked", device.name
            elif not device.consent_training:
                reason, name = "no consent to training", device.name
            else:
                reason, name = "not eligible", device.name
            groups.setdefault(reason, []).append((index, name))
        caps = {d.id: (d.epsilon_cap if d.epsilon_cap is not None else cfg.epsilon_cap, i, d.name)
                for i, d in holders.items() if i in taking_part}
    if cfg.dp_mode != "none" and caps:
        ids, spent, _ = fleet_rdp_epsilons(url, cfg.delta)
        for device_id, eps in zip(ids.tolist(), spent.tolist(), strict=True):
            cap, index, name = caps.get(device_id, (None, -1, ""))
            if cap is not None and eps >= cap:
                groups.setdefault("at their DP cap", []).append((index, name))
    return [LeftOut(reason, tuple(i for i, _ in found), tuple(n for _, n in found if n))
            for reason, found in groups.items()]
