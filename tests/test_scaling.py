"""Scaling on this machine, with real processes: throughput from one detector to two (one inference
thread each), and the autoscaler following a burst of cameras up and back down, ledger intact."""

import time
from pathlib import Path

import yaml

from streamproc.embedded_redis import RedisServer
from tests.conftest import DEMO_ONNX, Figures, make_clip, read_report, streamproc
from tests.harness import Pipeline, check_outcome

WINDOW_S = 10.0


def _rate(p: Pipeline, seconds: float) -> float:
    """Frames processed per second over the next ``seconds``."""
    before = sum(lg.processed for lg in p.ledgers().values())
    started = time.monotonic()
    time.sleep(seconds)
    after = sum(lg.processed for lg in p.ledgers().values())
    return (after - before) / (time.monotonic() - started)


def test_second_detector_raises_throughput(redis_server: RedisServer, tmp_path: Path, figures: Figures) -> None:
    """The detector pool alone: ingest first queues every frame in Redis (lossless, so nothing is
    dropped) and the detectors then work through that backlog, one and then two of them. On two cores
    any stage running beside them (ingest's decoding, the alerter's tracking) would take its CPU from
    the detectors being measured; the autoscaling test below runs the whole pipeline."""
    clip = make_clip(tmp_path / "clip.mp4", 400, size=(640, 640))
    sources = {f"cam{i}": str(clip) for i in range(3)}
    p = Pipeline.create(redis_server.url, tmp_path, sources, detector={"threads": 1, "imgsz": 640, "max_batch": 4},
                        source_options={"max_inflight": 400})  # fmt: skip
    p.start("ingest", "ingest")
    p.wait_for("every frame queued", lambda: sum(lg.in_flight for lg in p.ledgers().values()) == 1200)
    p.start("d1", "detect")
    p.wait_detectors(1)
    p.wait_for("frames flowing", lambda: sum(lg.processed for lg in p.ledgers().values()) > 40)
    one = _rate(p, WINDOW_S)
    p.start("d2", "detect")
    p.wait_detectors(2)
    time.sleep(3.0)
    two = _rate(p, WINDOW_S)
    codes = p.stop()
    assert set(codes.values()) == {0}
    check_outcome(p)
    assert two >= 1.6 * one, f"1 detector {one:.1f} fps, 2 detectors {two:.1f} fps"
    figures.add("scaling", f"1 detector {one:.1f} frames/s, 2 detectors {two:.1f} frames/s: x{two / one:.2f}")


def test_autoscaler_follows_a_burst(tmp_path: Path, figures: Figures) -> None:
    steady = make_clip(tmp_path / "steady.mp4", 450, size=(640, 360), fps=10)  # 45 s
    burst = make_clip(tmp_path / "burst.mp4", 180, size=(640, 360), fps=15)  # 12 s
    config = {
        "sources": [{"name": "steady", "uri": str(steady), "realtime": True}]
        + [{"name": f"burst{i}", "uri": str(burst), "realtime": True} for i in range(3)],
        "detector": {"model": str(DEMO_ONNX), "imgsz": 640, "threads": 1, "max_batch": 4},
        "autoscale": {"min_workers": 1, "max_workers": 2, "up_age_s": 0.5, "down_after_s": 6, "cooldown_s": 5},
    }
    path = tmp_path / "burst.yaml"
    path.write_text(yaml.safe_dump(config))
    report_path = tmp_path / "report.json"
    started = time.time()
    result = streamproc("run", "--config", str(path), "--report", str(report_path))
    assert result.returncode == 0, result.stderr[-3000:]
    report = read_report(report_path)
    events = [(round(e["time"] - started, 1), int(e["from"]), int(e["to"])) for e in report["autoscale"]]
    assert events[0][1:] == (1, 2) and events[0][0] <= 25.0, events
    assert any(e[1:] == (2, 1) for e in events[1:]), events
    assert report["unaccounted"] == 0
    assert all(c["unaccounted"] == 0 for c in report["cameras"].values())
    figures.add("autoscale", f"events (s after start, from, to): {events}; {report['frames_processed']} processed, "
                f"dropped {report['frames_dropped']}, unaccounted 0")  # fmt: skip
