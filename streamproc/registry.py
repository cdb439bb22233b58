"""The camera registry and the leases through which ingest workers share its cameras.

Cameras live in the hash ``sp:cameras`` (name -> source config JSON) and change at run time with
``streamproc cameras add|remove``. Every ingest worker started with ``--registry`` runs :class:`Placement`:
it holds a lease key per camera it runs (``sp:lease:<camera>`` = its id, with a TTL), renews its leases
every third of the lease time, and takes cameras nobody holds. When a worker dies, its leases expire
and the others take its cameras over within about one lease time. Cameras are spread evenly: a worker
takes up to its fair share first, takes orphans beyond it only when nobody else does, and hands back
one camera at a time while it holds more than its share and another worker holds less.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from pydantic import ValidationError

from streamproc.config import SourceConfig
from streamproc.errors import ConfigError
from streamproc.redact import redact
from streamproc.transport import RedisClient, Streams, read_json_hash

log = logging.getLogger(__name__)

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Registry:
    """Add, remove and list cameras; every value is validated as a SourceConfig on the way in and out."""

    def __init__(self, streams: Streams) -> None:
        self.client: RedisClient = streams.client
        self.keys = streams.keys

    def add(self, source: SourceConfig) -> None:
        self.client.hset(self.keys.cameras, source.name, source.model_dump_json(exclude_defaults=True))

    def remove(self, name: str) -> bool:
        return bool(self.client.hdel(self.keys.cameras, name))

    def cameras(self) -> dict[str, SourceConfig]:
        """Registered cameras; an entry that does not validate is skipped with a warning, never run."""
        out = {}
        for name, raw in read_json_hash(self.client, self.keys.cameras).items():
            try:
                out[name] = SourceConfig.model_validate(raw)
            except ValidationError as e:
                log.warning("registry: camera %s is invalid and is not run (%s)", name, e.errors()[0]["msg"])
        return out


def parse_camera(name: str, uri: str, options: dict[str, Any]) -> SourceConfig:
    """A SourceConfig from ``cameras add`` arguments, with a one-line error."""
    try:
        return SourceConfig.model_validate({"name": name, "uri": uri, **options})
    except ValidationError as e:
        first = e.errors()[0]
        raise ConfigError(f"camera {name}: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from e


@dataclass
class Running:
    """A camera this worker runs: its config and how to stop it."""

    source: SourceConfig
    stop: Callable[[], None]


class Placement:
    """Decides which registered cameras this ingest worker runs; call :meth:`tick` about every
    ``lease_ms / 3``. ``start(source)`` starts a camera and returns its :class:`Running` handle."""

    def __init__(
        self,
        streams: Streams,
        worker_id: str,
        start: Callable[[SourceConfig], Running],
        lease_ms: int = 5000,
    ) -> None:
        self.streams = streams
        self.keys = streams.keys
        self.registry = Registry(streams)
        self.worker_id = worker_id
        self.start = start
        self.lease_ms = lease_ms
        self.running: dict[str, Running] = {}
        self._free_since: dict[str, float] = {}
        self._renew = streams.client.register_script(_RENEW)
        self._release = streams.client.register_script(_RELEASE)

    def tick(self) -> None:
        registered = self.registry.cameras()
        self._keep_leases(registered)
        peers = self._peer_loads()
        share = math.ceil(len(registered) / max(1, len(peers)))
        self._take(registered, share)
        self._hand_back(share, peers)

    def release_all(self) -> None:
        for name in list(self.running):
            self._drop(name)

    def _lease(self, name: str) -> str:
        return self.keys.lease(self.keys.shard_of(name), name)

    def _keep_leases(self, registered: dict[str, SourceConfig]) -> None:
        """Renew what we hold; stop cameras removed from the registry or changed, or whose lease we lost.

        A camera whose file ended or failed keeps its lease (and its state in ``status``) until its
        registry entry changes: it is not restarted in a loop."""
        for name, running in list(self.running.items()):
            if registered.get(name) != running.source:
                self._drop(name)
            elif not self._renew(keys=[self._lease(name)], args=[self.worker_id, self.lease_ms]):
                log.warning("ingest %s: lease of camera %s lost; stopping it", self.worker_id, name)
                running.stop()
                del self.running[name]

    def _peer_loads(self) -> dict[str, int]:
        """Cameras held per live ingest worker (this one included), from their heartbeats."""
        now = time.time()
        horizon = self.lease_ms / 1000  # workers beat every third of a lease: older means gone
        loads = {
            worker: len(record.get("cameras", {}))
            for worker, record in read_json_hash(self.streams.client, self.keys.workers).items()
            if record.get("kind") == "ingest" and record.get("registry") and now - float(record.get("ts", 0)) < horizon
        }
        loads[self.worker_id] = len(self.running)
        return loads

    def _take(self, registered: dict[str, SourceConfig], share: int) -> None:
        orphans = [name for name in sorted(registered) if name not in self.running]
        if not orphans:
            return
        pipe = self.streams.client.pipeline(transaction=False)  # one GET per key: their slots differ
        for name in orphans:
            pipe.get(self._lease(name))
        holders = cast(list[bytes | None], pipe.execute())
        free = [name for name, holder in zip(orphans, holders, strict=True) if holder is None]
        self._free_since = {n: t for n, t in self._free_since.items() if n in free}
        for name in free:
            if len(self.running) >= share and not self._orphaned_long(name):
                break
            if self.streams.client.set(self._lease(name), self.worker_id, nx=True, px=self.lease_ms):
                log.info("ingest %s: runs camera %s", self.worker_id, name)
                self._free_since.pop(name, None)
                self.running[name] = self.start(registered[name])

    def _orphaned_long(self, name: str) -> bool:
        """True when a camera has had no holder for half a lease time (counted from the first tick of
        this worker that saw it free): then anyone takes it, beyond their share."""
        seen = self._free_since.setdefault(name, time.monotonic())
        return time.monotonic() - seen > self.lease_ms / 2000

    def _hand_back(self, share: int, peers: dict[str, int]) -> None:
        """Give back one camera when over share while a peer is under it (it will take it)."""
        if len(self.running) > share and any(
            load < share for worker, load in peers.items() if worker != self.worker_id
        ):
            name = sorted(self.running)[-1]
            log.info("ingest %s: hands camera %s back for balance", self.worker_id, name)
            self._drop(name)

    def _drop(self, name: str) -> None:
        running = self.running.pop(name)
        running.stop()
        self._release(keys=[self._lease(name)], args=[self.worker_id])

    def heartbeat_fields(self) -> dict[str, Any]:
        return {"registry": True, "cameras": {name: "running" for name in self.running}}


def describe(cameras: dict[str, SourceConfig]) -> str:
    """``cameras list`` output: one camera per line, URIs redacted."""
    lines = []
    for name, src in sorted(cameras.items()):
        options = src.model_dump(exclude_defaults=True, exclude={"name", "uri"})
        lines.append(f"{name}\t{redact(src.uri)}\t{json.dumps(options)}")
    return "\n".join(lines)
