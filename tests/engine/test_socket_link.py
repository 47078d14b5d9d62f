"""The Unix-socket fast path: whole messages both ways, one session per listener."""

from __future__ import annotations

import os
import threading
import uuid

import pytest

from saguaro.transport.socket_link import SocketLink, SocketListener


def _pair() -> tuple[SocketLink, SocketLink]:
    session = uuid.uuid4().hex
    listener = SocketListener(session)
    accepted: dict[str, SocketLink] = {}
    thread = threading.Thread(target=lambda: accepted.setdefault("link", listener.accept(timeout_s=10)))
    thread.start()
    target = SocketLink.connect(listener.address, session)
    thread.join(timeout=10)
    return target, accepted["link"]


def test_messages_arrive_whole_and_in_order_both_ways():
    target, draft = _pair()
    big = os.urandom(3 << 20)  # larger than a socket buffer: sent and read in pieces
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.extend(draft.recv() for _ in range(4)))
    reader.start()
    for payload in (b"", b"x", big, b"after"):
        target.send(payload)
    reader.join(timeout=30)
    assert received == [b"", b"x", big, b"after"]
    draft.send(b"reply")
    assert target.recv() == b"reply"
    target.close_signal()
    with pytest.raises(ConnectionError, match="closed"):
        draft.recv()
    draft.close()


def test_a_peer_that_vanishes_is_a_connection_error():
    target, draft = _pair()
    draft.close()
    with pytest.raises(ConnectionError):
        target.recv()


def test_only_the_session_holder_is_accepted():
    session = uuid.uuid4().hex
    listener = SocketListener(session)
    assert listener.address.startswith("@"), "abstract namespace: nothing on disk, scoped to the network namespace"
    accepted: dict[str, SocketLink] = {}
    thread = threading.Thread(target=lambda: accepted.setdefault("link", listener.accept(timeout_s=10)))
    thread.start()
    intruder = SocketLink.connect(listener.address, "not-the-session")
    with pytest.raises(ConnectionError):
        intruder.recv()  # dropped without a word
    target = SocketLink.connect(listener.address, session)
    thread.join(timeout=10)
    target.send(b"hello")
    assert accepted["link"].recv() == b"hello"
    target.close()
    accepted["link"].close()
