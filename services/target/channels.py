"""Channels from the target to its draft: one interface, several transports.

A channel carries ``SpeculationRequest`` messages and returns futures of the matching
``SpeculationResponse``. Requests are answered strictly in order, one at a time, exactly as
the draft's own loop runs: answer, then build the speculation cache, then take the next
request. ``submit`` returns immediately, so the target can overlap its own work (prefill,
verification) with the draft's.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import queue
import threading
from concurrent.futures import Future
from typing import Protocol

import grpc

from saguaro.transport.socket_link import MessageLink, SocketLink
from saguaro.v1 import speculation_pb2 as pb
from saguaro.v1 import speculation_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)


class ChannelClosed(ConnectionError):
    """The draft went away; pending and future requests fail with this."""


class DraftChannel(Protocol):
    name: str

    def handshake(self, request: pb.HandshakeRequest, timeout: float) -> pb.HandshakeResponse: ...

    def submit(self, request: pb.SpeculationRequest) -> Future: ...

    def close(self) -> None: ...


class InProcessChannel:
    """The draft worker in a thread of the target's process (SD baseline, tests, demos)."""

    name = "inprocess"

    def __init__(self, worker, handshake_fn=None):
        self.worker = worker
        self._handshake_fn = handshake_fn
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="draft-worker", daemon=True)
        self._closed = False
        self._thread.start()
        atexit.register(self.close)  # stop the worker thread before the interpreter tears torch down

    def handshake(self, request: pb.HandshakeRequest, timeout: float) -> pb.HandshakeResponse:
        if self._handshake_fn is None:
            return pb.HandshakeResponse(accepted=True, chosen_transport=pb.TRANSPORT_UNSPECIFIED)
        return self._handshake_fn(request)

    def submit(self, request: pb.SpeculationRequest) -> Future:
        future: Future = Future()
        if self._closed:
            future.set_exception(ChannelClosed("in-process draft channel is closed"))
        else:
            self._queue.put((request, future))
        return future

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            request, future = item
            try:
                future.set_result(self.worker.handle(request))
            except Exception as exc:  # surfaced to the target, which falls back
                future.set_exception(exc)
                continue
            try:
                self.worker.build()
            except Exception:  # no reply waits on it, but every later round misses the cache: say why
                log.exception("in-process draft: building the speculation cache failed")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            if threading.current_thread() is not self._thread:
                self._thread.join(timeout=10)


FAST_PATHS = {"unix": pb.TRANSPORT_UNIX_SOCKET, "torch.distributed": pb.TRANSPORT_TORCH_DISTRIBUTED}


