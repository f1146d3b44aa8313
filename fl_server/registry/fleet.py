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
from fl_server.registry.devices import eligible_indices
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
    extra = {**cfg.extra, BUNDLES_EXTRA: bundles_dir_for_run()}  # simulated enrollment's keys
    return dataclasses.replace(cfg, device_indices=indices, extra=extra).validate()


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
