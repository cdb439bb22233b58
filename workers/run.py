"""``streamproc run``: ingest, a detector pool and the alerter on one machine, as child processes.

The supervisor starts an embedded Redis when no URL is configured, restarts a detector or alerter
that dies, prints alerts as they are published, and - when every source is a finite file - stops the
workers once every frame is accounted for and every result has reached the alerter, then prints the
summary (and writes it as JSON with ``--report``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamproc.autoscale import Autoscaler
from streamproc.config import PipelineConfig
from streamproc.embedded_redis import RedisServer
from streamproc.ledger import known_cameras, read_ledgers
from streamproc.messages import Alert
from streamproc.model import resolve_model
from streamproc.observe import frame_demand, pipeline_idle
from streamproc.redact import redact
from streamproc.report import Collector, format_alert, format_summary, write_report
from streamproc.transport import REDIS_ERRORS, Streams, read_json_hash
from workers.common import open_streams

log = logging.getLogger("streamproc.run")

GRACE_S = 30.0
MAX_RESTARTS = 5
POLL_S = 0.2
READY_TIMEOUT_S = 120.0
AUTOSCALE_EVERY_S = 1.0


@dataclass
class Child:
    role: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    exit_code: int | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, start_new_session=True)
        self.exit_code = None

    def poll(self) -> int | None:
        if self.process is not None and self.exit_code is None:
            self.exit_code = self.process.poll()
        return self.exit_code

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)


@dataclass
class Supervisor:
    """The child processes of a run: ingest, a pool of detectors (fixed, or autoscaled), the alerter."""

    cfg: PipelineConfig
    config_file: Path
    log_level: str
    children: list[Child] = field(default_factory=list)
    retiring: list[Child] = field(default_factory=list)
    scale_events: list[dict[str, float]] = field(default_factory=list)
    _detectors_started: int = 0

    def _argv(self, role: str) -> list[str]:
        base = [sys.executable, "-m", "workers", "--log-level", self.log_level, role]
        return [*base, "--resolved-config", str(self.config_file), "--metrics-port", "0"]

    def spawn(self, streams: Streams, stop: threading.Event) -> None:
        """Start the detectors and the alerter, wait until they are ready (models loaded: live cameras
        would pile up frames meanwhile), then start ingest."""
        initial = self.cfg.autoscale.min_workers if self.cfg.autoscale else self.cfg.workers
        self.children = [Child("ingest", self._argv("ingest")), Child("alert", self._argv("alert"))]
        self.children[1].start()
        for _ in range(initial):
            self.add_detector()
        workers = [*self.detectors, self.children[1]]
        pids = {c.process.pid for c in workers if c.process is not None}
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline and not stop.wait(POLL_S):
            ready = {int(h.get("pid", 0)) for h in read_json_hash(streams.client, streams.keys.workers).values()}
            if pids <= ready or any(c.poll() is not None for c in workers):
                break
        self.ingest.start()

    @property
    def ingest(self) -> Child:
        return self.children[0]

    @property
    def detectors(self) -> list[Child]:
        return [c for c in self.children if c.role.startswith("detect")]

    def add_detector(self) -> None:
        child = Child(f"detect-{self._detectors_started}", self._argv("detect"))
        self._detectors_started += 1
        child.start()
        self.children.append(child)

    def retire_detector(self) -> None:
        """SIGTERM the newest detector: it finishes the frames in hand and exits (a graceful drain)."""
        child = self.detectors[-1]
        self.children.remove(child)
        self.retiring.append(child)
        child.terminate()

    def watch(self) -> None:
        """Restart workers (not ingest) that exited on their own; forget retired ones that have exited."""
        self.retiring = [c for c in self.retiring if c.poll() is None]
        for child in self.children[1:]:
            code = child.poll()
            if code is None or child.restarts >= MAX_RESTARTS:
                continue
            child.restarts += 1
            log.warning("%s exited with %s; restarting (%d/%d)", child.role, code, child.restarts, MAX_RESTARTS)
            child.start()

    def failed_for_good(self) -> list[str]:
        return [c.role for c in self.children[1:] if c.poll() is not None and c.restarts >= MAX_RESTARTS]

    def stop(self, grace_s: float = GRACE_S) -> None:
        everyone = self.children + self.retiring
        for child in everyone:
            child.terminate()
        deadline = time.monotonic() + grace_s
        for child in everyone:
            if child.process is None:
                continue
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s; killing it", child.role, grace_s)
                child.process.kill()
                child.process.wait()
            child.poll()


def autoscale(supervisor: Supervisor, scaler: Autoscaler, streams: Streams) -> None:
    """One autoscaling step: compare the demand with the pool and add or retire one detector."""
    beats = read_json_hash(streams.client, streams.keys.workers)
    busy_by_pid = {int(h.get("pid", 0)): float(h.get("busy", 1.0)) for h in beats.values() if h.get("kind") == "detect"}
    pool = supervisor.detectors
    busy = [busy_by_pid.get(c.process.pid if c.process else -1, 1.0) for c in pool]  # loading: count as busy
    target = scaler.target(frame_demand(streams), busy, time.monotonic())
    if target == len(pool):
        return
    supervisor.scale_events.append({"time": time.time(), "from": len(pool), "to": target})
    if target > len(pool):
        log.warning("autoscale: %d -> %d detectors (frames are waiting)", len(pool), target)
        supervisor.add_detector()
    else:
        log.warning("autoscale: %d -> %d detectors (busy %.2f)", len(pool), target, sum(busy))
        supervisor.retire_detector()


@contextlib.contextmanager
def redis_for(cfg: PipelineConfig) -> Iterator[PipelineConfig]:
    """The config with a Redis URL: the configured one, or an embedded server started for the run."""
    if cfg.redis.url:
        yield cfg
        return
    with RedisServer() as server:
        log.info("no Redis URL configured: started an embedded Redis at %s", server.url)
        yield cfg.model_copy(update={"redis": cfg.redis.model_copy(update={"url": server.url})})


@contextlib.contextmanager
def private_config_file(cfg: PipelineConfig) -> Iterator[Path]:
    """The resolved config for the children, readable by this user only (it may hold credentials)."""
    with tempfile.TemporaryDirectory(prefix="streamproc-run-") as tmp:
        path = Path(tmp) / "config.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(cfg.model_dump_json())
        yield path


def finite(cfg: PipelineConfig) -> bool:
    return all(not s.is_live and not s.loop for s in cfg.sources)


def run(
    cfg: PipelineConfig,
    *,
    report: str | None = None,
    log_level: str = "INFO",
    on_alert: Callable[[Alert], None] | None = None,
    stop: threading.Event | None = None,
) -> tuple[int, dict[str, Any]]:
    """Run the whole pipeline; returns (exit code, summary)."""
    resolve_model(cfg.detector.model)  # fail before starting anything
    stop = stop or threading.Event()
    printer = on_alert or (lambda alert: print(format_alert(alert), flush=True))
    with redis_for(cfg) as resolved, private_config_file(resolved) as config_file:
        cfg = resolved
        streams = open_streams(cfg, "supervisor")
        log.info(
            "pipeline: %d sources, %d detector(s), Redis %s", len(cfg.sources), cfg.workers, redact(cfg.redis.url or "")
        )
        collector = Collector.from_now(streams)
        supervisor = Supervisor(cfg, config_file, log_level)
        started = time.monotonic()
        supervisor.spawn(streams, stop)
        try:
            code = _supervise(cfg, supervisor, streams, collector, printer, stop)
        finally:
            supervisor.stop()
        for alert in collector.poll():
            printer(alert)
        cameras = [s.name for s in cfg.sources] or known_cameras(streams.client, streams.keys)
        summary = collector.summary(read_ledgers(streams.client, streams.keys, cameras), time.monotonic() - started)
        summary["workers"] = {c.role: {"exit_code": c.exit_code, "restarts": c.restarts} for c in supervisor.children}
        summary["autoscale"] = supervisor.scale_events
    print(format_summary(summary), flush=True)
    if report:
        write_report(report, summary)
    return code, summary


def _supervise(
    cfg: PipelineConfig,
    supervisor: Supervisor,
    streams: Streams,
    collector: Collector,
    printer: Callable[[Alert], None],
    stop: threading.Event,
) -> int:
    """Poll until done (finite sources), stopped, or a worker fails for good; returns the exit code."""
    finite_run = finite(cfg)
    scaler = Autoscaler(cfg.autoscale) if cfg.autoscale else None
    last_scale = 0.0
    while not stop.wait(POLL_S):
        try:
            for alert in collector.poll():
                printer(alert)
            supervisor.watch()
            if scaler is not None and time.monotonic() - last_scale >= AUTOSCALE_EVERY_S:
                last_scale = time.monotonic()
                autoscale(supervisor, scaler, streams)
            if supervisor.failed_for_good():
                log.error("workers keep failing: %s", ", ".join(supervisor.failed_for_good()))
                return 1
            ingest_code = supervisor.ingest.poll()
            ingest_done = ingest_code is not None and (finite_run or ingest_code != 0)
            if ingest_done and pipeline_idle(streams.client, streams.keys):
                return ingest_code or 0
        except REDIS_ERRORS as e:
            log.warning("supervisor: Redis unavailable (%s)", e)
    return 0
