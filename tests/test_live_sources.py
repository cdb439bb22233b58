"""Live RTSP cameras that go away and come back, and that stall without closing (half-open), through
real worker processes: ingest reconnects with jittered exponential backoff, forever; the camera shows as
reconnecting; seq and ts stay monotonic; the other camera never stalls. Each test checks the ledger
identity and that no (camera, seq) has two results, and records its counts.

The RTSP cameras are GStreamer's RTSP server (tests/rtsp_server.py, see tests/live.py and
docs/TESTING.md); the Debian packages come from scripts/install-test-deps.sh.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from streamproc.backoff import Backoff
from streamproc.config import IngestConfig, RedisConfig, SourceConfig
from streamproc.embedded_redis import RedisServer
from streamproc.ingest import CameraIngest
from streamproc.ledger import CameraLedger, read_ledgers
from streamproc.messages import Detection
from streamproc.observe import gather_status
from streamproc.transport import Streams, connect
from tests.conftest import DEMO_ONNX, Figures, make_clip
from tests.harness import KEYS, Pipeline, check_outcome
from tests.live import RtspServer, StallingProxy, require_gst_rtsp

OPEN_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 2.0
RECONNECT_INITIAL_S = 0.2
RECONNECT_MAX_S = 1.0
FPS_CAP = 5.0  # frames kept per camera per second: light work for a CPU detector on a busy machine
MAX_GAP_S = 1.0  # the longest wait between two frames of a healthy camera while another one is down


@pytest.fixture(scope="module")
def gst_rtsp() -> None:
    """Skips a test when GStreamer's RTSP server is not installed (scripts/install-test-deps.sh)."""
    require_gst_rtsp()


def _clip(tmp_path: Path) -> Path:
    return make_clip(tmp_path / "clip.mp4", 100, size=(320, 240), fps=25)  # 4 s, looped by the server


@pytest.fixture
def pipelines() -> Iterator[list[Pipeline]]:
    """Pipelines a test starts; any worker still running when the test ends (it failed) is killed."""
    started: list[Pipeline] = []
    yield started
    for pipeline in started:
        for proc in pipeline.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def _pipeline(redis_url: str, tmp_path: Path, sources: dict[str, str], started: list[Pipeline]) -> Pipeline:
    source_options = {
        "open_timeout_s": OPEN_TIMEOUT_S,
        "read_timeout_s": READ_TIMEOUT_S,
        "fps": FPS_CAP,
        "max_inflight": 16,
    }
    config = {
        "redis": {"url": redis_url},
        "ingest": {"reconnect_initial_s": RECONNECT_INITIAL_S, "reconnect_max_s": RECONNECT_MAX_S},
        "sources": [{"name": n, "uri": u, **source_options} for n, u in sources.items()],
        "detector": {
            "model": str(DEMO_ONNX) if DEMO_ONNX.exists() else "yolo26n.yaml",
            "imgsz": 320,
            "claim_idle_ms": 1000,
        },
    }
    path = tmp_path / "streamproc.yaml"
    path.write_text(yaml.safe_dump(config))
    pipeline = Pipeline(redis_url, tmp_path, path, list(sources))
    started.append(pipeline)
    pipeline.start("detect", "detect")
    pipeline.start("alert", "alert")
    pipeline.wait_detectors(1)
    pipeline.start("ingest", "ingest")
    return pipeline


class Watch:
    """Reads a pipeline from the outside: camera states (``streamproc status``) and results per camera."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.client = redis.Redis.from_url(pipeline.redis_url)

    def state(self, camera: str) -> dict[str, Any]:
        camera_status: dict[str, Any] = gather_status(self.client, KEYS)["cameras"].get(camera, {})
        return camera_status

    def results(self, camera: str) -> list[Detection]:
        """The camera's results on the detections streams, in seq order."""
        stream = KEYS.detections(KEYS.shard_of(camera))
        found = (Detection.from_fields(fields) for _, fields in self.client.xrange(stream))
        return sorted((d for d in found if d.camera == camera), key=lambda d: d.seq)

    def frames_after(self, camera: str, wall: float) -> int:
        return sum(d.wall_ts > wall for d in self.results(camera))

    def wait(self, what: str, condition: Callable[[], bool], timeout: float = 30.0) -> float:
        return self.pipeline.wait_for(what, condition, timeout=timeout)


