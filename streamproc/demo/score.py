"""Score reject alerts from the demo line against its ground truth.

Each alert is matched to the part whose box in the alert's frame overlaps the alert's box best (IoU of at
least ``MIN_IOU``). The first alert on a defective part is a true reject, later ones on the same part are
duplicates; alerts on good parts and alerts that match no part are false rejects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np

from streamproc.demo.line import Box, LineTruth, PartTruth

MIN_IOU = 0.3


class AlertLike(Protocol):
    """The fields of a reject alert that scoring reads."""

    @property
    def seq(self) -> int:
        """Frame index (decode order) the alert was raised on."""
        ...

    @property
    def bbox(self) -> Sequence[float]:
        """``(x1, y1, x2, y2)`` in original-frame pixels."""
        ...

    @property
    def latency_ms(self) -> float: ...


Alert = AlertLike | Mapping[str, object]
"""An alert object, or a dict with keys ``seq``, ``bbox`` and ``latency_ms``."""


@dataclass(frozen=True)
class LineScore:
    defective_parts: int
    good_parts: int
    alerts: int
    true_rejects: int
    """Defective parts with at least one alert."""
    duplicate_alerts: int
    """Alerts on a defective part after its first one."""
    false_rejects: int
    """Alerts on good parts plus alerts that match no part."""
    unmatched_alerts: int
    missed_part_ids: tuple[int, ...]
    falsely_rejected_part_ids: tuple[int, ...]
    recall: float
    precision: float
    """First alerts on defective parts / all alerts (duplicates lower it too); 1.0 when there are none."""
    latency_p50_ms: float | None
    latency_p95_ms: float | None

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["missed_part_ids"] = list(self.missed_part_ids)
        data["falsely_rejected_part_ids"] = list(self.falsely_rejected_part_ids)
        return data

    def summary(self) -> str:
        """One paragraph for people."""
        latency = (
            "no alerts, so no latency"
            if self.latency_p50_ms is None
            else f"alert latency p50 {self.latency_p50_ms:.0f} ms, p95 {self.latency_p95_ms:.0f} ms"
        )
        return (
            f"{self.true_rejects} of {self.defective_parts} defective parts were rejected "
            f"(recall {self.recall:.2f}); {self.alerts} alerts in all, precision {self.precision:.2f}, "
            f"with {self.duplicate_alerts} duplicate alerts on already rejected parts and "
            f"{self.false_rejects} false rejects ({len(self.falsely_rejected_part_ids)} of "
            f"{self.good_parts} good parts alerted, {self.unmatched_alerts} alerts matching no part); "
            f"{latency}."
        )


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_part(truth: LineTruth, frame_index: int, bbox: Sequence[float]) -> PartTruth | None:
    """The part whose box in ``frame_index`` has the highest IoU with ``bbox``, if that IoU >= MIN_IOU."""
    best: tuple[float, PartTruth | None] = (MIN_IOU, None)
    for part, box in truth.parts_at(frame_index):
        overlap = iou(box, bbox)
        if overlap >= best[0]:
            best = (overlap, part)
    return best[1]


def _fields(alert: Alert) -> tuple[int, Box, float]:
    if isinstance(alert, Mapping):
        seq, bbox, latency = alert["seq"], alert["bbox"], alert["latency_ms"]
    else:
        seq, bbox, latency = alert.seq, alert.bbox, alert.latency_ms
    if not isinstance(seq, int | float) or not isinstance(latency, int | float):
        raise TypeError(f"alert seq/latency_ms must be numbers: {alert!r}")
    if not isinstance(bbox, Sequence) or len(bbox) != 4:
        raise TypeError(f"alert bbox must be (x1, y1, x2, y2): {alert!r}")
    x1, y1, x2, y2 = (float(v) for v in bbox)
    return int(seq), (x1, y1, x2, y2), float(latency)


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def score_rejects(truth: LineTruth, alerts: Sequence[Alert]) -> LineScore:
    """Score ``alerts`` (in any order) against ``truth``."""
    alerted: dict[int, int] = {}  # part_id -> alerts on it
    unmatched, latencies = 0, []
    good_ids = {p.part_id for p in truth.good}
    for alert in alerts:
        seq, bbox, latency = _fields(alert)
        latencies.append(latency)
        part = match_part(truth, seq, bbox)
        if part is None:
            unmatched += 1
        else:
            alerted[part.part_id] = alerted.get(part.part_id, 0) + 1
    defective_ids = [p.part_id for p in truth.defective]
    true_rejects = sum(1 for pid in defective_ids if pid in alerted)
    duplicates = sum(alerted[pid] - 1 for pid in defective_ids if pid in alerted)
    on_good = sum(n for pid, n in alerted.items() if pid in good_ids)
    return LineScore(
        defective_parts=len(defective_ids),
        good_parts=len(good_ids),
        alerts=len(alerts),
        true_rejects=true_rejects,
        duplicate_alerts=duplicates,
        false_rejects=on_good + unmatched,
        unmatched_alerts=unmatched,
        missed_part_ids=tuple(pid for pid in defective_ids if pid not in alerted),
        falsely_rejected_part_ids=tuple(sorted(pid for pid in alerted if pid in good_ids)),
        recall=true_rejects / len(defective_ids) if defective_ids else 1.0,
        precision=true_rejects / len(alerts) if alerts else 1.0,
        latency_p50_ms=_percentile(latencies, 50),
        latency_p95_ms=_percentile(latencies, 95),
    )
