"""The alerter: reads the detections streams, tracks objects per camera, evaluates the rules and
publishes alerts to the durable alerts streams, atomically with the ack of the detection that caused them.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

from streamproc import metrics
from streamproc.config import AlertConfig
from streamproc.errors import BadMessage
from streamproc.health import Heartbeat
from streamproc.keys import ALERTS_GROUP
from streamproc.messages import Alert, Detection, Encoded
from streamproc.rules import CameraRules
from streamproc.tracking import CameraTracker, Reorderer, one_box_per_object
from streamproc.transport import REDIS_ERRORS, Streams

log = logging.getLogger(__name__)

READ_COUNT = 256
BLOCK_MS = 100


@dataclass(frozen=True, slots=True)
class Entry:
    shard: int
    entry_id: bytes
    detection: Detection


@dataclass
class CameraAlerting:
    """Everything the alerter knows about one camera; saved with every ack so a restart resumes here."""

    shard: int
    tracker: CameraTracker
    rules: CameraRules
    order: Reorderer[Entry]

    def snapshot(self) -> str:
        state = {"tracker": self.tracker.snapshot(), "rules": self.rules.snapshot(), "last_seq": self.order.last_seq}
        return json.dumps(state, separators=(",", ":"))

    def restore(self, state: dict[str, Any]) -> None:
        self.tracker.restore(state["tracker"])
        self.rules.restore(state["rules"])
        self.order.last_seq = state["last_seq"]


@dataclass
class AckBatch:
    """Acks (with the alerts they publish) and changed camera states, gathered per shard in one step."""

    items: dict[int, list[tuple[bytes, list[Encoded]]]] = field(default_factory=lambda: defaultdict(list))
    states: dict[int, dict[str, str]] = field(default_factory=lambda: defaultdict(dict))

    def add(self, shard: int, entry_id: bytes, alerts: list[Encoded] | None = None) -> None:
        self.items[shard].append((entry_id, alerts or []))

    def shards(self) -> set[int]:
        return set(self.items) | set(self.states)


class Alerter:
    def __init__(
        self,
        cfg: AlertConfig,
        streams: Streams,
        consumer: str,
        stop: threading.Event,
        heartbeat: Heartbeat,
    ) -> None:
        self.cfg = cfg
        self.streams = streams
        self.keys = streams.keys
        self.consumer = consumer
        self.stop = stop
        self.heartbeat = heartbeat
        self.cameras: dict[str, CameraAlerting] = {}
        self.stats: Counter[str] = Counter()

    def run(self) -> None:
        for shard in range(self.keys.shards):
            self.streams.ensure_group(self.keys.detections(shard), ALERTS_GROUP)
        CameraTracker(self.cfg.tracker)  # import the tracker now, not when the first result waits for it
        self.heartbeat.beat(**self.stats)
        recovering = True  # a restart under the same name first takes back its own pending entries
        while not self.stop.is_set():
            try:
                if recovering:
                    self._recover()
                    recovering = False
                self.step()
            except REDIS_ERRORS as e:
                log.warning("alerter: Redis unavailable (%s); resuming from the saved state", e)
                self.cameras.clear()  # the saved state matches exactly what was acked
                recovering = True
                self.stop.wait(1.0)
        self._flush_held()

    def step(self) -> None:
        acks = AckBatch()
        positions: dict[str, bytes | str] = dict.fromkeys(self.keys.all_detections(), ">")
        self._read(positions, BLOCK_MS, acks)
        self._release(acks, time.monotonic())
        self._ack(acks)
        metrics.beat()
        self.heartbeat.beat(**{k: v for k, v in self.stats.items()}, cameras=len(self.cameras))

    def _recover(self) -> None:
        """Read every entry delivered to us before but never acked (before a crash or an outage)."""
        positions: dict[str, bytes | str] = dict.fromkeys(self.keys.all_detections(), "0")
        acks = AckBatch()
        while positions:
            last = self._read(positions, None, acks)
            positions = {stream: last[stream] for stream in positions if stream in last}
        self._ack(acks)

    def _read(self, positions: dict[str, bytes | str], block_ms: int | None, acks: AckBatch) -> dict[str, bytes]:
        """Read and accept entries; returns the last id read per stream."""
        replies = self.streams.read_group(ALERTS_GROUP, self.consumer, positions, count=READ_COUNT, block_ms=block_ms)
        now = time.monotonic()
        last: dict[str, bytes] = {}
        for stream, entries in replies:
            shard = self.keys.shard_of_stream(stream)
            for entry_id, fields in entries:
                self._accept(shard, entry_id, fields, acks, now)
                last[stream] = entry_id
        return last

    def _accept(self, shard: int, entry_id: bytes, fields: dict[bytes, bytes], acks: AckBatch, now: float) -> None:
        try:
            detection = Detection.from_fields(fields)
        except BadMessage as e:
            log.warning("alerter: skipping invalid detection entry %s (%s)", entry_id, e)
            self.stats["invalid"] += 1
            acks.add(shard, entry_id)
            return
        camera = self._camera(detection.camera)
        camera.order.push(detection.seq, detection.prev_seq, Entry(shard, entry_id, detection), now)

    def _fresh_camera(self, name: str) -> CameraAlerting:
        return CameraAlerting(
            shard=self.keys.shard_of(name),
            tracker=CameraTracker(self.cfg.tracker),
            rules=CameraRules(name, list(self.cfg.rules)),
            order=Reorderer(self.cfg.reorder_timeout_ms / 1000),
        )

    def _camera(self, name: str) -> CameraAlerting:
        """The camera's alerting state: resumed from its snapshot in Redis, or new."""
        if name not in self.cameras:
            camera = self._fresh_camera(name)
            state = self.streams.load_alert_state(name)
            if state is not None:
                try:
                    camera.restore(state)
                    log.info("alerter: camera %s resumes after seq %s", name, camera.order.last_seq)
                except (KeyError, TypeError, ValueError) as e:
                    log.error("alerter: saved state of camera %s is unreadable (%s); starting it afresh", name, e)
                    camera = self._fresh_camera(name)
            self.cameras[name] = camera
        return self.cameras[name]

    def _release(self, acks: AckBatch, now: float) -> None:
        for name, camera in self.cameras.items():
            ready, late = camera.order.pop(now)
            for entry in late:
                self.stats["late"] += 1
                acks.add(entry.shard, entry.entry_id)
            for entry in ready:
                acks.add(entry.shard, entry.entry_id, self._evaluate(camera, entry.detection))
            if ready:
                acks.states[camera.shard][name] = camera.snapshot()

    def _evaluate(self, camera: CameraAlerting, detection: Detection) -> list[Encoded]:
        self.stats["frames"] += 1
        if detection.status != "ok":
            return []
        objects = one_box_per_object(detection.boxes, self.cfg.merge_iou)
        boxes = camera.tracker.update(replace(detection, boxes=objects))
        now = time.time()
        firings = camera.rules.update(boxes, detection.seq, now)
        alerts = []
        for firing in firings:
            alert = Alert(
                camera=detection.camera,
                track_id=firing.box.track_id,
                cls=firing.box.cls,
                name=firing.box.name,
                conf=firing.box.conf,
                bbox=firing.box.xyxy,
                seq=detection.seq,
                ts=detection.ts,
                wall_ts=detection.wall_ts,
                rule=firing.rule.name,
                action=firing.rule.action,
                latency_ms=(now - detection.wall_ts) * 1000,
            )
            log.info(
                "ALERT %s %s track %d %s conf %.2f seq %d (%.0f ms)",
                alert.camera,
                alert.action,
                alert.track_id,
                alert.name,
                alert.conf,
                alert.seq,
                alert.latency_ms,
            )
            self.stats["alerts"] += 1
            metrics.ALERTS.labels(alert.camera, alert.rule).inc()
            alerts.append(alert.to_fields())
        return alerts

    def _ack(self, acks: AckBatch) -> None:
        for shard in acks.shards():
            self.streams.ack_alerts(shard, acks.items[shard], acks.states[shard], self.cfg.alerts_maxlen)

    def _flush_held(self) -> None:
        """On shutdown: release every held result in order, whatever it waits for."""
        try:
            acks = AckBatch()
            self._release(acks, float("inf"))
            self._ack(acks)
        except REDIS_ERRORS as e:
            log.warning("alerter: could not flush held results (%s); they stay pending", e)
