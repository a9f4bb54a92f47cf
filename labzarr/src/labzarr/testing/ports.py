"""Ports for servers that tests start on 127.0.0.1 and must name before they bind (`weed`, an
nginx on a fixed `server.port`): free now, and never ones the kernel hands to outgoing connections."""

from __future__ import annotations

import contextlib
import random
import socket
from pathlib import Path

PORT_FLOOR = 10000  # lower ports are where other servers on a machine tend to live


def ephemeral_ports() -> range:
    """The ports the kernel hands to outgoing connections (Linux's default where unreadable)."""
    with contextlib.suppress(OSError, ValueError):
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return range(low, high + 1)
    return range(32768, 61000)


def free_ports(n: int) -> list[int]:
    """`n` distinct ports free on 127.0.0.1 now and outside the ephemeral range.

    A port the kernel picked for us (bind to port 0) is ephemeral: any outgoing connection on the
    machine (the server's own, between its services, or a parallel test's) may take it as its
    source port before the server binds it; the server then dies with "address already in use"
    (seen in CI with `weed`).
    """
    ephemeral = ephemeral_ports()
    pool = [p for p in range(PORT_FLOOR, 65536) if p not in ephemeral]
    sockets: list[socket.socket] = []
    try:
        for port in random.sample(pool, len(pool)):
            if len(sockets) == n:
                break
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            sockets.append(s)
        if len(sockets) < n:
            raise RuntimeError(f"fewer than {n} free ports on 127.0.0.1 outside {ephemeral}")
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
