"""Worker heartbeats and camera states in Redis, read back by ``streamproc status``."""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from typing import Any

from streamproc.keys import Keys
from streamproc.transport import REDIS_ERRORS, RedisClient

STALE_AFTER_S = 15.0


def new_worker_id(kind: str) -> str:
    """A unique, readable id: ``detect-host-pid-abcd``."""
    return f"{kind}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"


class Heartbeat:
    """Writes ``{kind, pid, host, ts, ...}`` for one worker at most every ``interval_s`` seconds."""

    def __init__(self, client: RedisClient, keys: Keys, worker_id: str, kind: str, interval_s: float = 2.0) -> None:
        self.client = client
        self.keys = keys
        self.worker_id = worker_id
        self.kind = kind
        self.interval_s = interval_s
        self._last = 0.0

    def beat(self, **extra: Any) -> bool:
        """Record liveness if the interval has passed (True when written); Redis outages are tolerated."""
        now = time.time()
        if now - self._last < self.interval_s:
            return False
        record = {"kind": self.kind, "pid": os.getpid(), "host": socket.gethostname(), "ts": now, **extra}
        try:
            self.client.hset(self.keys.workers, self.worker_id, json.dumps(record))
            self._last = now
        except REDIS_ERRORS:
            return False
        return True

    def remove(self) -> None:
        """Forget this worker (on clean exit)."""
        try:
            self.client.hdel(self.keys.workers, self.worker_id)
        except REDIS_ERRORS:
            return
