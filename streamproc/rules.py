"""Alert rules over tracked objects: "reject the part: defect seen with conf >= 0.6 on 3 frames".

A rule counts, per tracked object, the frames on which the object was one of the rule's classes with at
least ``min_conf`` (inside the camera's zone, if the rule has one). When the count reaches
``min_frames`` the rule fires once for that object, unless the rule is cooling down on that camera.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from streamproc.config import RuleConfig
from streamproc.tracking import TrackedBox

FORGET_AFTER_FRAMES = 1000  # state of a track unseen for this many frames is dropped


@dataclass(frozen=True, slots=True)
class Firing:
    rule: RuleConfig
    box: TrackedBox


def in_zone(polygon: list[tuple[float, float]], xyxy: tuple[float, float, float, float]) -> bool:
    """True when the box centre lies inside (or on) the polygon."""
    x1, y1, x2, y2 = xyxy
    contour = np.asarray(polygon, dtype=np.float32).reshape(-1, 1, 2)
    return cv2.pointPolygonTest(contour, ((x1 + x2) / 2, (y1 + y2) / 2), False) >= 0


@dataclass
class CameraRules:
    """Rule state for one camera: frame counts per (rule, track) and what already fired."""

    camera: str
    rules: list[RuleConfig]
    hits: Counter[tuple[str, int]] = field(default_factory=Counter)
    fired: set[tuple[str, int]] = field(default_factory=set)
    last_fired: dict[str, float] = field(default_factory=dict)
    last_seen: dict[int, int] = field(default_factory=dict)
    last_cleanup: int = 0

    def __post_init__(self) -> None:
        self.rules = [r for r in self.rules if r.cameras is None or self.camera in r.cameras]

    def update(self, boxes: list[TrackedBox], seq: int, now: float) -> list[Firing]:
        if seq - self.last_cleanup >= FORGET_AFTER_FRAMES:
            self.forget_before(seq - FORGET_AFTER_FRAMES)
            self.last_cleanup = seq
        firings = []
        for box in boxes:
            self.last_seen[box.track_id] = seq
            for rule in self.rules:
                if self._counts(rule, box) and self._fires(rule, box, now):
                    firings.append(Firing(rule, box))
        return firings

    def _counts(self, rule: RuleConfig, box: TrackedBox) -> bool:
        if box.name not in rule.classes or box.conf < rule.min_conf:
            return False
        zone = rule.zones.get(self.camera)
        return zone is None or in_zone(zone, box.xyxy)

    def _fires(self, rule: RuleConfig, box: TrackedBox, now: float) -> bool:
        key = (rule.name, box.track_id)
        self.hits[key] += 1
        if key in self.fired or self.hits[key] < rule.min_frames:
            return False
        if now - self.last_fired.get(rule.name, float("-inf")) < rule.cooldown_s:
            return False
        self.fired.add(key)
        self.last_fired[rule.name] = now
        return True

    def snapshot(self) -> dict[str, Any]:
        return {
            "hits": [[rule, track, n] for (rule, track), n in self.hits.items()],
            "fired": [[rule, track] for rule, track in sorted(self.fired)],
            "last_fired": self.last_fired,
            "last_seen": [[track, seq] for track, seq in self.last_seen.items()],
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.hits = Counter({(str(r), int(t)): int(n) for r, t, n in state["hits"]})
        self.fired = {(str(r), int(t)) for r, t in state["fired"]}
        self.last_fired = {str(k): float(v) for k, v in state["last_fired"].items()}
        self.last_seen = {int(t): int(s) for t, s in state["last_seen"]}

    def forget_before(self, seq: int) -> None:
        """Drop state of tracks not seen since ``seq`` (bounded memory over days of running)."""
        gone = {t for t, s in self.last_seen.items() if s < seq}
        if not gone:
            return
        for t in gone:
            del self.last_seen[t]
        self.hits = Counter({k: v for k, v in self.hits.items() if k[1] not in gone})
        self.fired = {k for k in self.fired if k[1] not in gone}
