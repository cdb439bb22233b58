"""Redis key names: one place that decides where each piece of state lives.

Cameras are hashed onto a fixed number of shards. Every key of a shard carries the same hash tag
(``sp:{s3}:frames``, ``sp:{s3}:detections``, ...), so the Lua scripts that touch several of them at once
(ack-and-publish, admit-and-count) run on Redis Cluster as well as on a single server, and a read over
all cameras touches ``shards`` keys, not one per camera.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

FRAMES_GROUP = "detectors"
ALERTS_GROUP = "alerters"
INVALID_CAMERA = "_invalid"


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "sp"
    shards: int = 4

    def shard_of(self, camera: str) -> int:
        """The shard a camera's frames, results, alerts and ledger live on (stable across processes)."""
        return zlib.crc32(camera.encode()) % self.shards

    def _shard_key(self, shard: int, name: str) -> str:
        return f"{self.prefix}:{{s{shard}}}:{name}"

    def frames(self, shard: int) -> str:
        return self._shard_key(shard, "frames")

    def detections(self, shard: int) -> str:
        return self._shard_key(shard, "detections")

    def alerts(self, shard: int) -> str:
        return self._shard_key(shard, "alerts")

    def dead(self, shard: int) -> str:
        return self._shard_key(shard, "dead")

    def ledger(self, shard: int, camera: str) -> str:
        return self._shard_key(shard, f"ledger:{camera}")

    def lease(self, shard: int, camera: str) -> str:
        """String: id of the ingest worker that runs a registry camera (with a TTL); in the camera's shard
        so that publishing a frame can check it in the same script (fencing)."""
        return self._shard_key(shard, f"lease:{camera}")

    def alert_state(self, shard: int, camera: str) -> str:
        """String: the alerter's saved tracker and rule state of a camera (JSON)."""
        return self._shard_key(shard, f"alertstate:{camera}")

    @staticmethod
    def shard_of_stream(stream: bytes | str) -> int:
        """The shard number in a shard key such as ``sp:{s3}:frames``."""
        name = stream.decode() if isinstance(stream, bytes) else stream
        return int(name.split("{s", 1)[1].split("}", 1)[0])

    def all_frames(self) -> list[str]:
        return [self.frames(s) for s in range(self.shards)]

    def all_detections(self) -> list[str]:
        return [self.detections(s) for s in range(self.shards)]

    def all_alerts(self) -> list[str]:
        return [self.alerts(s) for s in range(self.shards)]

    @property
    def cameras(self) -> str:
        """Hash: camera name -> source config JSON (the run-time registry)."""
        return f"{self.prefix}:cameras"

    @property
    def camera_state(self) -> str:
        """Hash: camera name -> state JSON written by the ingest worker that runs it."""
        return f"{self.prefix}:camstate"

    @property
    def workers(self) -> str:
        """Hash: worker id -> heartbeat JSON."""
        return f"{self.prefix}:workers"
