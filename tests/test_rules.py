"""Rules fire once per tracked object after min_frames qualifying frames, inside zones, after cooldowns."""

from streamproc.config import RuleConfig
from streamproc.rules import CameraRules, in_zone
from streamproc.tracking import TrackedBox

REJECT = RuleConfig(name="reject", classes=["scratch"], min_conf=0.6, min_frames=3, action="reject")


def _box(track: int, name: str = "scratch", conf: float = 0.9, x: float = 10) -> TrackedBox:
    return TrackedBox(track, 1, name, conf, (x, 10, x + 20, 30))


def test_fires_once_per_track_on_third_qualifying_frame() -> None:
    rules = CameraRules("line", [REJECT])
    fired = [len(rules.update([_box(1)], seq, now=float(seq))) for seq in range(6)]
    assert fired == [0, 0, 1, 0, 0, 0]


def test_low_confidence_and_other_classes_do_not_count() -> None:
    rules = CameraRules("line", [REJECT])
    frames = [[_box(1, conf=0.59)], [_box(1, name="part")], [_box(1)], [_box(1)], [_box(1, conf=0.5)], [_box(1)]]
    fired = [len(rules.update(boxes, seq, now=float(seq))) for seq, boxes in enumerate(frames)]
    assert fired == [0, 0, 0, 0, 0, 1]


def test_two_objects_two_alerts_and_camera_filter() -> None:
    rules = CameraRules("line", [REJECT])
    total = sum(len(rules.update([_box(1), _box(2, x=100)], seq, now=0.0)) for seq in range(3))
    assert total == 2
    assert CameraRules("other", [REJECT.model_copy(update={"cameras": ["line"]})]).rules == []


def test_zone_and_cooldown() -> None:
    zone = [(0.0, 0.0), (50.0, 0.0), (50.0, 50.0), (0.0, 50.0)]
    assert in_zone(zone, (10, 10, 30, 30)) and not in_zone(zone, (100, 100, 120, 120))
    rule = REJECT.model_copy(update={"zones": {"line": zone}, "cooldown_s": 10.0})
    rules = CameraRules("line", [rule])
    outside = sum(len(rules.update([_box(1, x=200)], seq, now=0.0)) for seq in range(5))
    inside_a = sum(len(rules.update([_box(2)], seq, now=1.0)) for seq in range(3))
    inside_b = sum(len(rules.update([_box(3)], seq, now=2.0)) for seq in range(3))  # within the cooldown
    assert (outside, inside_a, inside_b) == (0, 1, 0)
