"""The whole pipeline on the two sample videos: exact counts end to end, one result per frame,
the summary, `tail` and `status`."""

import json
from pathlib import Path

from streamproc.embedded_redis import RedisServer
from tests.conftest import BOTTLE, BOTTLE_FRAMES, CAR, CAR_FRAMES, DEMO_ONNX, Figures, read_report, streamproc


def test_sample_videos_end_to_end(redis_server: RedisServer, tmp_path: Path, figures: Figures) -> None:
    report_path = tmp_path / "report.json"
    result = streamproc(
        "run", "--redis", redis_server.url, "--source", f"bottles={BOTTLE}", "--source", f"parking={CAR}",
        "--model", str(DEMO_ONNX), "--imgsz", "320", "--report", str(report_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    report = read_report(report_path)
    cams = report["cameras"]
    for name, expected in (("bottles", BOTTLE_FRAMES), ("parking", CAR_FRAMES)):
        cam = cams[name]
        assert (cam["read"], cam["processed"], cam["results"], cam["in_flight"], cam["unaccounted"]) == (
            expected, expected, expected, 0, 0,
        )  # fmt: skip
    assert report["detections"] > 0
    assert "summary: 1566 frames read, 1566 processed" in result.stdout
    figures.add(
        "pipeline",
        f"1566 frames in {report['duration_s']} s ({report['throughput_fps']} fps), {report['detections']} boxes, "
        f"latency p50 {report['latency_ms']['p50']} ms p95 {report['latency_ms']['p95']} ms",
    )

    tail = streamproc("tail", "detections", "--redis", redis_server.url, "--from-start", "--count", "5", "--json",
                      "--camera", "parking", timeout=30)  # fmt: skip
    lines = [json.loads(line) for line in tail.stdout.splitlines()]
    assert [(d["camera"], d["seq"]) for d in lines] == [("parking", i) for i in range(5)]
    assert all(d["width"] == 768 and d["height"] == 432 and d["model"] == DEMO_ONNX.name for d in lines)

    status = streamproc("status", "--redis", redis_server.url, "--json", timeout=30)
    data = json.loads(status.stdout)
    assert data["cameras"]["bottles"]["state"] == "finished"
    assert data["cameras"]["bottles"]["read"] == BOTTLE_FRAMES
    assert data["cameras"]["parking"]["dropped"] == {}
