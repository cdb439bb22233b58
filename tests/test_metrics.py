"""Prometheus metrics and the liveness endpoint of a worker, over real HTTP."""

import contextlib
import urllib.request
from pathlib import Path

from streamproc.embedded_redis import RedisServer, free_port
from tests.conftest import Figures, make_clip
from tests.harness import Pipeline, check_outcome


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read().decode()


def _metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_detector_and_ingest_metrics(redis_server: RedisServer, tmp_path: Path, figures: Figures) -> None:
    clip = make_clip(tmp_path / "clip.mp4", 50)
    options = {"fps": 10, "realtime": True, "mode": "lossless"}
    p = Pipeline.create(redis_server.url, tmp_path, {"cam": str(clip)}, source_options=options)
    detect_port, ingest_port = free_port(), free_port()
    p.start("detector", "detect", args=("--metrics-port", str(detect_port)))
    p.start("alert", "alert")
    p.wait_detectors(1)
    ingest = p.start("ingest", "ingest", args=("--metrics-port", str(ingest_port)))
    scrapes = []  # the ingest worker exits when its file ends: keep its last answer
    while ingest.poll() is None:
        with contextlib.suppress(OSError):
            scrapes.append(_get(f"http://127.0.0.1:{ingest_port}/metrics")[1])
    p.wait_for("every frame processed", p.all_processed)
    last = scrapes[-1]
    read = _metric(last, 'streamproc_frames_total{camera="cam",outcome="read"}')
    sampled_out = _metric(last, 'streamproc_frames_total{camera="cam",outcome="dropped_fps_cap"}')
    published = _metric(last, 'streamproc_frames_total{camera="cam",outcome="published"}')
    assert read >= 45 and published + sampled_out <= read <= published + sampled_out + 1
    status, health = _get(f"http://127.0.0.1:{detect_port}/healthz")
    assert (status, health) == (200, "ok\n")
    _, detector = _get(f"http://127.0.0.1:{detect_port}/metrics")
    processed = _metric(detector, 'streamproc_results_total{outcome="processed"}')
    assert processed == 20
    assert _metric(detector, "streamproc_batch_size_count") >= 1
    p.wait_for("the backlog gauge to drain", lambda: _metric(_get(f"http://127.0.0.1:{detect_port}/metrics")[1],
                                                             "streamproc_backlog_frames") == 0)  # fmt: skip
    assert p.stop() == {"detector": 0, "alert": 0, "ingest": 0}
    check_outcome(p)
    figures.add("metrics", f"detector: {processed:.0f} processed; ingest (last scrape): {read:.0f} read, "
                f"{sampled_out:.0f} fps_cap, {published:.0f} published")  # fmt: skip
