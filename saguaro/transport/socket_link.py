"""Framed messages on a Unix-domain socket: the co-located fast path between target and draft.

Each message is an 8-byte little-endian length and the payload, written with one
``sendmsg`` call (no copy into a joined buffer, no second write), so a round costs one write and
one read per direction and no handshake round trip. The torch.distributed link needs two
blocking send/recv pairs per message, and a gloo ``send`` returns only once the peer has
received, which put its wait on the sender's critical path (docs/speculation.md, "Transports").

The socket lives in Linux's abstract namespace (the address starts with a NUL byte). Abstract
sockets belong to the network namespace, so exactly the processes that could reach each other
on loopback can reach it: the containers of one pod, with no shared volume. Nothing is left on
disk. The first frame the connecting side sends is the session id, and the listening side
accepts only a connection that presents its own session.
"""

from __future__ import annotations

import socket
import struct
from typing import Protocol

_LENGTH = struct.Struct("<q")
_CLOSE = -1


class MessageLink(Protocol):
    """What a fast path offers the round loop: whole messages, in order, both ways."""

    def send(self, payload: bytes) -> None: ...

    def recv(self) -> bytes: ...

    def close_signal(self) -> None: ...


class SocketLink:
    """One connected stream socket; ``send``/``recv`` move whole messages."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._header = bytearray(_LENGTH.size)

    @classmethod
    def connect(cls, address: str, session_id: str, timeout_s: float = 10.0) -> SocketLink:
        """The target's side: connect to ``address`` (as ``listen_address`` gave it) and present the session."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout_s)
        sock.connect(_os_address(address))
        sock.settimeout(None)
        link = cls(sock)
        link.send(session_id.encode())
        return link

    def send(self, payload: bytes) -> None:
        header = _LENGTH.pack(len(payload))
        sent = self._sock.sendmsg([header, payload])
        if sent < len(header):  # a signal or a full buffer cut the write short: finish it
            self._sock.sendall(header[sent:])
            sent = len(header)
        if sent - len(header) < len(payload):
            self._sock.sendall(memoryview(payload)[sent - len(header):])

    def recv(self) -> bytes:
        self._read_into(memoryview(self._header))
        (size,) = _LENGTH.unpack(self._header)
        if size < 0:
            raise ConnectionError("peer closed the link")
        body = bytearray(size)
        self._read_into(memoryview(body))
        return bytes(body)

    def close_signal(self) -> None:
        """Tell the peer this side is done (a negative length), then close."""
        try:
            self._sock.sendall(_LENGTH.pack(_CLOSE))
        finally:
            self.close()

    def close(self) -> None:
        self._sock.close()

    def _read_into(self, view: memoryview) -> None:
        while view:
            got = self._sock.recv_into(view)
            if got == 0:
                raise ConnectionError("peer closed the link")
            view = view[got:]


class SocketListener:
    """The draft's side: an abstract-namespace socket that accepts the session's one connection."""

    def __init__(self, session_id: str):
        self.session_id = session_id
        self.address = f"@saguaro-draft-{session_id}"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(_os_address(self.address))
        self._sock.listen(1)

    def accept(self, timeout_s: float = 60.0) -> SocketLink:
        """Wait for the target; a connection that does not present this session is dropped."""
        self._sock.settimeout(timeout_s)
        try:
            while True:
                conn, _ = self._sock.accept()
                conn.settimeout(timeout_s)
                link = SocketLink(conn)
                try:
                    presented = link.recv()
                except (OSError, ConnectionError):
                    link.close()
                    continue
                if presented == self.session_id.encode():
                    conn.settimeout(None)
                    return link
                link.close()
        finally:
            self._sock.close()


def _os_address(address: str) -> str:
    """``@name`` is the abstract name ``\\0name``; anything else is a filesystem path."""
    return "\0" + address[1:] if address.startswith("@") else address
