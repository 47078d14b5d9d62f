"""The prefix index in Redis, shared by gateway replicas (semantics: ``prefix_index``).

Key layout (``{ns}`` is the served model name, or ``default``; the braces are a Redis Cluster
hash tag, so all keys of one lookup live in one slot and the scripts stay cluster-safe):

==========================================  =======  =========================================
key                                         type     content
==========================================  =======  =========================================
``saguaro:{ns}:blocks:<instance>``          SET      hashes (16 hex digits) the instance holds
``saguaro:{ns}:seq:<instance>``             STRING   seq of the last event applied to the SET
``saguaro:{ns}:prov:<instance>``            ZSET     provisional hashes, score = expiry (ms,
                                                     Redis server clock)
==========================================  =======  =========================================

Every write refreshes the instance's TTL (``index_ttl_s``; heartbeats refresh it too), so the
keys of a target that went away disappear by themselves; provisional entries are trimmed on
write and their key expires ``provisional_ttl_s`` after the last one. Memory is therefore
bounded by the live targets' KV-cache sizes: about 70 bytes per cached block per target.

Every operation is one Lua script (atomic; sequence checks happen in Redis, so replicas that
deliver the same events skip them). Redis unreachable: the index marks itself unavailable,
logs once, probes every ``probe_interval_s`` and comes back by itself; meanwhile lookups raise
``IndexUnavailable`` at once (the router routes by load) and writes raise it too (the KV
watchers resync with a snapshot once it is back).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from saguaro.services.gateway.prefix_index import Event, IndexUnavailable

log = logging.getLogger(__name__)

_CHUNK = """
local function add_all(cmd, key, items, first, last)
  for i = first, last, 1000 do
    redis.call(cmd, key, unpack(items, i, math.min(i + 999, last)))
  end
end
"""

# KEYS: blocks, seq. ARGV: ttl_ms, n_events, then per event: seq, "s"|"e", n, hashes...
# Returns the new seq, or -1: unknown instance or a gap (resync).
_APPLY_EVENTS = _CHUNK + """
local stored = redis.call('GET', KEYS[2])
if not stored then return -1 end
stored = tonumber(stored)
local i = 3
for _ = 1, tonumber(ARGV[2]) do
  local seq, kind, n = tonumber(ARGV[i]), ARGV[i + 1], tonumber(ARGV[i + 2])
  if seq > stored then
    if seq ~= stored + 1 then
      redis.call('SET', KEYS[2], stored, 'PX', ARGV[1])
      return -1
    end
    if n > 0 then add_all(kind == 's' and 'SADD' or 'SREM', KEYS[1], ARGV, i + 3, i + 2 + n) end
    stored = seq
  end
  i = i + 3 + n
