"""Ingest: decode each camera, sample and resize, encode, and publish frames within a budget.

One thread per camera: decoding releases the GIL, and a dead or slow camera only ever blocks its own
thread. Every decoded frame is counted exactly once in the camera's ledger: published, or dropped with
a reason (``fps_cap``, ``backlog_full``, ``redis_unavailable``, ``shutdown``). Local counts travel to
Redis inside the same atomic script that publishes the next frame, so Redis's ledger always balances.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from streamproc.backoff import Backoff
from streamproc.codecs import encode
from streamproc.config import IngestConfig, SourceConfig
from streamproc.errors import SourceError
from streamproc.messages import Frame
from streamproc.metrics import FRAMES
from streamproc.redact import redact
from streamproc.sources import RawFrame, VideoSource, target_size, to_bgr
from streamproc.transport import REDIS_ERRORS, Streams

log = logging.getLogger(__name__)

STATE_EVERY_S = 1.0
COUNTERS_EVERY_S = 1.0
LOSSLESS_POLL_S = 0.002
LOSSLESS_POLL_MAX_S = 0.05


class RateLimiter:
    """Keeps frames at most ``fps`` per second of the given timestamps (None: keep all)."""

    def __init__(self, fps: float | None) -> None:
        self.interval = 1.0 / fps if fps else 0.0
        self.next_due: float | None = None

    def keep(self, ts: float) -> bool:
        if not self.interval:
            return True
        if self.next_due is not None and ts < self.next_due - 1e-4:
            return False
        behind = self.next_due is None or ts - self.next_due >= self.interval
        self.next_due = (ts if behind or self.next_due is None else self.next_due) + self.interval
        return True


@dataclass
class CameraStatus:
    """What ``streamproc status`` shows of a camera; written to Redis about once a second."""

    state: str = "starting"
    error: str = ""
    frames: int = 0
    last_frame_wall: float = 0.0
    fps: float = 0.0
    decode_errors: int = 0
    _window_start: float = field(default_factory=time.monotonic)
    _window_frames: int = 0

    def count_frame(self, now_wall: float) -> None:
        self.frames += 1
        self._window_frames += 1
        self.last_frame_wall = now_wall

    def roll(self) -> None:
        elapsed = time.monotonic() - self._window_start
        if elapsed > 0:
            self.fps = round(self._window_frames / elapsed, 2)
        self._window_start, self._window_frames = time.monotonic(), 0


class CameraIngest:
    """Runs one camera until its file ends (unless looping) or ``stop`` is set; live cameras reconnect forever."""

    def __init__(
        self,
        cfg: SourceConfig,
        ingest: IngestConfig,
        streams: Streams,
        stop: threading.Event,
        worker_id: str,
        *,
        leased: bool = False,
    ) -> None:
        self.cfg = cfg
        self.owner = worker_id if leased else ""
        self.ingest = ingest
        self.streams = streams
        self.stop = stop
        self.worker_id = worker_id
        self.mode = cfg.effective_mode
        self.max_age_ms = cfg.max_age_ms if self.mode == "live" else 0
        self.status = CameraStatus()
        self.pending: Counter[str] = Counter()
        self.seq = 0
        self.prev_seq = -1
        self._last_ts = 0.0
        self._redis_down_until = 0.0
        self._redis_backoff = Backoff(0.2, 5.0)
        self._last_state = 0.0
        self._last_counters = time.monotonic()

    # -- the camera's life ---------------------------------------------------------------------------

    def run(self) -> None:
        """Thread body: open, stream, reconnect with backoff; never raises. An unexpected error (a bug, or
        Redis refusing a command) fails this camera alone, with the reason in its state."""
        try:
            self._run()
        except Exception as e:  # the camera's thread must never die silently
            log.exception("camera %s: stopped by an unexpected error", self.cfg.name)
            self.status.error = f"{type(e).__name__}: {e}"
            self._set_state("failed")

    def _resume(self) -> bool:
        """Continue the camera's seq numbering from its ledger (waits for Redis); False if stopped first."""
        backoff = Backoff(0.2, 5.0)
        while not self.stop.is_set():
            try:
                self.seq, self.prev_seq = self.streams.resume_point(self.cfg.name)
                return True
            except REDIS_ERRORS as e:
                log.warning("camera %s: Redis unavailable (%s); waiting", self.cfg.name, e)
                backoff.wait(self.stop)
        return False

    def _run(self) -> None:
        if not self._resume():
            return
        backoff = Backoff(self.ingest.reconnect_initial_s, self.ingest.reconnect_max_s)
        while not self.stop.is_set():
            ended = self._stream_once(backoff)
            if self.stop.is_set():
                self._set_state("stopped")  # SIGTERM, not a failure of the source
                break
            if ended and not self.cfg.loop:
                self._set_state("finished")
                break
            if ended:
                continue
            if not self.cfg.is_live:
                self._set_state("failed")
                break
            self._set_state("reconnecting")
            delay = backoff.next_delay()
            log.info("camera %s: reconnecting in %.2f s (attempt %d)", self.cfg.name, delay, backoff.attempts)
            self.stop.wait(delay)
        self._flush_counters(final=True)
        self._write_state(force=True)

    def _stream_once(self, backoff: Backoff) -> bool:
        """Open the source and publish its frames; True when it ended normally, False on failure."""
        source = VideoSource(self.cfg, self.ingest.decode_threads)
        try:
            source.open()
            self._set_state("online", error="")
            log.info("%s: open (%.2f fps nominal)", source.where, source.nominal_fps or 0.0)
            pacer = _Pacer(self.cfg.realtime)
            sampler = RateLimiter(self.cfg.fps)
            for raw in source.frames():
                backoff.reset()
                if self.stop.is_set():
                    return False
                self._on_frame(raw, sampler, pacer, source.nominal_fps)
            if shortfall := source.shortfall():
                self.status.error = shortfall
                log.warning("%s", shortfall)
            return True
        except SourceError as e:
            self.status.error = str(e)
            log.error("%s", e)
            return False
        finally:
            self.status.decode_errors += source.decode_errors
            source.close()

    # -- one frame -------------------------------------------------------------------------------------

    def _timestamp(self, raw: RawFrame, nominal_fps: float | None) -> float:
        """Capture time: PTS-derived media seconds for files, monotonic wall clock for live sources."""
        if self.cfg.is_live or raw.media_ts is None:
            ts = time.time() if self.cfg.is_live else self.seq / (nominal_fps or 25.0)
        else:
            ts = raw.media_ts
        ts = max(ts, self._last_ts + 1e-6) if self.cfg.is_live else ts
        self._last_ts = ts
        return ts

    def _on_frame(self, raw: RawFrame, sampler: RateLimiter, pacer: _Pacer, nominal_fps: float | None) -> None:
        seq = self.seq
        self.seq += 1
        self._count("read")
        ts = self._timestamp(raw, nominal_fps)
        pacer.wait(ts, self.stop)
        wall = time.time()
        self.status.count_frame(wall)
        if not sampler.keep(ts):
            self._count("dropped:fps_cap")
        else:
            self._publish(self._encode(raw, seq, ts, wall))
        self._flush_counters()
        self._write_state()

    def _encode(self, raw: RawFrame, seq: int, ts: float, wall: float) -> Frame:
        size = target_size(raw.frame.width, raw.frame.height, self.cfg.max_side)
        image = to_bgr(raw, size)
        return Frame(
            camera=self.cfg.name,
            seq=seq,
            prev_seq=self.prev_seq,
            ts=ts,
            wall_ts=wall,
            pts=raw.pts,
            width=raw.frame.width,
            height=raw.frame.height,
            codec=self.ingest.codec,
            enc_width=size[0],
            enc_height=size[1],
            max_age_ms=self.max_age_ms,
            data=encode(image, self.ingest.codec, self.ingest.jpeg_quality),
        )

    def _publish(self, frame: Frame) -> None:
        """Admit the frame, waiting while a lossless camera's budget is full; count it if it cannot go."""
        fields = frame.to_fields()
        while True:
            if self.stop.is_set():
                self._count("dropped:shutdown")
                return
            if time.monotonic() < self._redis_down_until:
                self._count("dropped:redis_unavailable")
                return
            try:
                result = self.streams.admit(
                    self.cfg.name,
                    frame.seq,
                    fields,
                    mode=self.mode,
                    max_inflight=self.cfg.max_inflight,
                    counters=self.pending,
                    owner=self.owner,
                )
            except REDIS_ERRORS as e:
                self._redis_failed(e)
                continue
            self._redis_backoff.reset()
            if result == -2:  # fenced: our lease expired and another worker runs the camera now
                log.warning("camera %s: lease lost; another ingest worker runs it now", self.cfg.name)
                self._count("dropped:lease_lost")
                self.stop.set()
                return
            if result == -1:
                self._wait_for_room()
                continue
            self.pending.clear()
            self._last_counters = time.monotonic()
            if result != 0:
                self.prev_seq = frame.seq
            FRAMES.labels(self.cfg.name, "published" if result != 0 else "dropped_backlog_full").inc()
            return

    def _wait_for_room(self) -> None:
        """Lossless backpressure: poll the camera's in-flight count (a cheap read, not the frame) with a
        growing interval until the detectors have made room."""
        delay = LOSSLESS_POLL_S
        while not self.stop.wait(delay):
            try:
                if self.streams.in_flight(self.cfg.name) < self.cfg.max_inflight:
                    return
            except REDIS_ERRORS:
                return  # the next publish attempt finds out and counts it
            delay = min(2 * delay, LOSSLESS_POLL_MAX_S)

    def _count(self, outcome: str) -> None:
        """Count a frame's outcome for the ledger (sent with the next publish) and for Prometheus."""
        self.pending[outcome] += 1
        FRAMES.labels(self.cfg.name, outcome.replace(":", "_")).inc()

    def _redis_failed(self, err: Exception) -> None:
        delay = self._redis_backoff.next_delay()
        self._redis_down_until = time.monotonic() + delay
        log.warning("camera %s: Redis unavailable (%s); frames dropped for %.1f s", self.cfg.name, err, delay)

    # -- bookkeeping -----------------------------------------------------------------------------------

    def _flush_counters(self, final: bool = False) -> None:
        """Send local ledger counts that no published frame has carried yet (drops, end of stream)."""
        if not self.pending or (not final and time.monotonic() - self._last_counters < COUNTERS_EVERY_S):
            return
        deadline = time.monotonic() + (30.0 if final else 0.0)
        while True:
            try:
                self.streams.add_counters(self.cfg.name, dict(self.pending))
                self.pending.clear()
                self._last_counters = time.monotonic()
                return
            except REDIS_ERRORS as e:
                if time.monotonic() >= deadline:
                    log.warning("camera %s: ledger not flushed yet (%s)", self.cfg.name, e)
                    return
                time.sleep(0.5)

    def _set_state(self, state: str, error: str | None = None) -> None:
        self.status.state = state
        if error is not None:
            self.status.error = error
        self._write_state(force=True)

    def _write_state(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_state < STATE_EVERY_S:
            return
        self._last_state = now
        self.status.roll()
        record = {
            "state": self.status.state,
            "uri": redact(self.cfg.uri),
            "mode": self.mode,
            "worker": self.worker_id,
            "fps": self.status.fps,
            "frames": self.status.frames,
            "last_frame_wall": self.status.last_frame_wall,
            "decode_errors": self.status.decode_errors,
            "error": redact(self.status.error),
            "seq": self.seq,
            "updated": time.time(),
        }
        try:
            self.streams.client.hset(self.streams.keys.camera_state, self.cfg.name, json.dumps(record))
        except REDIS_ERRORS:
            return


class _Pacer:
    """Sleeps so that a file plays at its native rate when ``realtime`` is on."""

    def __init__(self, realtime: bool) -> None:
        self.realtime = realtime
        self.origin: tuple[float, float] | None = None

    def wait(self, ts: float, stop: threading.Event) -> None:
        if not self.realtime:
            return
        if self.origin is None:
            self.origin = (time.monotonic(), ts)
            return
        due = self.origin[0] + (ts - self.origin[1])
        delay = due - time.monotonic()
        if delay > 0:
            stop.wait(delay)
