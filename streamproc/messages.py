"""What travels on the streams: typed, versioned messages with explicit encode/decode.

Every decode validates before anything is used: schema version, presence and type of each field,
payload size. A malformed entry raises :class:`BadMessage` with a reason code, which the worker
turns into a dead-letter entry; it never reaches pickle, eval or an unchecked buffer.
The schema is documented in docs/SCHEMA.md.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from streamproc.errors import BadMessage

SCHEMA_VERSION = "1"
CODECS = ("jpeg", "raw")
_CAMERA = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
MAX_FRAME_SIDE = 16384

Fields = Mapping[bytes, bytes]
Encoded = dict[str, str | bytes]


def _text(fields: Fields, key: str) -> str:
    raw = fields.get(key.encode())
    if raw is None:
        raise BadMessage("missing_field", key)
    try:
        return raw.decode()
    except UnicodeDecodeError as e:
        raise BadMessage("bad_field", f"{key} is not UTF-8") from e


def _int(fields: Fields, key: str, lo: int = 0, hi: int = 2**62) -> int:
    text = _text(fields, key)
    try:
        value = int(text)
    except ValueError as e:
        raise BadMessage("bad_field", f"{key}={text[:20]!r} is not an integer") from e
    if not lo <= value <= hi:
        raise BadMessage("bad_field", f"{key}={value} outside [{lo}, {hi}]")
    return value


def _float(fields: Fields, key: str) -> float:
    text = _text(fields, key)
    try:
        value = float(text)
    except ValueError as e:
        raise BadMessage("bad_field", f"{key}={text[:20]!r} is not a number") from e
    if not math.isfinite(value):
        raise BadMessage("bad_field", f"{key} is not finite")
    return value


def _camera(fields: Fields) -> str:
    camera = _text(fields, "cam")
    if not _CAMERA.match(camera):
        raise BadMessage("bad_field", f"cam={camera[:70]!r} is not a valid camera name")
    return camera


def _version(fields: Fields) -> None:
    version = fields.get(b"v")
    if version != SCHEMA_VERSION.encode():
        shown = version[:10].decode(errors="replace") if version is not None else "none"
        raise BadMessage("bad_version", f"schema version {shown!r}, expected {SCHEMA_VERSION}")


def _json(fields: Fields, key: str) -> Any:
    try:
        return json.loads(_text(fields, key))
    except json.JSONDecodeError as e:
        raise BadMessage("bad_field", f"{key} is not JSON") from e


@dataclass(frozen=True, slots=True)
class FrameHeader:
    """Which frame a message is about: frames and their results share these fields.

    ``ts`` is the capture timestamp (wall clock for live sources, seconds from the start of the file,
    derived from PTS, for files); ``wall_ts`` is the wall clock when ingest read the frame, the start of
    every latency figure. ``prev_seq`` is the seq of the camera's previous published frame (-1 for the
    first), which lets consumers restore per-camera order after parallel workers.
    """

    camera: str
    seq: int
    prev_seq: int
    ts: float
    wall_ts: float
    width: int
    height: int

    def header(self) -> dict[str, Any]:
        """The header as keyword arguments (to build a result from its frame)."""
        return {name: getattr(self, name) for name in FrameHeader.__dataclass_fields__}

    def _header_fields(self) -> Encoded:
        return {
            "v": SCHEMA_VERSION,
            "cam": self.camera,
            "seq": str(self.seq),
            "prev": str(self.prev_seq),
            "ts": repr(self.ts),
            "wall": repr(self.wall_ts),
            "w": str(self.width),
            "h": str(self.height),
        }


def _parse_header(fields: Fields) -> dict[str, Any]:
    _version(fields)
    return {
        "camera": _camera(fields),
        "seq": _int(fields, "seq"),
        "prev_seq": _int(fields, "prev", lo=-1),
        "ts": _float(fields, "ts"),
        "wall_ts": _float(fields, "wall"),
        "width": _int(fields, "w", 1, MAX_FRAME_SIDE),
        "height": _int(fields, "h", 1, MAX_FRAME_SIDE),
    }


@dataclass(frozen=True, slots=True)
class Frame(FrameHeader):
    """One encoded video frame of one camera, as published by ingest."""

    pts: int | None
    codec: str
    enc_width: int
    enc_height: int
    max_age_ms: int
    data: bytes

    def to_fields(self) -> Encoded:
        return {
            **self._header_fields(),
            "pts": "" if self.pts is None else str(self.pts),
            "codec": self.codec,
            "ew": str(self.enc_width),
            "eh": str(self.enc_height),
            "age": str(self.max_age_ms),
            "data": self.data,
        }

    @classmethod
    def from_fields(cls, fields: Fields, max_payload: int) -> Frame:
        header = _parse_header(fields)
        data = fields.get(b"data")
        if data is None:
            raise BadMessage("missing_field", "data")
        if len(data) > max_payload:
            raise BadMessage("oversized", f"payload {len(data)} bytes > limit {max_payload}")
        codec = _text(fields, "codec")
        if codec not in CODECS:
            raise BadMessage("bad_field", f"codec={codec[:20]!r}, expected one of {CODECS}")
        pts_text = _text(fields, "pts")
        return cls(
            **header,
            pts=_int(fields, "pts", lo=-(2**62)) if pts_text else None,
            codec=codec,
            enc_width=_int(fields, "ew", 1, MAX_FRAME_SIDE),
            enc_height=_int(fields, "eh", 1, MAX_FRAME_SIDE),
            max_age_ms=_int(fields, "age"),
            data=data,
        )


@dataclass(frozen=True, slots=True)
class Box:
    """One detection: class id and name, confidence, and xyxy in original-frame pixels."""

    cls: int
    name: str
    conf: float
    xyxy: tuple[float, float, float, float]

    def to_json(self) -> dict[str, Any]:
        return {
            "cls": self.cls,
            "name": self.name,
            "conf": round(self.conf, 5),
            "xyxy": [round(v, 2) for v in self.xyxy],
        }

    @classmethod
    def from_json(cls, obj: Any) -> Box:
        try:
            x1, y1, x2, y2 = (float(v) for v in obj["xyxy"])
            return cls(cls=int(obj["cls"]), name=str(obj["name"]), conf=float(obj["conf"]), xyxy=(x1, y1, x2, y2))
        except (KeyError, TypeError, ValueError) as e:
            raise BadMessage("bad_field", f"box {str(obj)[:60]} is malformed") from e


@dataclass(frozen=True, slots=True)
class Detection(FrameHeader):
    """The result for one frame: the boxes, or ``status="stale"`` when the frame was skipped as too old."""

    model: str
    status: str = "ok"
    boxes: tuple[Box, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)

    def to_fields(self) -> Encoded:
        return {
            **self._header_fields(),
            "model": self.model,
            "status": self.status,
            "boxes": json.dumps([b.to_json() for b in self.boxes], separators=(",", ":")),
            "timings": json.dumps({k: round(v, 3) for k, v in self.timings.items()}, separators=(",", ":")),
        }

    @classmethod
    def from_fields(cls, fields: Fields) -> Detection:
        header = _parse_header(fields)
        boxes = _json(fields, "boxes")
        timings = _json(fields, "timings")
        if not isinstance(boxes, list) or not isinstance(timings, dict):
            raise BadMessage("bad_field", "boxes must be a list and timings a mapping")
        return cls(
            **header,
            model=_text(fields, "model"),
            status=_text(fields, "status"),
            boxes=tuple(Box.from_json(b) for b in boxes),
            timings={str(k): float(v) for k, v in timings.items()},
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "camera": self.camera,
            "seq": self.seq,
            "ts": self.ts,
            "wall_ts": self.wall_ts,
            "width": self.width,
            "height": self.height,
            "model": self.model,
            "status": self.status,
            "boxes": [b.to_json() for b in self.boxes],
            "timings": self.timings,
        }


@dataclass(frozen=True, slots=True)
class Alert:
    """A rule firing on one tracked object."""

    camera: str
    track_id: int
    cls: int
    name: str
    conf: float
    bbox: tuple[float, float, float, float]
    seq: int
    ts: float
    wall_ts: float
    rule: str
    action: str
    latency_ms: float

    def to_fields(self) -> Encoded:
        return {
            "v": SCHEMA_VERSION,
            "cam": self.camera,
            "track": str(self.track_id),
            "cls": str(self.cls),
            "name": self.name,
            "conf": repr(round(self.conf, 5)),
            "bbox": json.dumps([round(v, 2) for v in self.bbox]),
            "seq": str(self.seq),
            "ts": repr(self.ts),
            "wall": repr(self.wall_ts),
            "rule": self.rule,
            "action": self.action,
            "latency_ms": repr(round(self.latency_ms, 2)),
        }

    @classmethod
    def from_fields(cls, fields: Fields) -> Alert:
        _version(fields)
        bbox = _json(fields, "bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4):
            raise BadMessage("bad_field", "bbox must be [x1, y1, x2, y2]")
        x1, y1, x2, y2 = (float(v) for v in bbox)
        return cls(
            camera=_camera(fields),
            track_id=_int(fields, "track"),
            cls=_int(fields, "cls"),
            name=_text(fields, "name"),
            conf=_float(fields, "conf"),
            bbox=(x1, y1, x2, y2),
            seq=_int(fields, "seq"),
            ts=_float(fields, "ts"),
            wall_ts=_float(fields, "wall"),
            rule=_text(fields, "rule"),
            action=_text(fields, "action"),
            latency_ms=_float(fields, "latency_ms"),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "camera": self.camera,
            "track_id": self.track_id,
            "cls": self.cls,
            "name": self.name,
            "conf": round(self.conf, 5),
            "bbox": [round(v, 2) for v in self.bbox],
            "seq": self.seq,
            "ts": self.ts,
            "wall_ts": self.wall_ts,
            "rule": self.rule,
            "action": self.action,
            "latency_ms": round(self.latency_ms, 2),
        }