end
redis.call('SET', KEYS[2], stored, 'PX', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return stored
"""

# KEYS: blocks, seq. ARGV: ttl_ms, seq, hashes... Returns 1 if applied, 0 if already newer.
_APPLY_SNAPSHOT = _CHUNK + """
local stored = redis.call('GET', KEYS[2])
if stored and tonumber(stored) >= tonumber(ARGV[2]) then return 0 end
redis.call('DEL', KEYS[1])
if #ARGV > 2 then
  add_all('SADD', KEYS[1], ARGV, 3, #ARGV)
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[1])
return 1
"""

# KEYS: blocks, seq. ARGV: ttl_ms, seq. Returns 1 if the index is current, else 0.
_HEARTBEAT = """
local stored = redis.call('GET', KEYS[2])
if not stored or tonumber(stored) < tonumber(ARGV[2]) then return 0 end
redis.call('PEXPIRE', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""

# KEYS: prov. ARGV: ttl_ms, hashes...
_PROVISIONAL = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = now + tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
for i = 2, #ARGV, 500 do
  local args = {}
  for j = i, math.min(i + 499, #ARGV) do
    args[#args + 1] = expiry
    args[#args + 1] = ARGV[j]
  end
  redis.call('ZADD', KEYS[1], unpack(args))
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""

# KEYS: blocks_1, prov_1, blocks_2, prov_2, ... ARGV: hashes. Returns leading hits per instance.
_LOOKUP = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for k = 1, #KEYS, 2 do
  local n = 0
  for i = 1, #ARGV do
    if redis.call('SISMEMBER', KEYS[k], ARGV[i]) == 0 then
      local score = redis.call('ZSCORE', KEYS[k + 1], ARGV[i])
      if not score or tonumber(score) <= now then break end
    end
    n = n + 1
  end
  out[#out + 1] = n
end
return out
"""


def hex_hash(h: int) -> str:
    return format(h, "016x")


class RedisPrefixIndex:
    name = "redis"

    def __init__(self, url: str, namespace: str = "default", provisional_ttl_s: float = 10.0,
                 index_ttl_s: float = 3600.0, probe_interval_s: float = 1.0, socket_timeout_s: float = 0.5,
                 on_availability: Callable[[bool], None] | None = None):
        self.url = url
        self.prefix = f"saguaro:{{{namespace}}}"
        self.provisional_ttl_ms = int(provisional_ttl_s * 1000)
        self.index_ttl_ms = int(index_ttl_s * 1000)
        self.probe_interval_s = probe_interval_s
        self.on_availability = on_availability
        # One immediate retry (a pooled connection may be stale after a Redis restart), no
        # backoff: the client's default retries for seconds, and requests must not wait on Redis.
        self._redis = aioredis.Redis.from_url(url, socket_timeout=socket_timeout_s,
                                              socket_connect_timeout=socket_timeout_s, retry=Retry(NoBackoff(), 1))
        self._scripts = {name: self._redis.register_script(src) for name, src in (
            ("events", _APPLY_EVENTS), ("snapshot", _APPLY_SNAPSHOT), ("heartbeat", _HEARTBEAT),
            ("provisional", _PROVISIONAL), ("lookup", _LOOKUP))}
        self._available = asyncio.Event()
        self._available.set()  # optimistic: the first failure flips it
        self._probe: asyncio.Task | None = None

    # -- keys --------------------------------------------------------------------------------
    def blocks_key(self, instance: str) -> str:
        return f"{self.prefix}:blocks:{instance}"

    def seq_key(self, instance: str) -> str:
        return f"{self.prefix}:seq:{instance}"

    def provisional_key(self, instance: str) -> str:
        return f"{self.prefix}:prov:{instance}"

    # -- availability ------------------------------------------------------------------------
    @property
    def available(self) -> bool:
        return self._available.is_set()

    async def wait_available(self) -> None:
        await self._available.wait()

    async def _run(self, script: str, keys: list[str], args: list):
        if not self._available.is_set():
            raise IndexUnavailable(f"Redis at {self.url} is unreachable")
        try:
            return await self._scripts[script](keys=keys, args=args)
        except (TimeoutError, RedisError, OSError) as exc:
            self._mark_down(exc)
            raise IndexUnavailable(f"Redis at {self.url} is unreachable: {exc}") from None

    def _mark_down(self, exc: BaseException) -> None:
        if not self._available.is_set():
            return
        self._available.clear()
        log.warning("prefix index: Redis at %s is unreachable (%s); routing by load until it is back", self.url, exc)
        if self.on_availability is not None:
            self.on_availability(False)
        self._probe = asyncio.get_running_loop().create_task(self._probe_until_up())

    async def _probe_until_up(self) -> None:
        while True:
            await asyncio.sleep(self.probe_interval_s)
            try:
                await self._redis.ping()
            except (TimeoutError, RedisError, OSError):
                continue
            log.warning("prefix index: Redis at %s is reachable again; prefix-aware routing resumes", self.url)
            self._available.set()
            if self.on_availability is not None:
                self.on_availability(True)
            return

    # -- the index ---------------------------------------------------------------------------
    async def apply_snapshot(self, instance: str, seq: int, hashes: Sequence[int]) -> None:
        await self._run("snapshot", [self.blocks_key(instance), self.seq_key(instance)],
                        [self.index_ttl_ms, seq, *map(hex_hash, hashes)])

    async def apply_events(self, instance: str, events: Sequence[Event]) -> bool:
        args: list = [self.index_ttl_ms, len(events)]
        for seq, stored, hashes in events:
            args += [seq, "s" if stored else "e", len(hashes), *map(hex_hash, hashes)]
        return await self._run("events", [self.blocks_key(instance), self.seq_key(instance)], args) >= 0

    async def heartbeat(self, instance: str, seq: int) -> bool:
        return bool(await self._run("heartbeat", [self.blocks_key(instance), self.seq_key(instance)],
                                    [self.index_ttl_ms, seq]))

    async def add_provisional(self, instance: str, hashes: Sequence[int]) -> None:
        if hashes:
            await self._run("provisional", [self.provisional_key(instance)],
                            [self.provisional_ttl_ms, *map(hex_hash, hashes)])

    async def lookup(self, hashes: Sequence[int], instances: Sequence[str]) -> dict[str, int]:
        if not hashes or not instances:
            return {i: 0 for i in instances}
        keys = [k for i in instances for k in (self.blocks_key(i), self.provisional_key(i))]
        counts = await self._run("lookup", keys, list(map(hex_hash, hashes)))
        return dict(zip(instances, map(int, counts)))

    def forget(self, instance: str) -> None:
        return None  # other replicas may still route to it; its keys expire with index_ttl_s

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        await self._redis.aclose()