class RemoteChannel:
    """A draft service in another process: handshake over gRPC, rounds over the transport the
    draft chose — the ``Session`` bidirectional stream, or a fast path when both run in one pod:
    ``fast_path="unix"`` (the default: one socket write per message) or ``"torch.distributed"``;
    ``None`` offers gRPC only. With ``credentials`` the channel is TLS (mTLS with a client
    certificate) and no fast path is offered: neither link is encrypted."""

    def __init__(self, address: str, fast_path: str | None = "unix", credentials: grpc.ChannelCredentials | None = None):
        if fast_path is not None and fast_path not in FAST_PATHS:
            raise ValueError(f"fast_path must be one of {sorted(FAST_PATHS)} or None, not {fast_path!r}")
        self.address = address
        self.fast_path = fast_path if credentials is None else None
        self.name = "grpc"
        options = [("grpc.max_send_message_length", 256 << 20), ("grpc.max_receive_message_length", 256 << 20)]
        self._channel = (grpc.secure_channel(address, credentials, options) if credentials is not None
                         else grpc.insecure_channel(address, options))
        self._stub = pb_grpc.SpeculationStub(self._channel)
        self._outbox: queue.Queue = queue.Queue()
        self._pending: dict[int, Future] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._closed = False
        self._open = False
        self._worker: threading.Thread | None = None
        self._socket: SocketLink | None = None  # the Unix-socket fast path, written by submit itself
        atexit.register(self.close)  # end the session cleanly before the interpreter tears down

    def handshake(self, request: pb.HandshakeRequest, timeout: float) -> pb.HandshakeResponse:
        offer = pb.HandshakeRequest()
        offer.CopyFrom(request)
        offer.transports_offered[:] = ([FAST_PATHS[self.fast_path]] if self.fast_path else []) + [pb.TRANSPORT_GRPC]
        response = self._stub.Handshake(offer, timeout=timeout)
        if not response.accepted:
            return response
        params = response.transport_params
        if response.chosen_transport == pb.TRANSPORT_UNIX_SOCKET:
            self._socket = SocketLink.connect(params["address"], response.session_id, timeout_s=max(timeout, 10.0))
            self.name = "unix"
            worker = threading.Thread(target=self._read_socket, name="draft-unix", daemon=True)
        elif response.chosen_transport == pb.TRANSPORT_TORCH_DISTRIBUTED:
            from saguaro.transport.torch_link import P2PLink

            link = P2PLink(params["host"], int(params["port"]), rank=0, timeout_s=max(timeout, 10.0))
            self.name = "torch.distributed"
            worker = threading.Thread(target=self._link_loop, args=(link,), name="draft-p2p", daemon=True)
        else:
            metadata = (("saguaro-session-id", response.session_id),)
            self._responses = self._stub.Session(self._requests(), metadata=metadata)
            worker = threading.Thread(target=self._read_stream, name="draft-reader", daemon=True)
        self._open = True
        self._worker = worker
        worker.start()
        return response

    # -- gRPC stream ----------------------------------------------------------------------
    def _requests(self):
        while True:
            request = self._outbox.get()
            if request is None:
                return
            yield request

    def _read_stream(self) -> None:
        try:
            for response in self._responses:
                self._resolve(response)
        except grpc.RpcError as exc:
            self._fail(ChannelClosed(f"draft stream to {self.address} ended: {exc.code().name} {exc.details()}"))
            return
        self._fail(ChannelClosed(f"draft stream to {self.address} closed"))

    # -- Unix socket ----------------------------------------------------------------------
    def _read_socket(self) -> None:
        """Replies as they come; ``submit`` writes the requests (one write each, no hand-off)."""
        try:
            while True:
                self._resolve(pb.SpeculationResponse.FromString(self._socket.recv()))
        except (OSError, ConnectionError) as exc:
            self._fail(ChannelClosed(f"unix fast path to the draft failed: {exc}"))

    # -- torch.distributed ----------------------------------------------------------------
    def _link_loop(self, link: MessageLink) -> None:
        """Requests and replies alternate strictly, as the draft serves them. A gloo send waits
        for the peer's receive, so it runs here, never on the round loop's thread."""
        try:
            while True:
                request = self._outbox.get()
                if request is None:
                    link.close_signal()
                    return
                link.send(request.SerializeToString())
                self._resolve(pb.SpeculationResponse.FromString(link.recv()))
        except Exception as exc:  # gloo reports a dead peer as a RuntimeError
            self._fail(ChannelClosed(f"{self.name} fast path to the draft failed: {exc}"))

    # -- shared ---------------------------------------------------------------------------
    def _resolve(self, response: pb.SpeculationResponse) -> None:
        with self._lock:
            future = self._pending.pop(response.round_id, None)
        if future is not None:
            future.set_result(response)

    def _fail(self, exc: Exception) -> None:
        with self._lock:
            self._closed = True
            pending, self._pending = self._pending, {}
        for future in pending.values():
            future.set_exception(exc)

    def submit(self, request: pb.SpeculationRequest) -> Future:
        future: Future = Future()
        with self._lock:
            if self._closed or not self._open:
                future.set_exception(ChannelClosed(f"draft session with {self.address} is not open"))
                return future
            request.round_id = next(self._ids)
            self._pending[request.round_id] = future
            if self._socket is None:
                self._outbox.put(request)
                return future
            try:  # under the lock: requests reach the socket in round order
                self._socket.send(request.SerializeToString())
                return future
            except OSError as exc:
                error = exc
        self._fail(ChannelClosed(f"unix fast path to the draft failed: {error}"))
        return future

    def close(self) -> None:
        if self._closed and not self._open:
            return
        self._outbox.put(None)
        if self._socket is not None:
            try:
                self._socket.close_signal()
            except OSError:
                pass  # the draft already went away
        self._fail(ChannelClosed("channel closed by the target"))
        self._open = False
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout=2)
        self._channel.close()
