"""Which process is at the other end of a test's TCP connection, read from /proc.

Servers sharing a port with SO_REUSEPORT say nothing in their answers about which
of them answered. The kernel knows: the accepted end of every connection is a
socket in exactly one process's file table. Linux only, like SO_REUSEPORT's
spreading of connections; every process looked at must be the test user's.
"""

from __future__ import annotations

import os
from pathlib import Path

_ESTABLISHED = "01"


def _established() -> dict[int, tuple[int, int]]:
    """Established TCP sockets of this network namespace: inode -> (local, remote port)."""
    sockets = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        lines = Path(table).read_text().splitlines()[1:]
        for fields in (line.split() for line in lines):
            local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
            if state == _ESTABLISHED and inode:
                sockets[inode] = (
                    int(local.rpartition(":")[2], 16),
                    int(remote.rpartition(":")[2], 16),
                )
    return sockets


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    fds = f"/proc/{pid}/fd"
    for fd in os.listdir(fds):
        try:
            target = os.readlink(f"{fds}/{fd}")
        except FileNotFoundError:  # closed since the listing
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def client_ports(server_port: int) -> set[int]:
    """The local ports of this process's established connections to `server_port`."""
    sockets = _established()
    return {
        sockets[inode][0]
        for inode in _socket_inodes(os.getpid())
        if inode in sockets and sockets[inode][1] == server_port
    }


def accepted_by(server_port: int, pids: list[int]) -> dict[int, int]:
    """Client port -> which of `pids` holds the accepted end of that connection to `server_port`."""
    sockets = _established()
    owners = {}
    for pid in pids:
        for inode in _socket_inodes(pid):
            local, remote = sockets.get(inode, (0, 0))
            if local == server_port:
                owners[remote] = pid
    return owners


def copies_of(pid: int, module: str) -> list[int]:
    """The children of `pid` running `python -m <module>`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # The parent pid follows the command name, which may hold spaces: after its ")".
            parent = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError):  # exited since the listing
            continue
        if parent == pid and module.encode() in argv:
            found.append(int(entry.name))
    return found
