"""`python -m tests.ray_start_probe`: a real Ray node start that times out, then the retry.

Ray's own node start is made to time out as on a loaded machine: the raylet is reported
as not registered yet (`services.get_node` raises the RuntimeError Ray retries on) after
a few real seconds in which the GCS, the raylet and their agents start, and Ray's clock
(`time.monotonic` as `ray._private.node` sees it) has then passed its fixed 30 s.
Everything else is real. Prints one JSON line: the tries used, the processes of the
failed start's session (found by its session name in their command lines, anywhere on
the machine) at the failure and after the retry, and the running Ray's CPUs.
"""

from __future__ import annotations

import inspect
import json
import os
import time
import types
from pathlib import Path

from fl_server.launcher import RAY_LOOPBACK_ENV, backend_config
from fl_server.proc_table import live_processes

#: Real seconds the first start runs before its node is reported late.
LATE_AFTER_S = 4.0


def session_processes(session_name: str) -> list[int]:
    """Live processes on the machine whose command line names `session_name`."""
    found = []
    for stat in live_processes():
        if stat.pid == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{stat.pid}/cmdline").read_bytes()
        except OSError:
            continue
        if session_name.encode() in cmdline:
            found.append(stat.pid)
    return sorted(found)


def main() -> None:
    os.environ.update(RAY_LOOPBACK_ENV)
    import ray
    import ray._private.node as ray_node
    import ray._private.services as ray_services

    from fl_server.ray_start import start_ray

    real_get_node = ray_services.get_node
    late = {"s": 0.0}
    first: dict[str, object] = {}

    def get_node(*args: object, **kwargs: object) -> object:
        if not late["s"]:  # the first start: its raylet "has not registered" in time
            frame = inspect.currentframe()
            node = frame.f_back.f_locals["self"] if frame and frame.f_back else None
            time.sleep(LATE_AFTER_S)  # its agents start meanwhile
            first["session"] = str(node.session_name)  # type: ignore[union-attr]
            first["at_failure"] = session_processes(str(first["session"]))
            late["s"] = 31.0
            raise RuntimeError("node info not available yet (probe)")
        return real_get_node(*args, **kwargs)

    clock = types.SimpleNamespace(**{name: getattr(time, name) for name in dir(time)
                                     if not name.startswith("__")})
    clock.monotonic = lambda: time.monotonic() + late["s"]
    ray_services.get_node = get_node
    ray_node.time = clock  # type: ignore[attr-defined]
    tries = start_ray(dict(backend_config(cpus=2)["init_args"]))
    after_retry = session_processes(str(first["session"]))
    cpus = ray.cluster_resources().get("CPU")
    ray.shutdown()
    print(json.dumps({"tries": tries, "session": first["session"],
                      "at_failure": first["at_failure"], "after_retry": after_retry,
                      "cpus": cpus}))


if __name__ == "__main__":
    main()
