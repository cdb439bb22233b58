"""Redis: connections (AUTH, TLS, Cluster) and the atomic stream operations the workers rely on.

Each operation that must not be split by a crash is one Lua script, run atomically by Redis:

- ``admit``: check the camera's in-flight budget, XADD the frame and count it in the camera's ledger;
- ``finish``: for each frame of a batch, XACK it and, only if the ack removed a pending entry, delete
  the frame, publish its result and count it. A worker that was paused past the claim timeout and wakes
  up finds its ack returning 0 and publishes nothing: a result is published exactly once;
- ``dead_letter``: the same gate, moving a poison entry to the dead-letter stream with its reason;
- ``ack_alerts``: XACK a detection entry and publish the alerts it caused, together.

All keys of one script share a shard's hash tag (see :mod:`streamproc.keys`), so the scripts run on
Redis Cluster too. Acked frames are deleted, so a frames stream holds exactly the frames in flight and
its memory is bounded by the cameras' ``max_inflight``.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis
from redis.cluster import RedisCluster

from streamproc.config import RedisConfig
from streamproc.errors import ConfigError
from streamproc.keys import ALERTS_GROUP, FRAMES_GROUP, INVALID_CAMERA, Keys
from streamproc.messages import Encoded
from streamproc.redact import redact

RedisClient = redis.Redis | RedisCluster
# failures a worker waits out (back off, retry); OOM: a full Redis with noeviction refuses writes
REDIS_ERRORS = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.OutOfMemoryError,
)

_ADMIT = """
if ARGV[4] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[4] then return -2 end
local inflight = tonumber(redis.call('HGET', KEYS[2], 'in_flight') or '0')
local full = inflight >= tonumber(ARGV[1])
if full and ARGV[2] == 'lossless' then return -1 end
local n = tonumber(ARGV[5])
for i = 0, n - 1 do redis.call('HINCRBY', KEYS[2], ARGV[6 + 2 * i], ARGV[7 + 2 * i]) end
if full then
  redis.call('HINCRBY', KEYS[2], 'dropped:backlog_full', 1)
  return 0
end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 6 + 2 * n, #ARGV))
redis.call('HINCRBY', KEYS[2], 'published', 1)
redis.call('HINCRBY', KEYS[2], 'in_flight', 1)
redis.call('HSET', KEYS[2], 'last_seq', ARGV[3])
return id
"""

_FINISH = """
local out = {}
local i = 3
while i <= #ARGV do
  local id, ledger, outcome, nf = ARGV[i], KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2], tonumber(ARGV[i + 3])
  local acked = redis.call('XACK', KEYS[1], ARGV[1], id)
  if acked == 1 then
    redis.call('XDEL', KEYS[1], id)
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, i + 4, i + 3 + nf))
    redis.call('HINCRBY', ledger, outcome, 1)
    redis.call('HINCRBY', ledger, 'in_flight', -1)
  end
  out[#out + 1] = acked
  i = i + 4 + nf
end
return out
"""

_DEAD_LETTER = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
local entry = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
local fields = {'reason', ARGV[3], 'deliveries', ARGV[4], 'worker', ARGV[5], 'id', ARGV[2]}
if entry[1] then
  local f = entry[1][2]
  for j = 1, #f, 2 do
    if f[j] == 'data' then
      fields[#fields + 1] = 'data_bytes'; fields[#fields + 1] = tostring(string.len(f[j + 1]))
    elseif string.len(f[j]) <= 64 and string.len(f[j + 1]) <= 1024 then
      fields[#fields + 1] = 'f:' .. f[j]; fields[#fields + 1] = f[j + 1]
    end
  end
end
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*', unpack(fields))
redis.call('HINCRBY', KEYS[3], 'dead_lettered', 1)
if ARGV[7] == '1' then redis.call('HINCRBY', KEYS[3], 'in_flight', -1) end
return 1
"""

_ACK_ALERTS = """
local out = {}
local i = 4
for _ = 1, tonumber(ARGV[3]) do
  redis.call('SET', KEYS[tonumber(ARGV[i])], ARGV[i + 1])
  i = i + 2
end
while i <= #ARGV do
  local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
  local n = tonumber(ARGV[i + 1])
  i = i + 2
  for _ = 1, n do
    local nf = tonumber(ARGV[i])
    if acked == 1 then
      redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, i + 1, i + nf))
    end
    i = i + 1 + nf
  end
  out[#out + 1] = acked
end
return out
"""


def connect(cfg: RedisConfig, url: str, *, name: str = "streamproc") -> RedisClient:
    """A client for ``url`` (``redis://`` or ``rediss://``), single server or cluster, binary responses."""
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"Redis URL {redact(url)!r}: expected redis://, rediss:// or unix://")
    kwargs: dict[str, Any] = {
        "socket_timeout": cfg.socket_timeout_s,
        "socket_connect_timeout": min(5.0, cfg.socket_timeout_s),
        "socket_keepalive": True,
        "health_check_interval": 15,
        "client_name": f"{name}@{socket.gethostname()}",
    }
    if url.startswith("rediss://"):
        if cfg.tls_ca:
            kwargs["ssl_ca_certs"] = str(cfg.tls_ca)
        if cfg.tls_cert:
            kwargs["ssl_certfile"] = str(cfg.tls_cert)
        if cfg.tls_key:
            kwargs["ssl_keyfile"] = str(cfg.tls_key)
    try:
        if cfg.cluster:
            kwargs.pop("client_name")
            return RedisCluster.from_url(url, **kwargs)
        return redis.Redis.from_url(url, **kwargs)
    except (ValueError, TypeError) as e:  # TypeError: an option redis-py does not know, e.g. "?x=1"
        raise ConfigError(f"Redis URL {redact(url)!r}: {redact(str(e))}") from e


