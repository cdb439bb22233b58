"""``streamproc status``: the ledger per camera, camera states, workers and their heartbeats, streams."""

from __future__ import annotations

import json
from typing import Any

from streamproc.config import PipelineConfig
from streamproc.observe import gather_status
from workers.common import open_streams


def format_status(status: dict[str, Any]) -> str:
    lines = [
        f"{'camera':<16}{'state':<14}{'fps':>6}{'age s':>7}{'read':>8}{'proc':>8}{'dropped':>9}"
        f"{'dead':>6}{'flight':>7}{'lost':>6}"
    ]
    for name, c in status["cameras"].items():
        age = "-" if c["last_frame_age_s"] is None else f"{c['last_frame_age_s']:.1f}"
        lines.append(
            f"{name:<16}{c['state']:<14}{c['fps']:>6.1f}{age:>7}{c['read']:>8}{c['processed']:>8}"
            f"{sum(c['dropped'].values()):>9}{c['dead_lettered']:>6}{c['in_flight']:>7}{c['unaccounted']:>6}"
        )
        if c["error"]:
            lines.append(f"  last error: {c['error']}")
    lines.append("")
    lines.append(f"{'worker':<44}{'kind':<8}{'alive':<7}{'age s':>7}")
    for worker_id, w in status["workers"].items():
        lines.append(f"{worker_id:<44}{w['kind']:<8}{'yes' if w['alive'] else 'NO':<7}{w['age_s']:>7.1f}")
    lines.append("")
    lines.append(f"{'stream':<32}{'length':>8}{'pending':>9}{'lag':>6}")
    for name, s in status["streams"].items():
        lines.append(f"{name:<32}{s['length']:>8}{s.get('pending', ''):>9}{s.get('lag', '')!s:>6}")
    return "\n".join(lines)


def main(cfg: PipelineConfig, *, as_json: bool) -> int:
    streams = open_streams(cfg, "status")
    status = gather_status(streams.client, streams.keys)
    print(json.dumps(status, indent=2) if as_json else format_status(status))
    return 0
