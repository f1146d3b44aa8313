"""`fedmsr fleet sync` throughput: keys registered per second at a real SuperLink.

    python bench/fleet_sync.py [--count 2000] [--cli-sample 10] [--workers 4]

Starts its own PKI and `fedmsr superlink start` (TLS, SuperNode auth) on a free loopback
port in a temporary directory, with a fresh SQLite registry, and stops it by PID at the
end. Figures, each on devices enrolled for it alone:

* ``flwr CLI``    - `flwr supernode register KEY fedmsr` once per key (`cli-sample` keys):
                    how `fleet sync` registered keys before (a process per key);
* ``sync x1``     - `fl_server.deployment.sync` of `count` devices, one request at a time
                    over one in-process Control API client, registry commits batched;
* ``sync xW``     - the same with `workers` requests in flight.

Printed: keys/s of each, and each sync's speed-up over the CLI baseline.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import select

from fl_server import deployment, enrollment, pki
from fl_server.registry import db
from fl_server.registry.models import Device


def enroll(url: str, root: Path, prefix: str, count: int) -> list[str]:
    """`count` fresh devices; their OpenSSH public keys."""
    specs = [enrollment.DeviceSpec(f"{prefix}{i}") for i in range(count)]
    enrollment.enroll(url, specs, enrollment.BundleOptions(
        bundles_dir=root / "devices" / prefix, superlink="127.0.0.1:1", ca_certificate=None))
    with db.session_scope(url) as session:
        return list(session.scalars(select(Device.public_key).where(
            Device.name.startswith(prefix)).order_by(Device.id)))


def time_cli(keys: list[str], root: Path, flwr_home: Path) -> float:
    started = time.perf_counter()
    for i, key in enumerate(keys):
        path = root / f"cli-{i}.pub"
        path.write_text(key + "\n")
        done = subprocess.run([deployment.tool("flwr"), "supernode", "register", str(path),
                               deployment.FEDERATION, "--format", "json"], capture_output=True,
                              text=True, env=deployment.tool_env(flwr_home), check=False)
        assert '"success": true' in done.stdout, done.stdout + done.stderr
    return time.perf_counter() - started


def time_sync(url: str, flwr_home: Path, expected: int, workers: int) -> float:
    started = time.perf_counter()
    result = deployment.sync(url, flwr_home, workers=workers)
    elapsed = time.perf_counter() - started
    assert len(result.registered) == expected, (len(result.registered), expected)
    return elapsed


def start_superlink(root: Path, flwr_home: Path) -> tuple[subprocess.Popen, int]:
    port = deployment.free_port()
    env = {**os.environ, "FLWR_HOME": str(flwr_home)}
    proc = subprocess.Popen(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "fl_server.cli", "superlink", "start", "--pki-dir",
         str(root / "pki"), "--port", str(port), "--state", str(root / "superlink.db")],
        cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    deadline = time.monotonic() + 120
    while True:
        try:
            deployment.online_nodes(flwr_home)
            return proc, port
        except Exception:  # noqa: BLE001 - still starting
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the SuperLink did not start") from None
            time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--cli-sample", type=int, default=10)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fedmsr-sync-bench-") as tmp:
        root = Path(tmp)
        flwr_home = root / "flwr-home"
        pki.init_pki(root / "pki", ["127.0.0.1", "localhost"])
        url = f"sqlite:///{root / 'registry.db'}"
        db.upgrade(url)
        proc, port = start_superlink(root, flwr_home)
        try:
            cli_s = time_cli(enroll(url, root, "cli-", args.cli_sample), root, flwr_home)
            # The CLI-registered keys are at the SuperLink but not recorded in the registry:
            # sync adopts them (node list), which is part of what it does.
            time_sync(url, flwr_home, args.cli_sample, workers=1)
            enroll(url, root, "one-", args.count)
            one_s = time_sync(url, flwr_home, args.count, workers=1)
            enroll(url, root, "many-", args.count)
            many_s = time_sync(url, flwr_home, args.count, workers=args.workers)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
    cli_rate = args.cli_sample / cli_s
    print(f"SuperLink on 127.0.0.1:{port}, {os.cpu_count()} CPUs")
    print(f"flwr CLI   {args.cli_sample:>6} keys {cli_s:8.2f} s {cli_rate:9.1f} keys/s")
    for label, seconds in (("sync x1", one_s), (f"sync x{args.workers}", many_s)):
        rate = args.count / seconds
        print(f"{label:<10} {args.count:>6} keys {seconds:8.2f} s {rate:9.1f} keys/s "
              f"({rate / cli_rate:.0f}x the CLI)")


if __name__ == "__main__":
    main()
