"""The detector worker: read frames of many cameras from the shard streams (consumer group), batch
them fairly, run one model call per batch, and publish one result per frame, atomically with its ack.

Delivery: at-least-once processing, at-most-once results. Frames pending on a dead consumer for
``claim_idle_ms`` are claimed by live workers; a frame delivered ``max_deliveries`` times without
being finished (it keeps killing workers) goes to the dead-letter stream, as does any entry that fails
validation. Live frames older than their ``max_age_ms`` are skipped and counted as ``stale``.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamproc import metrics
from streamproc.batching import FairBatcher
from streamproc.codecs import Image, decode
from streamproc.config import DetectorConfig
from streamproc.errors import BadMessage
from streamproc.health import Heartbeat
from streamproc.keys import FRAMES_GROUP
from streamproc.messages import Box, Detection, Frame
from streamproc.model import ModelRunner, RawBoxes
from streamproc.observe import frame_demand
from streamproc.transport import REDIS_ERRORS, Outcome, Streams

log = logging.getLogger(__name__)

IDLE_BLOCK_S = 0.25
CLEANUP_EVERY_S = 60.0
BUSY_WINDOW_S = 5.0
FAULT_POINTS = ("after_read", "during_inference", "before_publish")


@dataclass(frozen=True, slots=True)
class Fault:
    """A crash to inject for fault-tolerance tests: SIGKILL this process at ``point`` of a batch
    (optionally only a batch holding ``camera:seq``). Parsed from ``STREAMPROC_FAULT`` by the entry point."""

    point: str
    frame: tuple[str, int] | None = None
    killing: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def parse(cls, spec: str | None) -> Fault | None:
        if not spec:
            return None
        point, _, frame = spec.partition("@")
        if point not in FAULT_POINTS:
            raise ValueError(f"STREAMPROC_FAULT={spec!r}: point must be one of {FAULT_POINTS}")
        camera, _, seq = frame.partition(":")
        return cls(point, (camera, int(seq)) if frame else None)

    def hit(self, point: str, batch: list[Delivery]) -> None:
        if point == "before_publish" and self.killing.is_set():
            time.sleep(60)  # a short model call must not publish before the mid-inference kill lands
        if point != self.point:
            return
        if self.frame and not any(
            d.camera_key == self.frame[0] and d.fields.get(b"seq") == str(self.frame[1]).encode() for d in batch
        ):
            return
        log.warning("fault injection: SIGKILL at %s", point)
        if point == "during_inference":  # let the model call start, then die in the middle of it
            self.killing.set()
            threading.Timer(0.02, os.kill, (os.getpid(), signal.SIGKILL)).start()
        else:
            os.kill(os.getpid(), signal.SIGKILL)


@dataclass(slots=True)
class Delivery:
    """A frame entry delivered to this worker and not yet finished."""

    shard: int
    entry_id: bytes
    fields: dict[bytes, bytes]
    deliveries: int = 1

    @property
    def camera_key(self) -> str:
        return self.fields.get(b"cam", b"?").decode(errors="replace")


@dataclass(slots=True)
class Decoded:
    delivery: Delivery
    frame: Frame
    image: Image
    decode_ms: float


def _camera_or_none(fields: dict[bytes, bytes]) -> str | None:
    """The camera of a frame entry when the entry is valid, for charging a dead letter to its ledger."""
    try:
        return Frame.from_fields(fields, max_payload=2**62).camera
    except BadMessage:
        return None


class Detector:
    def __init__(
        self,
        cfg: DetectorConfig,
        runner: ModelRunner,
        streams: Streams,
        worker_id: str,
        stop: threading.Event,
        heartbeat: Heartbeat,
        *,
        fault: Fault | None = None,
    ) -> None:
        self.cfg = cfg
        self.fault = fault
        self.runner = runner
        self.streams = streams
        self.keys = streams.keys
        self.worker_id = worker_id
        self.stop = stop
        self.heartbeat = heartbeat
        self.batcher: FairBatcher[Delivery] = FairBatcher(cfg.max_batch, cfg.max_wait_ms / 1000, lambda d: d.camera_key)
        self.stats: Counter[str] = Counter()
        self.batch_sizes: Counter[int] = Counter()
        self._last_claim = 0.0
        self._abandoned_left = False
        self._busy: deque[tuple[float, float]] = deque()  # (end, seconds) of recent batches
        self._warned_reclaim = False
        self._last_cleanup = time.monotonic()

    # -- loop -------------------------------------------------------------------------------------------

    def run(self) -> None:
        """Work until ``stop``; then finish the frames in hand and return."""
        for shard in range(self.keys.shards):
            self.streams.ensure_group(self.keys.frames(shard), FRAMES_GROUP)
        while not self.stop.is_set():
            try:
                self._step()
            except REDIS_ERRORS as e:
                log.warning("detector %s: Redis unavailable (%s); retrying", self.worker_id, e)
                self.stop.wait(1.0)
        self._drain()

    def _step(self) -> None:
        self._forget_dead_consumers()
        if not self._recover_abandoned():
            room = 2 * self.cfg.max_batch - len(self.batcher)
            if room > 0:
                self._read(room, self.batcher.wait_time() if len(self.batcher) else IDLE_BLOCK_S)
            if self.batcher.ready():
                self.process(self.batcher.take())
        metrics.beat()
        if self.heartbeat.beat(**self.health()):
            demand = frame_demand(self.streams)
            metrics.BACKLOG.set(demand.backlog)
            metrics.OLDEST_AGE.set(demand.oldest_age_s)

    def _drain(self) -> None:
        """On shutdown: finish every frame already delivered to us, so none waits for a claim timeout."""
        while len(self.batcher):
            try:
                self.process(self.batcher.take())
            except REDIS_ERRORS as e:
                log.warning("detector %s: could not finish in-hand frames (%s)", self.worker_id, e)
                return

    def health(self) -> dict[str, Any]:
        return {
            "frames": self.stats["processed"],
            "stale": self.stats["stale"],
            "dead_lettered": self.stats["dead_lettered"],
            "reclaimed": self.stats["reclaimed"],
            "duplicates_suppressed": self.stats["duplicates_suppressed"],
            "batches": sum(self.batch_sizes.values()),
            "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
            "model": self.runner.name,
            "device": str(self.runner.device),
            "busy": round(self.busy_fraction(), 3),
        }

    def busy_fraction(self, window_s: float = BUSY_WINDOW_S) -> float:
        """Share of the last ``window_s`` seconds spent processing batches (the autoscaler's load signal)."""
        now = time.monotonic()
        while self._busy and self._busy[0][0] < now - window_s:
            self._busy.popleft()
        return min(1.0, sum(seconds for _, seconds in self._busy) / window_s)

    # -- reading ----------------------------------------------------------------------------------------

    def _read(self, count: int, block_s: float) -> None:
        positions: dict[str, bytes | str] = dict.fromkeys(self.keys.all_frames(), ">")
        replies = self.streams.read_group(
            FRAMES_GROUP, self.worker_id, positions, count=count, block_ms=max(1, int(block_s * 1000))
        )
        if self.streams.cluster and not replies:
            self.stop.wait(block_s)
        for stream, entries in replies:
            shard = self.keys.shard_of_stream(stream)
            for entry_id, fields in entries:
                self.batcher.add(Delivery(shard, entry_id, fields))

    def _recover_abandoned(self) -> bool:
        """Claim one frame abandoned by a dead consumer (or lost by us in a Redis outage) and process it
        alone; True if one was processed.

        One at a time and alone, so that a poison frame that kills its worker cannot drag the frames
        batched with it to the dead-letter stream: those are delivered once more, alone, and succeed.
        """
        now = time.monotonic()
        if not self._abandoned_left and now - self._last_claim < max(0.2, self.cfg.claim_idle_ms / 4000):
            return False
        self._last_claim = now
        for shard in range(self.keys.shards):
            delivery = self._claim_one(shard)
            if delivery is not None:
                self._abandoned_left = True
                self.process([delivery])
                return True
        self._abandoned_left = False
        return False

    def _claim_one(self, shard: int) -> Delivery | None:
        stream = self.keys.frames(shard)
        idle = self.cfg.claim_idle_ms
        held = {d.entry_id for d in self.batcher}
        for pending in self.streams.pending_idle(stream, FRAMES_GROUP, idle_ms=idle, count=4 * self.cfg.max_batch):
            if pending.entry_id in held:
                continue
            claimed = self.streams.claim(stream, FRAMES_GROUP, self.worker_id, idle_ms=idle, ids=[pending.entry_id])
            if not claimed:
                continue  # another worker was quicker
            entry_id, fields = claimed[0]
            delivery = Delivery(shard, entry_id, fields, pending.deliveries + 1)
            if delivery.deliveries > self.cfg.max_deliveries:
                reason = f"max_deliveries: delivered {pending.deliveries} times without finishing"
                self._dead_letter(delivery, _camera_or_none(fields), reason)
                continue
            log.info("detector %s: reclaimed frame %s of %s", self.worker_id, entry_id, delivery.camera_key)
            self.stats["reclaimed"] += 1
            return delivery
        return None

    def _forget_dead_consumers(self) -> None:
        """Remove consumers that are long gone and hold nothing (their entries were claimed already)."""
        now = time.monotonic()
        if now - self._last_cleanup < CLEANUP_EVERY_S:
            return
        self._last_cleanup = now
        idle_ms = max(10 * self.cfg.claim_idle_ms, 300_000)
        for stream in self.keys.all_frames():
            for consumer in self.streams.idle_consumers(stream, FRAMES_GROUP, idle_ms):
                if self.streams.delete_consumer_if_idle(stream, FRAMES_GROUP, consumer):
                    log.info("detector %s: removed idle consumer %s of %s", self.worker_id, consumer, stream)

    # -- processing ------------------------------------------------------------------------------------

    def _fault(self, point: str, batch: list[Delivery]) -> None:
        if self.fault is not None:
            self.fault.hit(point, batch)

    def process(self, batch: list[Delivery]) -> None:
        """Validate, decode, infer and finish one batch."""
        began = time.monotonic()
        try:
            self._process(batch)
        finally:
            ended = time.monotonic()
            self._busy.append((ended, ended - began))
            self._warn_if_reclaimable(ended - began)

    def _warn_if_reclaimable(self, batch_s: float) -> None:
        """Say once when batches are so slow that frames read ahead (up to two batches) stay pending on us
        for about half of ``claim_idle_ms``: past it, other detectors take them as abandoned and run them a
        second time. Measured: two one-thread detectors with 0.7 s batches and claim_idle_ms 1000 gained
        x1.2-1.6 over one instead of x2.4."""
        waited_ms = 2 * batch_s * 1000
        if self._warned_reclaim or waited_ms < self.cfg.claim_idle_ms / 2:
            return
        self._warned_reclaim = True
        log.warning("detector %s: a batch took %.0f ms, so frames read ahead wait ~%.0f ms, near "
                    "detector.claim_idle_ms (%d ms) after which other detectors re-run them; raise it to %d or more",
                    self.worker_id, batch_s * 1000, waited_ms, self.cfg.claim_idle_ms, 4 * waited_ms)  # fmt: skip

    def _process(self, batch: list[Delivery]) -> None:
        self._fault("after_read", batch)
        started = time.time()
        outcomes: list[tuple[int, Outcome]] = []
        ready: list[Decoded] = []
        for delivery in batch:
            item = self._prepare(delivery, started, outcomes)
            if item is not None:
                ready.append(item)
        t0 = time.perf_counter()
        self._fault("during_inference", batch)
        boxes = self._infer(ready)
        infer_ms = (time.perf_counter() - t0) * 1000
        if ready:
            self.batch_sizes[len(ready)] += 1
            metrics.BATCH_SIZE.observe(len(ready))
            metrics.INFERENCE_SECONDS.observe(infer_ms / 1000)
        for item, rows in zip(ready, boxes, strict=True):
            if rows is None:
                continue
            outcomes.append((item.delivery.shard, self._result(item, rows, started, infer_ms, len(ready))))
        self._fault("before_publish", batch)
        self._finish(outcomes)

    def _prepare(self, delivery: Delivery, now: float, outcomes: list[tuple[int, Outcome]]) -> Decoded | None:
        """Parse and decode a delivery; stale and invalid ones are settled here and return None."""
        try:
            frame = Frame.from_fields(delivery.fields, self.cfg.max_payload_bytes)
        except BadMessage as e:
            self._dead_letter(delivery, None, str(e))
            return None
        age_ms = (now - frame.wall_ts) * 1000
        if frame.max_age_ms and age_ms > frame.max_age_ms:
            stale = self._detection(frame, status="stale", boxes=(), timings={"age_ms": age_ms})
            outcome = Outcome(delivery.entry_id, frame.camera, "dropped:stale", stale.to_fields())
            outcomes.append((delivery.shard, outcome))
            return None
        t0 = time.perf_counter()
        try:
            image = decode(frame.data, frame.codec, frame.enc_width, frame.enc_height)
        except BadMessage as e:
            self._dead_letter(delivery, frame.camera, str(e))
            return None
        return Decoded(delivery, frame, image, (time.perf_counter() - t0) * 1000)

    def _infer(self, ready: list[Decoded]) -> list[RawBoxes | None]:
        """One model call for the batch; if it fails, frame by frame, dead-lettering the ones that fail."""
        if not ready:
            return []
        try:
            return list(self.runner.infer([d.image for d in ready]))
        except Exception as e:  # isolate the frame that breaks the model
            log.warning("detector %s: batch of %d failed (%s); retrying frame by frame", self.worker_id, len(ready), e)
        results: list[RawBoxes | None] = []
        for item in ready:
            try:
                results.append(self.runner.infer([item.image])[0])
            except Exception as e:  # a poison frame: dead-letter it, keep the rest
                self._dead_letter(item.delivery, item.frame.camera, f"inference_error: {type(e).__name__}: {e}")
                results.append(None)
        return results

    def _result(self, item: Decoded, rows: RawBoxes, started: float, infer_ms: float, batch: int) -> Outcome:
        frame = item.frame
        sx, sy = frame.width / frame.enc_width, frame.height / frame.enc_height
        names = self.runner.names
        boxes = tuple(
            Box(int(c), names.get(int(c), str(int(c))), float(conf), (x1 * sx, y1 * sy, x2 * sx, y2 * sy))
            for c, conf, x1, y1, x2, y2 in rows.astype(np.float64).tolist()
        )
        timings = {
            "wait_ms": (started - frame.wall_ts) * 1000,
            "decode_ms": item.decode_ms,
            "infer_ms": infer_ms,
            "batch": float(batch),
            "latency_ms": (time.time() - frame.wall_ts) * 1000,
        }
        detection = self._detection(frame, status="ok", boxes=boxes, timings=timings)
        return Outcome(item.delivery.entry_id, frame.camera, "processed", detection.to_fields())

    def _detection(self, frame: Frame, *, status: str, boxes: tuple[Box, ...], timings: dict[str, float]) -> Detection:
        return Detection(
            **frame.header(),
            model=self.runner.name,
            status=status,
            boxes=boxes,
            timings=timings,
        )

    def _finish(self, outcomes: list[tuple[int, Outcome]]) -> None:
        by_shard: dict[int, list[Outcome]] = defaultdict(list)
        for shard, outcome in outcomes:
            by_shard[shard].append(outcome)
        for shard, items in by_shard.items():
            published = self.streams.finish(shard, items, self.cfg.results_maxlen)
            now = time.time()
            for o, ok in zip(items, published, strict=True):
                key = ("processed" if o.field == "processed" else "stale") if ok else "duplicates_suppressed"
                self.stats[key] += 1
                metrics.RESULTS.labels(key).inc()
                if ok and key == "processed":
                    metrics.LATENCY_SECONDS.observe(now - float(o.result["wall"]))

    def _dead_letter(self, delivery: Delivery, camera: str | None, reason: str) -> None:
        log.warning("detector %s: dead-lettering %s (%s)", self.worker_id, delivery.entry_id, reason)
        moved = self.streams.dead_letter(
            delivery.shard,
            delivery.entry_id,
            camera=camera,
            reason=reason,
            deliveries=delivery.deliveries,
            worker=self.worker_id,
        )
        if moved:
            self.stats["dead_lettered"] += 1
            metrics.RESULTS.labels("dead_lettered").inc()
