"""Per-camera object tracking with Ultralytics' BYTETracker, so one object yields one alert.

One tracker per camera (``model.track`` would share one tracker across a multi-camera batch). Results
must arrive in each camera's frame order; :class:`Reorderer` restores it after parallel detectors.
"""

from __future__ import annotations

import base64
import sys
from argparse import Namespace
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from streamproc.config import TrackerConfig
from streamproc.messages import Box, Detection

T = TypeVar("T")
JSON_SCALARS = (bool, int, float, str, type(None))


@dataclass(frozen=True, slots=True)
class TrackedBox:
    """A detection with the id of the physical object it belongs to."""

    track_id: int
    cls: int
    name: str
    conf: float
    xyxy: tuple[float, float, float, float]


def one_box_per_object(boxes: tuple[Box, ...], iou_threshold: float) -> tuple[Box, ...]:
    """Class-agnostic suppression before tracking: boxes of different classes that overlap more than
    ``iou_threshold`` are one object seen two ways (a scratched part also scored as a missing corner);
    the most confident stays. Without it the tracker makes one track, and a rule one alert, per class."""
    if len(boxes) < 2:
        return boxes
    order = sorted(range(len(boxes)), key=lambda i: -boxes[i].conf)
    xyxy = np.asarray([boxes[i].xyxy for i in order], dtype=np.float64)
    area = (xyxy[:, 2] - xyxy[:, 0]) * (xyxy[:, 3] - xyxy[:, 1])
    kept: list[int] = []
    for i in range(len(order)):
        if kept:
            k = np.asarray(kept)
            inter_w = np.clip(np.minimum(xyxy[k, 2], xyxy[i, 2]) - np.maximum(xyxy[k, 0], xyxy[i, 0]), 0, None)
            inter_h = np.clip(np.minimum(xyxy[k, 3], xyxy[i, 3]) - np.maximum(xyxy[k, 1], xyxy[i, 1]), 0, None)
            inter = inter_w * inter_h
            if (inter / (area[k] + area[i] - inter + 1e-9)).max() > iou_threshold:
                continue
        kept.append(i)
    return tuple(boxes[order[i]] for i in kept)


class CameraTracker:
    """A BYTETracker whose state can be saved as JSON and restored, so a restarted alerter resumes
    exactly where the crashed one left off (same track ids, no second alert for an object)."""

    def __init__(self, cfg: TrackerConfig) -> None:
        from ultralytics.trackers.byte_tracker import BYTETracker

        self._tracker = BYTETracker(Namespace(**cfg.model_dump()))  # type: ignore[no-untyped-call]
        self.last_seq: int | None = None

    def _coast(self, frames: int) -> None:
        from ultralytics.trackers.byte_tracker import STrack

        tracker = self._tracker
        pool = [t for t in tracker.tracked_stracks if t.is_activated] + tracker.lost_stracks
        for _ in range(min(frames, tracker.max_frames_lost)):
            STrack.multi_predict(pool)
        tracker.frame_id += frames

    def snapshot(self) -> dict[str, Any]:
        """The tracker state as JSON-ready data (tracked and lost tracks, frame counter, next id)."""
        tracker = self._tracker
        next_id = next(tracker._ids)
        tracker._ids = iter(range(next_id, sys.maxsize))
        return {
            "frame_id": tracker.frame_id,
            "next_id": next_id,
            "tracked": [_track_state(t) for t in tracker.tracked_stracks],
            "lost": [_track_state(t) for t in tracker.lost_stracks],
            "last_seq": self.last_seq,
        }

    def restore(self, state: dict[str, Any]) -> None:
        tracker = self._tracker
        tracker.frame_id = int(state["frame_id"])
        tracker._ids = iter(range(int(state["next_id"]), sys.maxsize))
        tracker.tracked_stracks = [self._track(s) for s in state["tracked"]]
        tracker.lost_stracks = [self._track(s) for s in state["lost"]]
        tracker.removed_stracks = []
        self.last_seq = state.get("last_seq")

    def _track(self, state: dict[str, Any]) -> Any:
        from ultralytics.trackers.byte_tracker import STrack

        track = STrack.__new__(STrack)
        for name, value in state.items():
            setattr(track, name, _decode(value))
        setattr(track, "kalman_filter", self._tracker.kalman_filter)  # noqa: B010 (untyped upstream attributes)
        setattr(track, "next_id", self._tracker._ids.__next__)  # noqa: B010
        return track

    def update(self, detection: Detection) -> list[TrackedBox]:
        """Feed one frame's boxes; returns the boxes that belong to confirmed tracks.

        When source frames were skipped since the previous update (sampled out by an fps cap, dropped
        under load: a seq gap), the motion model first coasts over them, so a moving object is found
        where it now is instead of starting a new track.
        """
        from ultralytics.engine.results import Boxes

        if self.last_seq is not None and detection.seq - self.last_seq > 1:
            self._coast(detection.seq - self.last_seq - 1)
        self.last_seq = detection.seq
        rows = [[*b.xyxy, b.conf, b.cls] for b in detection.boxes]
        data = np.asarray(rows, dtype=np.float32).reshape(-1, 6)
        tracks = self._tracker.update(Boxes(data, (detection.height, detection.width)))
        out = []
        for row in np.asarray(tracks).reshape(-1, 8):
            box = detection.boxes[int(row[7])]
            out.append(TrackedBox(int(row[4]), box.cls, box.name, box.conf, box.xyxy))
        return out


