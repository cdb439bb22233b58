"""The per-camera ledger: where every frame a source produced went.

Identity, checked by tests and shown by ``streamproc status``::

    read == processed + sum(dropped by reason) + dead_lettered + in_flight

Each term is kept in one Redis hash per camera, changed only inside the atomic scripts of
:mod:`streamproc.transport` (and by ingest's counter flushes), so the identity holds at every moment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from streamproc.keys import Keys
from streamproc.transport import RedisClient

PREFIX_DROPPED = "dropped:"


@dataclass(frozen=True, slots=True)
class CameraLedger:
    camera: str
    read: int = 0
    published: int = 0
    processed: int = 0
    dead_lettered: int = 0
    in_flight: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    @property
    def unaccounted(self) -> int:
        """Frames read but in none of the other terms: must always be 0."""
        return self.read - self.processed - self.dropped_total - self.dead_lettered - self.in_flight

    @classmethod
    def from_hash(cls, camera: str, raw: dict[bytes, bytes]) -> CameraLedger:
        values = {k.decode(errors="replace"): int(v) for k, v in raw.items() if v.lstrip(b"-").isdigit()}
        return cls(
            camera=camera,
            read=values.get("read", 0),
            published=values.get("published", 0),
            processed=values.get("processed", 0),
            dead_lettered=values.get("dead_lettered", 0),
            in_flight=values.get("in_flight", 0),
            dropped={k.removeprefix(PREFIX_DROPPED): v for k, v in values.items() if k.startswith(PREFIX_DROPPED)},
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "published": self.published,
            "processed": self.processed,
            "dropped": dict(sorted(self.dropped.items())),
            "dead_lettered": self.dead_lettered,
            "in_flight": self.in_flight,
            "unaccounted": self.unaccounted,
        }


def read_ledgers(client: RedisClient, keys: Keys, cameras: list[str]) -> dict[str, CameraLedger]:
    """Ledgers of the given cameras (one HGETALL each, pipelined)."""
    if not cameras:
        return {}
    pipe = client.pipeline(transaction=False)
    for camera in cameras:
        pipe.hgetall(keys.ledger(keys.shard_of(camera), camera))
    return {c: CameraLedger.from_hash(c, raw) for c, raw in zip(cameras, pipe.execute(), strict=True)}


def known_cameras(client: RedisClient, keys: Keys) -> list[str]:
    """Cameras that ingest has reported on, or that are in the registry."""
    names = set(client.hkeys(keys.camera_state)) | set(client.hkeys(keys.cameras))
    return sorted(n.decode() if isinstance(n, bytes) else str(n) for n in names)
