"""The target's ``TargetRouting`` service: prefix-cache events and the tokenizer, for gateways.

A gateway routes a request to the target that already holds its prompt's prefix in KV cache;
it learns which blocks each target holds from this event stream (docs/prefix-caching.md).
"""

from __future__ import annotations

import itertools
import tempfile
import threading
import uuid
from collections import deque
from collections.abc import Iterable
from pathlib import Path

from saguaro.v1 import routing_pb2 as rpb
from saguaro.v1 import routing_pb2_grpc as rpb_grpc
from saguaro.wire import HEARTBEAT_S


class KvEventHub:
    """The target's prefix-cache events for gateways.

    It is the block manager's listener, so it is called on the engine thread; WatchKvEvents
    handlers read it from gRPC threads. The current set of hashes (for snapshots) and the last
    ``buffer`` events (to resume a watcher or catch up a slow one) change under one lock, so a
    snapshot always agrees with the sequence number it is reported at.
    """

    def __init__(self, block_size: int, initial: Iterable[int] = (), buffer: int = 4096):
        self.instance_id = uuid.uuid4().hex
        self.block_size = block_size
        self._cond = threading.Condition()
        self._hashes: set[int] = set(initial)
        self._events: deque[tuple[int, int, list[int]]] = deque(maxlen=buffer)  # (seq, kind, hashes)
        self._seq = 0

    def blocks_stored(self, hashes: list[int]) -> None:
        self._append(rpb.KV_EVENT_KIND_STORED, hashes)

    def blocks_evicted(self, hashes: list[int]) -> None:
        self._append(rpb.KV_EVENT_KIND_EVICTED, hashes)

    def _append(self, kind: int, hashes: list[int]) -> None:
        with self._cond:
            if kind == rpb.KV_EVENT_KIND_STORED:
                self._hashes.update(hashes)
            else:
                self._hashes.difference_update(hashes)
            self._seq += 1
            self._events.append((self._seq, kind, hashes))
            self._cond.notify_all()

    def wake(self) -> None:
        """Wake every waiting reader (a watcher went away and should notice)."""
        with self._cond:
            self._cond.notify_all()

    def read(self, after_seq: int | None, timeout: float) -> tuple[bool, int, list]:
        """``(False, seq, events after after_seq)``, waiting up to ``timeout`` for one (none:
        a heartbeat); or ``(True, seq, all hashes)`` when ``after_seq`` is None or no longer
        replayable."""
        with self._cond:
            if after_seq is not None and after_seq == self._seq:
                self._cond.wait(timeout)
            oldest = self._events[0][0] if self._events else self._seq + 1
            if after_seq is None or not oldest - 1 <= after_seq <= self._seq:
                return True, self._seq, list(self._hashes)
            return False, self._seq, list(itertools.islice(self._events, after_seq - oldest + 1, None))


class TargetRoutingService(rpb_grpc.TargetRoutingServicer):
    """What gateways need from a target besides inference: its KV events and its tokenizer."""

    def __init__(self, hub: KvEventHub, tokenizer, tokenizer_lock: threading.Lock):
        self.hub = hub
        self.tokenizer = tokenizer
        self._tokenizer_lock = tokenizer_lock
        self._tokenizer_files: rpb.TokenizerFiles | None = None

    def WatchKvEvents(self, request: rpb.WatchKvEventsRequest, context):
        hub = self.hub
        after = request.after_seq if request.instance_id == hub.instance_id else None
        context.add_callback(hub.wake)
        while context.is_active():
            snapshot, seq, payload = hub.read(after, HEARTBEAT_S)
            batch = rpb.KvEventBatch(instance_id=hub.instance_id, block_size=hub.block_size, seq=seq,
                                     snapshot=snapshot)
            if snapshot:
                batch.snapshot_hashes.extend(payload)
            else:
                batch.events.extend(rpb.KvEvent(seq=s, kind=k, block_hashes=h) for s, k, h in payload)
            yield batch
            after = seq

    def GetTokenizer(self, request: rpb.GetTokenizerRequest, context) -> rpb.TokenizerFiles:
        if self.tokenizer is None:
            return rpb.TokenizerFiles(has_tokenizer=False)
        with self._tokenizer_lock:
            if self._tokenizer_files is None:
                with tempfile.TemporaryDirectory(prefix="saguaro-tokenizer-") as tmp:
                    self.tokenizer.save_pretrained(tmp)
                    files = {f.name: f.read_bytes() for f in Path(tmp).iterdir() if f.is_file()}
                self._tokenizer_files = rpb.TokenizerFiles(has_tokenizer=True, files=files)
            return self._tokenizer_files