class StateSampler:
    """Samples a camera's status state every 0.1 s in the background (what an operator would see)."""

    def __init__(self, watch: Watch, camera: str) -> None:
        self.watch = watch
        self.camera = camera
        self.samples: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        client = redis.Redis.from_url(self.watch.pipeline.redis_url)
        while not self._stop.is_set():
            state = gather_status(client, KEYS)["cameras"].get(self.camera, {}).get("state", "")
            self.samples.append((time.time(), state))
            self._stop.wait(0.1)
        client.close()

    def stop(self) -> list[tuple[float, str]]:
        self._stop.set()
        self._thread.join()
        return self.samples


def _max_gap(results: list[Detection], start: float, end: float) -> float:
    """Longest wait between consecutive frames (their ingest wall times) that covers [start, end]."""
    walls = [d.wall_ts for d in results]
    inside = [w for w in walls if start <= w <= end]
    before = [w for w in walls if w < start][-1:]
    after = [w for w in walls if w > end][:1]
    span = before + inside + after
    assert before and after, "the healthy camera's frames do not cover the whole outage"
    return max(b - a for a, b in pairwise(span))


def _assert_monotonic(results: list[Detection], split: float) -> tuple[int, int]:
    """seq and ts strictly increasing over the whole run, with frames on both sides of ``split``."""
    seqs = [d.seq for d in results]
    stamps = [d.ts for d in results]
    assert seqs == sorted(set(seqs))
    assert all(a < b for a, b in pairwise(stamps)), "ts went backwards"
    before = [d for d in results if d.wall_ts < split]
    after = [d for d in results if d.wall_ts > split]
    assert before and after
    assert max(d.seq for d in before) < min(d.seq for d in after)
    assert max(d.ts for d in before) < min(d.ts for d in after)
    return len(before), len(after)


def _counts(ledgers: dict[str, CameraLedger]) -> str:
    return "; ".join(
        f"{c}: read {lg.read}, processed {lg.processed}, dropped {lg.dropped_total} "
        f"({', '.join(f'{k} {v}' for k, v in sorted(lg.dropped.items())) or 'none'}), "
        f"in flight {lg.in_flight}, unaccounted {lg.unaccounted}"
        for c, lg in sorted(ledgers.items())
    )


RECONNECT_LINE = re.compile(r"camera (\S+): reconnecting in ([\d.]+) s \(attempt (\d+)\)")


def _reconnect_delays(log: str, camera: str) -> list[tuple[int, float]]:
    return [(int(n), float(d)) for cam, d, n in RECONNECT_LINE.findall(log) if cam == camera]


def _assert_backoff(delays: list[tuple[int, float]]) -> None:
    """Attempt n waits uniformly in [D/2, D] with D = min(max, initial * 2**(n-1)), numbered from 1."""
    assert [n for n, _ in delays] == list(range(1, len(delays) + 1)), delays
    for n, delay in delays:
        ceiling = min(RECONNECT_MAX_S, RECONNECT_INITIAL_S * 2 ** (n - 1))
        assert ceiling / 2 - 0.01 <= delay <= ceiling + 0.01, (n, delay)


def test_backoff_is_exponential_with_jitter_and_resets() -> None:
    backoff = Backoff(0.2, 1.0, rng=random.Random(7))
    runs = []
    for _ in range(200):  # 200 outages of 8 attempts each
        backoff.reset()
        runs.append([backoff.next_delay() for _ in range(8)])
    for delays in runs:
        for n, delay in enumerate(delays):
            ceiling = min(1.0, 0.2 * 2**n)
            assert ceiling / 2 <= delay <= ceiling
    by_attempt = list(zip(*runs, strict=True))
    means = [sum(d) / len(d) for d in by_attempt]
    assert means[0] < means[1] < means[2] < means[3]  # exponential growth ...
    assert abs(means[-1] - 0.75) < 0.05  # ... up to the cap, drawn from [max/2, max]
    assert all(len({round(d, 6) for d in column}) > 150 for column in by_attempt)  # jittered, not lock-step


