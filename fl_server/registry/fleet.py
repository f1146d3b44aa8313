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

from fl_server.config import RunConfig
from fl_server.registry.db import RegistryError, redacted, registry_configured, resolve_url
from fl_server.registry.devices import bundle_dirs, eligible_indices
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
