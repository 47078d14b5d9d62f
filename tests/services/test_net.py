"""Port helpers: a run of free ports for several draft workers stays clear of outbound connections."""

from __future__ import annotations

import socket

from saguaro.net import ephemeral_range, free_port_run


def test_a_port_run_is_bindable_and_below_the_ephemeral_range():
    low, high = ephemeral_range()
    assert 0 < low <= high <= 65535
    base = free_port_run(3)
    assert base + 3 <= low, "outbound connections take their local port from the ephemeral range"
    sockets = [socket.socket() for _ in range(3)]
    try:
        for i, sock in enumerate(sockets):
            sock.bind(("127.0.0.1", base + i))
    finally:
        for sock in sockets:
            sock.close()


def test_a_run_that_would_cover_a_taken_port_is_skipped(monkeypatch):
    taken = free_port_run(4) + 1
    with socket.socket() as held:
        held.bind(("127.0.0.1", taken))
        held.listen()
        draws = iter([taken - 1, taken + 1])  # the first draw covers the held port, the second does not
        monkeypatch.setattr("saguaro.net.random.randint", lambda low, high: next(draws))
        assert free_port_run(2) == taken + 1