ARRAY_DTYPES = frozenset({"float32", "float64", "int32", "int64"})
"""The dtypes a saved track array may have; anything else in a snapshot is refused on restore."""


def _encode(value: Any) -> Any:
    """Arrays as base64 of their bytes: a Kalman covariance as JSON numbers is ~3x bigger and slow to write,
    and the state is saved with every ack."""
    if isinstance(value, np.ndarray):
        data = np.ascontiguousarray(value)
        return {"nd": base64.b64encode(data.tobytes()).decode(), "dtype": str(data.dtype), "shape": data.shape}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _decode(value: Any) -> Any:
    if not (isinstance(value, dict) and "nd" in value):
        return value
    if value["dtype"] not in ARRAY_DTYPES:
        raise ValueError(f"array of dtype {value['dtype']!r} in a tracker snapshot")
    raw = base64.b64decode(value["nd"], validate=True)
    return np.frombuffer(raw, dtype=value["dtype"]).reshape(value["shape"]).copy()


def _track_state(track: Any) -> dict[str, Any]:
    """A track's plain attributes (numbers, arrays, None); its filter and id source are re-bound on restore."""
    return {
        name: _encode(value)
        for name, value in vars(track).items()
        if name not in ("kalman_filter", "next_id") and isinstance(value, (*JSON_SCALARS, np.ndarray, np.generic))
    }


@dataclass(slots=True)
class _Held(Generic[T]):
    seq: int
    prev_seq: int
    since: float
    item: T


class Reorderer(Generic[T]):
    """Releases one camera's results in seq order.

    A result is released as soon as the one before it (``prev_seq``, set by ingest) has been released,
    or after ``timeout_s`` when that one will never come (its frame was dead-lettered). Results older
    than the last released one are returned as late, for the caller to count and skip.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.last_seq: int | None = None
        self._held: list[_Held[T]] = []

    def push(self, seq: int, prev_seq: int, item: T, now: float) -> None:
        self._held.append(_Held(seq, prev_seq, now, item))
        self._held.sort(key=lambda h: h.seq)

    def pop(self, now: float) -> tuple[list[T], list[T]]:
        """(in-order results ready now, late results)."""
        ready: list[T] = []
        late: list[T] = []
        while self._held:
            head = self._held[0]
            if self.last_seq is not None and head.seq <= self.last_seq:
                late.append(self._held.pop(0).item)
                continue
            in_order = head.prev_seq == (self.last_seq if self.last_seq is not None else -1)
            if not in_order and now - head.since < self.timeout_s:
                break
            self._held.pop(0)
            self.last_seq = head.seq
            ready.append(head.item)
        return ready, late

    def __len__(self) -> int:
        return len(self._held)
