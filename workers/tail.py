"""``streamproc tail detections|alerts|dead``: stream entries as JSON lines."""

from __future__ import annotations

import json
from typing import Any

from streamproc.config import PipelineConfig
from streamproc.errors import BadMessage
from streamproc.keys import Keys
from streamproc.messages import Alert, Detection
from streamproc.observe import StreamTail
from workers.common import open_streams


def _streams(keys: Keys, kind: str, camera: str | None) -> list[str]:
    shards = [keys.shard_of(camera)] if camera else list(range(keys.shards))
    key = {"detections": keys.detections, "alerts": keys.alerts, "dead": keys.dead}[kind]
    return [key(s) for s in shards]


def as_json(kind: str, entry_id: bytes, fields: dict[bytes, bytes]) -> dict[str, Any]:
    """One entry as JSON; entries that fail validation are shown with their error, not hidden."""
    try:
        if kind == "detections":
            body = Detection.from_fields(fields).to_json()
        elif kind == "alerts":
            body = Alert.from_fields(fields).to_json()
        else:
            body = {k.decode(errors="replace"): v.decode(errors="replace")[:1024] for k, v in fields.items()}
    except BadMessage as e:
        body = {"invalid": str(e)}
    return {"id": entry_id.decode(), **body}


def main(cfg: PipelineConfig, kind: str, *, camera: str | None, from_start: bool, count: int | None) -> int:
    """Print entries (new ones, or all with ``from_start``) until ``count`` or Ctrl-C."""
    streams = open_streams(cfg, "tail")
    tail = StreamTail(streams, _streams(streams.keys, kind, camera), "0" if from_start else "$")
    printed = 0
    for _, entry_id, fields in tail.follow():
        record = as_json(kind, entry_id, fields)
        if camera and record.get("camera") not in (camera, None):
            continue
        print(json.dumps(record), flush=True)
        printed += 1
        if count is not None and printed >= count:
            return 0
    return 0