def test_stopping_a_camera_is_not_a_failure(redis_server: RedisServer, tmp_path: Path) -> None:
    """SIGTERM stops a camera that plays as live: its state is ``stopped``, not ``failed`` (an ingest
    worker whose cameras all failed exits 3, a stopped one exits 0), and its ledger balances."""
    streams = Streams(connect(RedisConfig(), redis_server.url), KEYS)
    source = SourceConfig(name="paced", uri=str(_clip(tmp_path)), realtime=True, loop=True, max_inflight=1000)
    stop = threading.Event()
    camera = CameraIngest(source, IngestConfig(), streams, stop, "t")
    thread = threading.Thread(target=camera.run)
    thread.start()
    time.sleep(1.0)
    stop.set()
    thread.join(10)
    assert not thread.is_alive() and camera.status.state == "stopped"
    ledger = read_ledgers(streams.client, KEYS, ["paced"])["paced"]
    assert ledger.read > 0 and ledger.unaccounted == 0


def test_rtsp_camera_goes_away_and_comes_back(
    redis_server: RedisServer, tmp_path: Path, figures: Figures, pipelines: list[Pipeline], gst_rtsp: None
) -> None:
    clip = _clip(tmp_path)
    with (
        RtspServer(clip, tmp_path / "rtsp-live.log") as live,
        RtspServer(clip, tmp_path / "rtsp-steady.log") as steady,
    ):
        p = _pipeline(redis_server.url, tmp_path, {"live": live.url, "steady": steady.url}, pipelines)
        watch = Watch(p)
        watch.wait("frames of both cameras", lambda: all(len(watch.results(c)) >= 5 for c in ("live", "steady")))
        sampler = StateSampler(watch, "live")

        killed = time.time()
        live.stop()  # the camera goes away
        watch.wait("live reconnecting", lambda: watch.state("live").get("state") == "reconnecting", timeout=5)
        seen_down = time.time() - killed
        time.sleep(max(0.0, 3.0 - (time.time() - killed)))
        down_state = watch.state("live")
        assert down_state["state"] == "reconnecting", down_state
        assert "cannot open" in down_state["error"], down_state

        live.start()  # ... and comes back on the same port
        back = time.time()
        watch.wait("live frames again", lambda: watch.frames_after("live", back) >= 5, timeout=15)
        reconnect_s = min(d.wall_ts for d in watch.results("live") if d.wall_ts > back) - back
        watch.wait("steady frames after the outage", lambda: watch.frames_after("steady", back + 1.0) >= 1)
        samples = sampler.stop()
        codes = p.stop()

    assert codes == {"detect": 0, "alert": 0, "ingest": 0}, {n: p.log(n)[-2000:] for n in codes}
    ledgers, results = check_outcome(p)

    # reconnecting while down, online again once back
    online_again = next((t for t, s in samples if t > back and s == "online"), None)
    assert online_again is not None
    down = [s for t, s in samples if killed + seen_down + 0.2 < t < back]
    assert down and set(down) == {"reconnecting"}, set(down)

    # the live camera: seq and ts strictly increasing across the reconnect
    live_results = watch.results("live")
    before, after = _assert_monotonic(live_results, killed)

    # the other camera never stalled
    gap = _max_gap(watch.results("steady"), killed, back + 1.0)
    assert gap < MAX_GAP_S, f"the steady camera stalled for {gap:.2f} s during the outage"

    # reconnect attempts followed the jittered exponential backoff for the whole outage
    delays = _reconnect_delays(p.log("ingest"), "live")
    _assert_backoff(delays)
    assert 4 <= len(delays) <= 12, delays  # 0.1-0.2, 0.2-0.4, 0.4-0.8, then <= 1 s apart for 3 s
    assert reconnect_s < RECONNECT_MAX_S + OPEN_TIMEOUT_S + 1.0  # one backoff step and one open at most

    steady_ledger = ledgers["steady"]
    assert steady_ledger.processed > 0 and not steady_ledger.dropped.keys() - {"fps_cap", "stale"}
    counts = _counts(ledgers)
    figures.add(
        "rtsp reconnect",
        f"down 3.0 s, 'reconnecting' shown {seen_down:.2f} s after the kill, {len(delays)} attempts "
        f"(delays {', '.join(f'{d:.2f}' for _, d in delays)} s), first frame {reconnect_s:.2f} s after the "
        f"server was back; live frames {before} before / {after} after; steady camera max gap {gap:.2f} s; "
        f"{counts}; {len(results)} results, 0 duplicates",
    )


