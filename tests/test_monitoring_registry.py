"""`fedmsr monitor` between runs reads the fleet from the registry (SQLite and PostgreSQL)."""

from __future__ import annotations

import re

from fl_server.cli import main


def _samples(page: str, name: str) -> dict[str, float]:
    found = {}
    for line in page.splitlines():
        match = re.match(rf'^{name}\{{status="([^"]+)"\}} (\S+)$', line)
        if match:
            found[match.group(1)] = float(match.group(2))
    return found


def test_monitor_serves_devices_by_status_from_the_registry(registry_url, tmp_path, monkeypatch,
                                                            capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FEDMSR_DB", registry_url)
    assert main(["db", "upgrade"]) == 0
    assert main(["fleet", "enroll", "--count", "3", "--prefix", "cam-"]) == 0
    assert main(["fleet", "revoke", "cam-1", "--reason", "lost"]) == 0
    (tmp_path / "runs").mkdir()  # no run yet: the fleet panels must still have data
    capsys.readouterr()
    assert main(["monitor", "--once", "--runs-dir", str(tmp_path / "runs")]) == 0
    devices = _samples(capsys.readouterr().out, "fedmsr_devices")
    assert devices.get("enrolled") == 2.0 and devices.get("revoked") == 1.0
    assert devices.get("active", 0.0) == 0.0
