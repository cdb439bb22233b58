"""The run summary: what a run read, processed, dropped, detected and alerted, and how fast."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from streamproc.errors import BadMessage
from streamproc.ledger import CameraLedger
from streamproc.messages import Alert, Detection
from streamproc.observe import StreamTail, percentiles
from streamproc.transport import Streams


@dataclass
class Collector:
    """Tails the detections and alerts streams from the start of a run and keeps the figures."""

    detections_tail: StreamTail
    alerts_tail: StreamTail
    detections: Counter[str] = field(default_factory=Counter)
    boxes: Counter[str] = field(default_factory=Counter)
    stale: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    batch_sizes: Counter[int] = field(default_factory=Counter)

    @classmethod
    def from_now(cls, streams: Streams) -> Collector:
        keys = streams.keys
        return cls(StreamTail(streams, keys.all_detections()), StreamTail(streams, keys.all_alerts()))

    def poll(self) -> list[Alert]:
        """Read what is new; returns the new alerts (for printing as they happen)."""
        for _, _, fields in self.detections_tail.read(count=5000):
            self._count_detection(fields)
        new = []
        for _, _, fields in self.alerts_tail.read(count=1000):
            try:
                new.append(Alert.from_fields(fields))
            except BadMessage:
                continue
        self.alerts += new
        return new

    def _count_detection(self, fields: dict[bytes, bytes]) -> None:
        try:
            det = Detection.from_fields(fields)
        except BadMessage:
            return
        if det.status != "ok":
            self.stale[det.camera] += 1
            return
        self.detections[det.camera] += 1
        self.boxes[det.camera] += len(det.boxes)
        self.latencies_ms.append(det.timings.get("latency_ms", 0.0))

    def summary(self, ledgers: dict[str, CameraLedger], duration_s: float) -> dict[str, Any]:
        cameras = {}
        for name, ledger in sorted(ledgers.items()):
            cameras[name] = {
                **ledger.to_json(),
                "results": self.detections[name],
                "boxes": self.boxes[name],
                "alerts": sum(1 for a in self.alerts if a.camera == name),
            }
        dropped: Counter[str] = Counter()
        for ledger in ledgers.values():
            dropped.update(ledger.dropped)
        processed = sum(lg.processed for lg in ledgers.values())
        return {
            "duration_s": round(duration_s, 2),
            "frames_read": sum(lg.read for lg in ledgers.values()),
            "frames_processed": processed,
            "frames_dropped": dict(sorted(dropped.items())),
            "frames_dead_lettered": sum(lg.dead_lettered for lg in ledgers.values()),
            "unaccounted": sum(lg.unaccounted for lg in ledgers.values()),
            "detections": sum(self.boxes.values()),
            "alerts": len(self.alerts),
            "throughput_fps": round(processed / duration_s, 2) if duration_s > 0 else 0.0,
            "latency_ms": percentiles(self.latencies_ms),
            "alert_latency_ms": percentiles([a.latency_ms for a in self.alerts]),
            "cameras": cameras,
            "alert_list": [a.to_json() for a in self.alerts],
            "finished_at": time.time(),
        }


def format_summary(summary: dict[str, Any]) -> str:
    """The human summary printed at the end of a run."""
    lines = [
        f"summary: {summary['frames_read']} frames read, {summary['frames_processed']} processed, "
        f"{sum(summary['frames_dropped'].values())} dropped {_reasons(summary['frames_dropped'])}, "
        f"{summary['frames_dead_lettered']} dead-lettered, {summary['unaccounted']} unaccounted "
        f"in {summary['duration_s']:.1f} s ({summary['throughput_fps']:.1f} frames/s)",
        f"  {'camera':<16}{'read':>8}{'processed':>11}{'dropped':>9}{'dead':>6}{'boxes':>8}{'alerts':>8}",
    ]
    for name, cam in summary["cameras"].items():
        lines.append(
            f"  {name:<16}{cam['read']:>8}{cam['processed']:>11}{sum(cam['dropped'].values()):>9}"
            f"{cam['dead_lettered']:>6}{cam['boxes']:>8}{cam['alerts']:>8}"
        )
    lat, alat = summary["latency_ms"], summary["alert_latency_ms"]
    lines.append(
        f"  latency capture->result p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms; "
        f"{summary['detections']} detections, {summary['alerts']} alerts "
        f"(capture->alert p50 {alat['p50']:.0f} ms, p95 {alat['p95']:.0f} ms)"
    )
    return "\n".join(lines)


def _reasons(dropped: dict[str, int]) -> str:
    return "(" + ", ".join(f"{k} {v}" for k, v in dropped.items()) + ")" if dropped else ""


def format_alert(alert: Alert) -> str:
    x1, y1, x2, y2 = alert.bbox
    return (
        f"ALERT {alert.action:<8} camera={alert.camera} rule={alert.rule} track={alert.track_id} "
        f"{alert.name} conf={alert.conf:.2f} seq={alert.seq} box=[{x1:.0f},{y1:.0f},{x2:.0f},{y2:.0f}] "
        f"latency={alert.latency_ms:.0f}ms"
    )


def write_report(path: str, summary: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2, default=str)
        f.write("\n")
