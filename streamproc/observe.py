"""Reading the pipeline from the outside: tailing streams, group progress, and the status report."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamproc.health import STALE_AFTER_S
from streamproc.keys import ALERTS_GROUP, FRAMES_GROUP, Keys
from streamproc.ledger import known_cameras, read_ledgers
from streamproc.transport import RedisClient, Streams, read_json_hash

Entry = tuple[str, bytes, dict[bytes, bytes]]


class StreamTail:
    """Follows several streams with XREAD (no consumer group: it never affects delivery)."""

    def __init__(self, streams: Streams, names: list[str], start: str = "$") -> None:
        self.streams = streams
        # "$" is pinned to the current last id, so entries added between two reads are never skipped
        self.positions: dict[str, bytes | str] = {
            name: streams.last_id(name) if start == "$" else start for name in names
        }

    def read(self, count: int = 1000, block_ms: int | None = None) -> list[Entry]:
        out: list[Entry] = []
        for name, entries in self.streams.read(self.positions, count=count, block_ms=block_ms):
            for entry_id, fields in entries:
                out.append((name, entry_id, fields))
                self.positions[name] = entry_id
        out.sort(key=lambda e: tuple(int(p) for p in e[1].split(b"-")))
        return out

    def follow(self, block_ms: int = 500) -> Iterator[Entry]:
        while True:
            yield from self.read(block_ms=block_ms)


@dataclass(frozen=True, slots=True)
class Demand:
    """The signal to scale detectors on: frames not yet finished, and how long the oldest has waited.

    Finished frames are deleted, so the frames streams' length is the backlog, exactly (unlike group
    lag, which Redis 7.0 misreports after trimming)."""

    backlog: int
    oldest_age_s: float


def frame_demand(streams: Streams) -> Demand:
    backlog, firsts = 0, []
    for name in streams.keys.all_frames():
        backlog += int(streams.client.xlen(name))
        if (first := streams.first_entry_ms(name)) is not None:
            firsts.append(first)
    oldest_age = max(0.0, time.time() - min(firsts) / 1000) if firsts else 0.0
    return Demand(backlog, round(oldest_age, 3))


def percentiles(values: list[float], qs: tuple[int, ...] = (50, 95, 99)) -> dict[str, float]:
    if not values:
        return {f"p{q}": float("nan") for q in qs}
    array = np.asarray(values, dtype=np.float64)
    return {f"p{q}": round(float(np.percentile(array, q)), 1) for q in qs}


def group_progress(client: RedisClient, stream: str, group: str) -> dict[str, Any]:
    """Pending entries, undelivered entries (lag) and the oldest pending age of one group on one stream."""
    if not client.exists(stream):
        return {"length": 0, "pending": 0, "lag": 0}
    info = client.xinfo_stream(stream)
    groups = {g["name"].decode(): g for g in client.xinfo_groups(stream)}
    length = int(info["length"])
    g = groups.get(group)
    if g is None:
        return {"length": length, "pending": 0, "lag": length}
    caught_up = g["last-delivered-id"] == info["last-generated-id"]
    lag = g.get("lag")
    return {
        "length": length,
        "pending": int(g["pending"]),
        "lag": 0 if caught_up else (int(lag) if lag is not None else None),
        "consumers": int(g["consumers"]),
    }


def pipeline_idle(client: RedisClient, keys: Keys) -> bool:
    """True when no frame waits for a detector and no result waits for the alerter."""
    for shard in range(keys.shards):
        frames = group_progress(client, keys.frames(shard), FRAMES_GROUP)
        results = group_progress(client, keys.detections(shard), ALERTS_GROUP)
        if frames["length"] or frames["pending"] or results["pending"] or results["lag"]:
            return False
    return True


def gather_status(client: RedisClient, keys: Keys) -> dict[str, Any]:
    """Everything ``streamproc status`` shows, as JSON-ready data (no credentials: URIs are stored redacted)."""
    now = time.time()
    cameras = known_cameras(client, keys)
    ledgers = read_ledgers(client, keys, cameras)
    states = read_json_hash(client, keys.camera_state)
    camera_out = {}
    for name in cameras:
        state = states.get(name, {})
        last = state.get("last_frame_wall") or 0
        camera_out[name] = {
            **ledgers[name].to_json(),
            "state": _camera_state(state, now),
            "fps": state.get("fps", 0.0),
            "last_frame_age_s": round(now - last, 2) if last else None,
            "uri": state.get("uri", ""),
            "error": state.get("error", ""),
        }
    workers = {}
    for worker_id, record in read_json_hash(client, keys.workers).items():
        record["age_s"] = round(now - float(record.get("ts", 0)), 2)
        record["alive"] = record["age_s"] < STALE_AFTER_S
        workers[worker_id] = record
    streams = {}
    for shard in range(keys.shards):
        streams[keys.frames(shard)] = group_progress(client, keys.frames(shard), FRAMES_GROUP)
        streams[keys.detections(shard)] = group_progress(client, keys.detections(shard), ALERTS_GROUP)
        streams[keys.alerts(shard)] = {"length": int(client.xlen(keys.alerts(shard)))}
        streams[keys.dead(shard)] = {"length": int(client.xlen(keys.dead(shard)))}
    return {"time": now, "cameras": camera_out, "workers": workers, "streams": streams}


def _camera_state(state: dict[str, Any], now: float) -> str:
    """online / reconnecting / offline / finished / failed; a state not refreshed for a while is offline."""
    current = str(state.get("state", "unknown"))
    if current in ("online", "reconnecting", "starting") and now - float(state.get("updated", 0)) > STALE_AFTER_S:
        return "offline"
    return current
