"""Which addresses a set of processes listens on, read from /proc (no tool, no signal).

A process's sockets are the `socket:[INODE]` links in /proc/PID/fd; /proc/net/tcp, tcp6,
udp and udp6 say which local address each inode is bound to (TCP in state LISTEN; UDP
bound at all).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_LISTEN, _UDP_BOUND = "0A", "07"


@dataclass(frozen=True)
class Listener:
    pid: int
    command: str
    protocol: str
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int

    @property
    def loopback(self) -> bool:
        address = self.address
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return address.is_loopback

    def __str__(self) -> str:
        return f"{self.command} (pid {self.pid}) {self.protocol} {self.address}:{self.port}"


def _address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:  # one little-endian 32-bit word
        return ipaddress.IPv4Address(raw[::-1])
    # four little-endian 32-bit words
    return ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))


def _bound_sockets() -> dict[int, tuple[str, ipaddress.IPv4Address | ipaddress.IPv6Address,
                                        int]]:
    """inode -> (protocol, local address, port) for listening TCP and bound UDP sockets."""
    out = {}
    for protocol, state in (("tcp", _LISTEN), ("tcp6", _LISTEN), ("udp", _UDP_BOUND),
                            ("udp6", _UDP_BOUND)):
        table = Path("/proc/net") / protocol
        if not table.exists():
            continue
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != state:
                continue
            host, port = fields[1].split(":")
            out[int(fields[9])] = (protocol, _address(host), int(port, 16))
    return out


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        for fd in os.scandir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(fd.path)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    except OSError:  # gone, or not ours
        pass
    return inodes


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace").strip()[:120]
    except OSError:
        return "?"


def listeners(pids: Iterable[int]) -> list[Listener]:
    bound = _bound_sockets()
    found = []
    for pid in sorted(set(pids)):
        for inode in sorted(_socket_inodes(pid)):
            if inode in bound:
                protocol, address, port = bound[inode]
                found.append(Listener(pid, _command(pid), protocol, address, port))
    return found


def descendants(root: int) -> set[int]:
    """`root` and every live process below it (by parent pid)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.add(pid)
            todo.extend(children.get(pid, ()))
    return out
