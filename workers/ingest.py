"""``streamproc ingest``: decode cameras and publish their frames.

Static cameras come from the config (``sources``); with ``--registry`` the worker also runs its share
of the cameras registered in Redis (``streamproc cameras add``), through leases (see
:mod:`streamproc.registry`).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from streamproc import metrics
from streamproc.config import PipelineConfig, SourceConfig
from streamproc.errors import StreamprocError
from streamproc.health import Heartbeat, new_worker_id
from streamproc.ingest import CameraIngest
from streamproc.keys import FRAMES_GROUP
from streamproc.registry import Placement, Running
from streamproc.transport import REDIS_ERRORS, Streams
from workers.common import open_streams, stop_on_signals

log = logging.getLogger("streamproc.ingest")

EXIT_ALL_SOURCES_FAILED = 3
CAMERA_STOP_S = 10.0


@dataclass
class CameraThread:
    camera: CameraIngest
    thread: threading.Thread
    stop: threading.Event


class Cameras:
    """The camera threads of this worker; each has its own stop event."""

    def __init__(self, cfg: PipelineConfig, streams: Streams, worker_id: str) -> None:
        self.cfg = cfg
        self.streams = streams
        self.worker_id = worker_id
        self.threads: dict[str, CameraThread] = {}

    def start(self, source: SourceConfig, *, leased: bool = False) -> CameraThread:
        stop = threading.Event()
        camera = CameraIngest(source, self.cfg.ingest, self.streams, stop, self.worker_id, leased=leased)
        thread = threading.Thread(target=camera.run, name=f"cam-{source.name}", daemon=True)
        handle = CameraThread(camera, thread, stop)
        self.threads[source.name] = handle
        thread.start()
        return handle

    def start_leased(self, source: SourceConfig) -> Running:
        """Start a registry camera. Stopping it does not wait for its thread: once the lease is released,
        the thread's next publish is refused by the lease check (fencing), so a new holder can start at once."""
        handle = self.start(source, leased=True)

        def halt() -> None:
            handle.stop.set()
            self.threads.pop(source.name, None)

        return Running(source, halt)

    def states(self) -> dict[str, str]:
        return {name: t.camera.status.state for name, t in self.threads.items()}

    def any_alive(self) -> bool:
        return any(t.thread.is_alive() for t in self.threads.values())

    def halt_all(self) -> None:
        for handle in self.threads.values():
            handle.stop.set()
        for handle in list(self.threads.values()):
            handle.thread.join(CAMERA_STOP_S)


def main(cfg: PipelineConfig, *, registry: bool = False, lease_ms: int = 5000) -> int:
    """Run until every static finite source has ended (without ``registry``), or until SIGTERM;
    exit 3 when every static source failed."""
    if not cfg.sources and not registry:
        raise StreamprocError("no sources: pass --source NAME=URI, list sources in the config, or use --registry")
    stop = stop_on_signals()
    worker_id = new_worker_id("ingest")
    streams = open_streams(cfg, worker_id)
    for shard in range(streams.keys.shards):
        streams.ensure_group(streams.keys.frames(shard), FRAMES_GROUP)
    heartbeat = Heartbeat(streams.client, streams.keys, worker_id, "ingest", interval_s=min(2.0, lease_ms / 4000))
    cameras = Cameras(cfg, streams, worker_id)
    for source in cfg.sources:
        cameras.start(source)
    placement = Placement(streams, worker_id, cameras.start_leased, lease_ms) if registry else None
    while not stop.is_set() and (placement is not None or cameras.any_alive()):
        if placement is not None:
            try:
                placement.tick()
            except REDIS_ERRORS as e:
                log.warning("ingest %s: Redis unavailable for placement (%s)", worker_id, e)
        metrics.beat()
        extra = placement.heartbeat_fields() if placement is not None else {}
        heartbeat.beat(**{"cameras": cameras.states(), **extra})
        stop.wait(min(0.5, lease_ms / 3000))
    cameras.halt_all()
    if placement is not None:
        try:
            placement.release_all()
        except REDIS_ERRORS:
            log.warning("ingest %s: could not release leases; they expire in %d ms", worker_id, lease_ms)
    heartbeat.remove()
    failed = [c.camera.cfg.name for c in cameras.threads.values() if c.camera.status.state == "failed"]
    if cfg.sources and len(failed) == len(cfg.sources) and placement is None:
        log.error("every source failed: %s", ", ".join(failed))
        return EXIT_ALL_SOURCES_FAILED
    return 0