_ADD_COUNTERS = """
for i = 1, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""

_DELETE_IDLE_CONSUMER = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


def read_json_hash(client: RedisClient, key: str) -> dict[str, Any]:
    """A hash whose values are JSON documents (camera states, heartbeats), decoded; bad values skipped."""
    out: dict[str, Any] = {}
    for field_name, raw in cast(dict[bytes, bytes], client.hgetall(key)).items():
        try:
            out[field_name.decode()] = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
    return out


def describe_redis_error(url: str, err: Exception) -> str:
    """One line for a failure to reach Redis, credentials redacted."""
    return f"Redis at {redact(url)} is unreachable ({type(err).__name__}: {redact(str(err))})"


StreamEntry = tuple[bytes, dict[bytes, bytes]]
StreamReply = list[tuple[str, list[StreamEntry]]]


def _reply(raw: Any) -> StreamReply:
    """An XREAD/XREADGROUP reply as [(stream name, [(id, fields)])]; deleted entries have empty fields."""
    out: StreamReply = []
    for stream, entries in raw or []:
        name = stream.decode() if isinstance(stream, bytes) else str(stream)
        out.append((name, [(entry_id, fields or {}) for entry_id, fields in entries]))
    return out


@dataclass(frozen=True, slots=True)
class PendingInfo:
    entry_id: bytes
    consumer: str
    idle_ms: int
    deliveries: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one frame of a batch ends: ``field`` is the ledger counter it moves to."""

    entry_id: bytes
    camera: str
    field: str
    result: Encoded


