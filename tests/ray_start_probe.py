"""`python -m tests.ray_start_probe`: a real Ray node start that times out, then the retry.

Ray's own node start is made to time out exactly as on a loaded machine: the raylet is
reported as not registered yet (`services.get_node` raises the RuntimeError Ray retries
on) and Ray's clock (`time.monotonic` as `ray._private.node` sees it) has passed its fixed
30 s by the next look. Everything else is real: the first start leaves a real GCS, raylet
and agents behind. Prints one JSON line: the tries used, the processes the failed start
left and which of them are still alive after the retry, and the running Ray's CPUs.
"""

from __future__ import annotations

import json
import os
import time
import types

from fl_server.launcher import RAY_LOOPBACK_ENV, backend_config
from fl_server.proc_table import descendants, read_stat


def main() -> None:
    os.environ.update(RAY_LOOPBACK_ENV)
    import ray
    import ray._private.node as ray_node
    import ray._private.services as ray_services

    from fl_server.ray_start import start_ray

    real_get_node = ray_services.get_node
    late = {"s": 0.0}
    left_by_first: list[int] = []

    def get_node(*args: object, **kwargs: object) -> object:
        if not late["s"]:  # the first look: the raylet "has not registered yet"
            late["s"] = 31.0
            left_by_first.extend(sorted(descendants(os.getpid())))
            raise RuntimeError("node info not available yet (probe)")
        return real_get_node(*args, **kwargs)

    clock = types.SimpleNamespace(**{name: getattr(time, name) for name in dir(time)
                                     if not name.startswith("__")})
    clock.monotonic = lambda: time.monotonic() + late["s"]
    ray_services.get_node = get_node
    ray_node.time = clock  # type: ignore[attr-defined]
    init_args = dict(backend_config(cpus=2)["init_args"])
    tries = start_ray(init_args)
    alive = [pid for pid in left_by_first
             if (stat := read_stat(pid)) is not None and stat.alive]
    cpus = ray.cluster_resources().get("CPU")
    ray.shutdown()
    print(json.dumps({"tries": tries, "left_by_first": left_by_first,
                      "alive_after_retry": alive, "cpus": cpus}))


if __name__ == "__main__":
    main()
