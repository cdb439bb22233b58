"""Messages round-trip, and malformed entries are rejected with a reason before any use."""

import pytest

from streamproc.errors import BadMessage
from streamproc.messages import Alert, Box, Detection, Frame


def _frame() -> Frame:
    return Frame(
        camera="cam1", seq=7, prev_seq=5, ts=1.25, wall_ts=1700000000.5, width=640, height=360, pts=3003,
        codec="raw", enc_width=4, enc_height=2, max_age_ms=500, data=bytes(4 * 2 * 3),
    )  # fmt: skip


def _wire(fields: dict[str, str | bytes]) -> dict[bytes, bytes]:
    return {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in fields.items()}


def test_frame_round_trip() -> None:
    frame = _frame()
    assert Frame.from_fields(_wire(frame.to_fields()), max_payload=1024) == frame


def test_detection_and_alert_round_trip() -> None:
    det = Detection("cam1", 7, 5, 1.25, 1.7e9, 640, 360, "m.onnx", "ok", (Box(1, "scratch", 0.9, (1, 2, 3, 4)),))
    assert Detection.from_fields(_wire(det.to_fields())).boxes == det.boxes
    alert = Alert("cam1", 3, 1, "scratch", 0.9, (1, 2, 3, 4), 7, 1.25, 1.7e9, "reject", "reject", 120.0)
    assert Alert.from_fields(_wire(alert.to_fields())) == alert


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"v": "2"}, "bad_version"),
        ({"seq": "seven"}, "bad_field"),
        ({"cam": "../etc"}, "bad_field"),
        ({"codec": "pickle"}, "bad_field"),
        ({"ts": "nan"}, "bad_field"),
        ({"w": "99999999"}, "bad_field"),
        ({"data": bytes(2000)}, "oversized"),
    ],
)
def test_invalid_frames_rejected(change: dict[str, str | bytes], reason: str) -> None:
    fields = {**_frame().to_fields(), **change}
    with pytest.raises(BadMessage) as err:
        Frame.from_fields(_wire(fields), max_payload=1024)
    assert err.value.reason == reason


def test_missing_field_and_garbage() -> None:
    fields = _frame().to_fields()
    del fields["seq"]
    with pytest.raises(BadMessage, match="missing_field: seq"):
        Frame.from_fields(_wire(fields), max_payload=1024)
    with pytest.raises(BadMessage, match="bad_version"):
        Frame.from_fields({b"\xff\xfe": b"\x00garbage"}, max_payload=1024)