class Streams:
    """The stream operations of all workers over one client; the only place that speaks Lua."""

    def __init__(self, client: RedisClient, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self.cluster = isinstance(client, RedisCluster)
        self._admit = client.register_script(_ADMIT)
        self._finish = client.register_script(_FINISH)
        self._dead_letter = client.register_script(_DEAD_LETTER)
        self._ack_alerts = client.register_script(_ACK_ALERTS)
        self._delete_idle_consumer = client.register_script(_DELETE_IDLE_CONSUMER)
        self._add_counters = client.register_script(_ADD_COUNTERS)

    def ensure_group(self, stream: str, group: str) -> None:
        """Create ``group`` on ``stream`` (and the stream) unless it exists; reads start at the beginning."""
        try:
            self.client.xgroup_create(stream, group, id="0", mkstream=True)
        except redis.exceptions.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    # -- typed reads ---------------------------------------------------------------------------------

    def read_group(
        self, group: str, consumer: str, positions: dict[str, bytes | str], *, count: int, block_ms: int | None
    ) -> StreamReply:
        """XREADGROUP from ``positions`` (">" for new entries, an id for our own pending ones); on a cluster
        one stream at a time (their slots differ). A group lost with Redis's data is created again."""
        try:
            if not self.cluster:
                return _reply(
                    self.client.xreadgroup(group, consumer, cast(Any, positions), count=count, block=block_ms)
                )
            out: StreamReply = []
            for name, position in positions.items():
                out += _reply(self.client.xreadgroup(group, consumer, {name: position}, count=count))
            return out
        except redis.exceptions.ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            for name in positions:
                self.ensure_group(name, group)
            return []

    def read(self, positions: dict[str, bytes | str], *, count: int, block_ms: int | None) -> StreamReply:
        """XREAD (no group) from the given positions."""
        if not self.cluster:
            return _reply(self.client.xread(cast(Any, positions), count=count, block=block_ms))
        out: StreamReply = []
        for name, position in positions.items():
            out += _reply(self.client.xread({name: position}, count=count))
        return out

    def pending_idle(self, stream: str, group: str, *, idle_ms: int, count: int) -> list[PendingInfo]:
        """Entries of ``group`` pending for at least ``idle_ms``, with owner and delivery count."""
        raw = self.client.xpending_range(stream, group, min="-", max="+", count=count, idle=idle_ms)
        return [
            PendingInfo(
                p["message_id"], p["consumer"].decode(), int(p["time_since_delivered"]), int(p["times_delivered"])
            )
            for p in cast(list[dict[str, Any]], raw)
        ]

    def claim(self, stream: str, group: str, consumer: str, *, idle_ms: int, ids: list[bytes]) -> list[StreamEntry]:
        """XCLAIM entries still idle for ``idle_ms`` (so two claimers never both get one)."""
        raw = self.client.xclaim(stream, group, consumer, idle_ms, list[Any](ids))
        return [(entry_id, fields or {}) for entry_id, fields in cast(list[Any], raw)]

    def idle_consumers(self, stream: str, group: str, idle_ms: int) -> list[str]:
        """Consumers of ``group`` idle for at least ``idle_ms`` that hold no pending entry."""
        consumers = self.client.xinfo_consumers(stream, group)
        return [
            c["name"].decode() if isinstance(c["name"], bytes) else str(c["name"])
            for c in consumers
            if int(c["pending"]) == 0 and int(c["idle"]) >= idle_ms
        ]

    def delete_consumer_if_idle(self, stream: str, group: str, consumer: str) -> bool:
        """Delete a consumer only if it holds no pending entry, atomically: XGROUP DELCONSUMER would
        otherwise make its pending entries unclaimable (redis/redis#9745)."""
        return cast(int, self._delete_idle_consumer(keys=[stream], args=[group, consumer])) == 1

    def first_entry_ms(self, stream: str) -> int | None:
        """When the oldest entry of ``stream`` was added (ms since epoch, from its id); None when empty."""
        first = cast(list[Any], self.client.xrange(stream, count=1))
        return int(first[0][0].split(b"-")[0]) if first else None

    def last_id(self, stream: str) -> bytes | str:
        """The stream's last generated id ("0" for a missing stream)."""
        if not self.client.exists(stream):
            return "0"
        return cast(bytes, self.client.xinfo_stream(stream)["last-generated-id"])

    # -- atomic writes -------------------------------------------------------------------------------

    def admit(
        self,
        camera: str,
        seq: int,
        fields: Encoded,
        *,
        mode: str,
        max_inflight: int,
        counters: dict[str, int],
        owner: str = "",
    ) -> bytes | int:
        """Publish a frame within the camera's in-flight budget, applying pending ledger ``counters``.

        Returns the entry id; 0 when a live camera's budget is full (counted as ``backlog_full``);
        -1 when a lossless camera's budget is full (nothing applied: retry later); -2 when ``owner`` is
        set and no longer holds the camera's lease (another worker runs it now: stop).
        """
        shard = self.keys.shard_of(camera)
        args: list[Any] = [max_inflight, mode, seq, owner, len(counters)]
        for name, delta in counters.items():
            args += [name, delta]
        for name, value in fields.items():
            args += [name, value]
        keys = [self.keys.frames(shard), self.keys.ledger(shard, camera), self.keys.lease(shard, camera)]
        result = self._admit(keys=keys, args=args)
        return cast(bytes | int, result)

    def in_flight(self, camera: str) -> int:
        """Frames of the camera published and not yet finished."""
        raw = self.client.hget(self.keys.ledger(self.keys.shard_of(camera), camera), "in_flight")
        return int(cast(bytes, raw)) if raw else 0

    def resume_point(self, camera: str) -> tuple[int, int]:
        """(next seq, last published seq or -1) of a camera, from its ledger: seqs never repeat, also
        when another ingest worker takes the camera over or a run starts again on the same Redis."""
        key = self.keys.ledger(self.keys.shard_of(camera), camera)
        read, last = cast(list[bytes | None], self.client.hmget(key, ["read", "last_seq"]))
        last_seq = int(last) if last is not None else -1
        return max(int(read or 0), last_seq + 1), last_seq

    def add_counters(self, camera: str, counters: dict[str, int]) -> None:
        """Apply ledger increments together, atomically (a script: MULTI is not available on a cluster)."""
        args: list[Any] = [x for name, delta in counters.items() if delta for x in (name, delta)]
        if args:
            self._add_counters(keys=[self.keys.ledger(self.keys.shard_of(camera), camera)], args=args)

    def finish(self, shard: int, outcomes: Sequence[Outcome], results_maxlen: int) -> list[bool]:
        """Ack frames of one shard and publish their results; True where this call published."""
        ledgers = sorted({o.camera for o in outcomes})
        keys = [self.keys.frames(shard), self.keys.detections(shard)]
        keys += [self.keys.ledger(shard, c) for c in ledgers]
        args: list[Any] = [FRAMES_GROUP, results_maxlen]
        for o in outcomes:
            args += [o.entry_id, 3 + ledgers.index(o.camera), o.field, 2 * len(o.result)]
            for name, value in o.result.items():
                args += [name, value]
        acked = cast(list[int], self._finish(keys=keys, args=args))
        return [a == 1 for a in acked]

    def dead_letter(
        self, shard: int, entry_id: bytes, *, camera: str | None, reason: str, deliveries: int, worker: str
    ) -> bool:
        """Move a frame entry to the shard's dead-letter stream; ``camera`` None for unattributable garbage."""
        ledger = self.keys.ledger(shard, camera or INVALID_CAMERA)
        keys = [self.keys.frames(shard), self.keys.dead(shard), ledger]
        args: list[Any] = [FRAMES_GROUP, entry_id, reason[:500], deliveries, worker, 100_000, "1" if camera else "0"]
        return cast(int, self._dead_letter(keys=keys, args=args)) == 1

    def ack_alerts(
        self,
        shard: int,
        items: Iterable[tuple[bytes, list[Encoded]]],
        states: dict[str, str],
        alerts_maxlen: int,
    ) -> list[bool]:
        """Ack detection entries, publish the alerts each caused and save the cameras' alerting state
        (``camera -> JSON``), all in one atomic step per shard: a restart resumes from exactly this point."""
        items = list(items)
        if not items and not states:
            return []
        cameras = sorted(states)
        keys = [self.keys.detections(shard), self.keys.alerts(shard)]
        keys += [self.keys.alert_state(shard, c) for c in cameras]
        args: list[Any] = [ALERTS_GROUP, alerts_maxlen, len(cameras)]
        for index, camera in enumerate(cameras):
            args += [3 + index, states[camera]]
        for entry_id, alerts in items:
            args += [entry_id, len(alerts)]
            for alert in alerts:
                args.append(2 * len(alert))
                for name, value in alert.items():
                    args += [name, value]
        acked = cast(list[int], self._ack_alerts(keys=keys, args=args))
        return [a == 1 for a in acked]

    def load_alert_state(self, camera: str) -> dict[str, Any] | None:
        raw = self.client.get(self.keys.alert_state(self.keys.shard_of(camera), camera))
        return cast(dict[str, Any], json.loads(raw)) if raw else None
