"""free_ports: ports a node binds later must not be in the range outgoing connections use."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from minikv_tui import node_process
from minikv_tui.node_process import free_ports

RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def test_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    ports = free_ports(8)
    assert len(set(ports)) == 8, ports
    if RANGE_FILE.exists():
        low = int(RANGE_FILE.read_text().split()[0])
        if low > 20_000 + 32:
            assert all(20_000 <= port < low for port in ports), (ports, low)
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_in_use_is_never_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the candidates narrowed to 40 ports and half of them held, a choice that did not
    check bindability would return a held port almost surely."""
    monkeypatch.setattr(node_process, "_ephemeral_range", lambda: (20_040, 60_999))
    held: list[socket.socket] = []
    try:
        for port in range(20_000, 20_040, 2):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()  # in use already: just as good
                continue
            held.append(sock)
        taken = {sock.getsockname()[1] for sock in held}
        for _ in range(20):
            assert not taken & set(free_ports(4))
    finally:
        for sock in held:
            sock.close()