def test_half_open_rtsp_stall_is_detected_and_reconnected(
    redis_server: RedisServer, tmp_path: Path, figures: Figures, pipelines: list[Pipeline], gst_rtsp: None
) -> None:
    clip = _clip(tmp_path)
    with RtspServer(clip, tmp_path / "rtsp.log") as server, StallingProxy(server.port) as proxy:
        p = _pipeline(redis_server.url, tmp_path, {"stalled": proxy.url(), "steady": server.url}, pipelines)
        watch = Watch(p)
        watch.wait("frames of both cameras", lambda: all(len(watch.results(c)) >= 5 for c in ("stalled", "steady")))
        connections = proxy.connections

        frozen = time.time()
        proxy.freeze()  # bytes stop in both directions; the TCP connection stays open
        watch.wait(
            "the stall detected",
            lambda: watch.state("stalled").get("state") == "reconnecting",
            timeout=READ_TIMEOUT_S + 5,
        )
        detected_s = time.time() - frozen
        error = watch.state("stalled")["error"]
        time.sleep(max(0.0, detected_s + 1.0 - (time.time() - frozen)))  # a reconnect attempt stalls too

        thawed = time.time()
        proxy.thaw()  # the stalled connections are dropped; new ones flow
        watch.wait("stalled camera frames again", lambda: watch.frames_after("stalled", thawed) >= 5, timeout=15)
        reconnect_s = min(d.wall_ts for d in watch.results("stalled") if d.wall_ts > thawed) - thawed
        watch.wait("online again", lambda: watch.state("stalled").get("state") == "online", timeout=5)
        watch.wait("steady frames after the stall", lambda: watch.frames_after("steady", thawed + 1.0) >= 1)
        codes = p.stop()

    assert codes == {"detect": 0, "alert": 0, "ingest": 0}, {n: p.log(n)[-2000:] for n in codes}
    ledgers, results = check_outcome(p)

    assert detected_s <= READ_TIMEOUT_S + 1.5, f"stall detected after {detected_s:.2f} s"
    assert "no data for" in error, error
    assert proxy.connections > connections  # it reconnected through the proxy
    before, after = _assert_monotonic(watch.results("stalled"), frozen)
    gap = _max_gap(watch.results("steady"), frozen, thawed + 1.0)
    assert gap < MAX_GAP_S, f"the steady camera stalled for {gap:.2f} s during the other's stall"
    _assert_backoff(_reconnect_delays(p.log("ingest"), "stalled"))

    counts = _counts(ledgers)
    figures.add(
        "rtsp half-open",
        f"stall detected {detected_s:.2f} s after the freeze (read timeout {READ_TIMEOUT_S:g} s), first frame "
        f"{reconnect_s:.2f} s after the thaw, {proxy.connections - connections} new connections; stalled "
        f"frames {before} before / {after} after; steady camera max gap {gap:.2f} s; {counts}; "
        f"{len(results)} results, 0 duplicates",
    )
