"""``streamproc bench``: the bare model, plain Ultralytics and the full pipeline, side by side in one run.

(a) bare: the model's forward pass in a tight loop on pre-decoded, pre-letterboxed batches (the ceiling);
(b) plain Ultralytics: ``YOLO(weights).predict(frame)`` per frame, cameras one after another and one
    thread per camera;
(c) the pipeline: ingest, Redis, detector pool and alerter on N cameras, saturated (lossless looping
    files) for throughput, then live at a fraction of that capacity for latency.
Ratios c/a and c/b, latency percentiles, batch sizes, drops, CPU, Redis memory and worker RSS go to JSON
(``--json``) and a markdown table (``--markdown``). See docs/BENCHMARKS.md.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import redis

from streamproc.bench import (
    VariantResult,
    bench_bare,
    bench_call_overhead,
    bench_ultralytics,
    cameras_from,
    native_fps,
    rate_per_camera,
)
from streamproc.config import DetectorConfig, IngestConfig, PipelineConfig, RedisConfig, SourceConfig
from streamproc.embedded_redis import RedisServer
from streamproc.keys import Keys
from streamproc.ledger import read_ledgers
from streamproc.messages import Detection
from streamproc.observe import StreamTail, percentiles
from streamproc.transport import Streams, connect
from workers.run import run

log = logging.getLogger("streamproc.bench")


@dataclass(frozen=True)
class BenchSettings:
    model: str
    weights: str
    imgsz: int
    cameras: int
    duration_s: float
    max_batch: int
    device: str
    workers: int
    load: float
    videos: tuple[Path, ...]
    codec: str = "jpeg"
    warmup_s: float = 8.0
    threads: int | None = None

    def detector(self) -> DetectorConfig:
        """The bare model's and plain Ultralytics' settings (all cores: their best on this machine)."""
        return DetectorConfig(model=self.model, imgsz=self.imgsz, max_batch=self.max_batch, device=self.device)

    def pipeline_detector(self) -> DetectorConfig:
        return self.detector().model_copy(update={"threads": self.threads})


@dataclass
class Window:
    """Counters sampled at the start and the end of the measured window of a pipeline run."""

    started: float = 0.0
    ended: float = 0.0
    processed: tuple[int, int] = (0, 0)
    cpu_s: tuple[float, float] = (0.0, 0.0)
    rss: tuple[dict[str, int], dict[str, int]] = ({}, {})
    redis_bytes: int = 0


class StealClock:
    """Share of CPU time the hypervisor gave to other guests since the last lap, in percent.

    On a shared virtual machine steal varies from minute to minute and slows whichever variant runs then;
    the report carries it per variant so that a ratio taken under uneven steal can be recognised.
    """

    def __init__(self) -> None:
        self._last = psutil.cpu_times()

    def lap(self) -> float:
        now = psutil.cpu_times()
        total = sum(now) - sum(self._last)
        steal = getattr(now, "steal", 0.0) - getattr(self._last, "steal", 0.0)
        self._last = now
        return round(100 * steal / total, 1) if total > 0 else 0.0


def _tree() -> list[psutil.Process]:
    return list(psutil.Process(os.getpid()).children(recursive=True))


def _cpu_seconds() -> float:
    total = 0.0
    for proc in [psutil.Process(os.getpid()), *_tree()]:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            continue
    return total


def _detector_rss() -> dict[str, int]:
    out = {}
    for proc in _tree():
        try:
            if "detect" in proc.cmdline():
                out[str(proc.pid)] = proc.memory_info().rss
        except psutil.Error:
            continue
    return out


def _pipeline_config(s: BenchSettings, url: str, fps_per_camera: float | None) -> PipelineConfig:
    live = fps_per_camera is not None
    sources = [
        SourceConfig(
            name=f"cam{i}",
            uri=str(s.videos[i % len(s.videos)]),
            loop=True,
            realtime=live,
            fps=fps_per_camera,
            mode="live" if live else "lossless",
            max_age_ms=2000,
        )
        for i in range(s.cameras)
    ]
    return PipelineConfig(
        redis=RedisConfig(url=url),
        sources=sources,
        detector=s.pipeline_detector(),
        ingest=IngestConfig(codec=s.codec),
        workers=s.workers,
    )


def _monitor(client: redis.Redis, keys: Keys, cameras: list[str], timing: tuple[float, float], stop: threading.Event,
             window: Window) -> None:  # fmt: skip
    """Wait for the first results plus a warm-up, measure ``duration_s``, then stop the run."""

    def processed() -> int:
        return sum(lg.processed for lg in read_ledgers(client, keys, cameras).values())

    while processed() == 0 and not stop.wait(0.5):
        pass
    warmup_s, duration_s = timing
    stop.wait(warmup_s)
    window.started, window.processed, window.cpu_s = time.time(), (processed(), 0), (_cpu_seconds(), 0.0)
    window.rss = (_detector_rss(), {})
    stop.wait(duration_s)
    window.ended = time.time()
    window.processed = (window.processed[0], processed())
    window.cpu_s = (window.cpu_s[0], _cpu_seconds())
    window.rss = (window.rss[0], _detector_rss())
    window.redis_bytes = int(client.info("memory")["used_memory"])
    stop.set()


def bench_pipeline(s: BenchSettings, fps_per_camera: float | None, duration_s: float) -> dict[str, Any]:
    """(c) The pipeline, saturated (fps_per_camera None) or live at a given rate; figures over the window."""
    keys = Keys()
    with RedisServer() as server:
        cfg = _pipeline_config(s, server.url, fps_per_camera)
        client = redis.Redis.from_url(server.url)
        cameras = [src.name for src in cfg.sources]
        stop, window = threading.Event(), Window()
        timing = (s.warmup_s, duration_s)
        monitor = threading.Thread(target=_monitor, args=(client, keys, cameras, timing, stop, window))
        monitor.start()
        run(cfg, log_level="WARNING", on_alert=lambda _: None, stop=stop)
        monitor.join()
        tail = StreamTail(Streams(connect(cfg.redis, server.url), keys), keys.all_detections(), "0")
        detections = [Detection.from_fields(f) for _, _, f in tail.read(count=1_000_000)]
        ledgers = read_ledgers(client, keys, cameras)
    seconds = window.ended - window.started
    in_window = [d for d in detections if window.started <= d.wall_ts <= window.ended and d.status == "ok"]
    dropped: Counter[str] = Counter()
    for ledger in ledgers.values():
        dropped.update(ledger.dropped)
    rss_start, rss_end = sum(window.rss[0].values()), sum(window.rss[1].values())
    return {
        "fps": round((window.processed[1] - window.processed[0]) / seconds, 2) if seconds > 0 else 0.0,
        "seconds": round(seconds, 1),
        "latency_ms": percentiles([d.timings.get("latency_ms", 0.0) for d in in_window]),
        "infer_ms_per_batch": percentiles([d.timings.get("infer_ms", 0.0) for d in in_window]),
        "batch_sizes": dict(sorted(Counter(int(d.timings.get("batch", 0)) for d in in_window).items())),
        "dropped": dict(dropped),
        "unaccounted": sum(lg.unaccounted for lg in ledgers.values()),
        "cpu_cores_used": round((window.cpu_s[1] - window.cpu_s[0]) / seconds, 2) if seconds > 0 else 0.0,
        "redis_used_mib": round(window.redis_bytes / 2**20, 1),
        "detector_rss_mib": round(rss_end / 2**20, 1),
        "detector_rss_growth_pct": round(100 * (rss_end - rss_start) / rss_start, 2) if rss_start else None,
        "latency_p99_by_10s": _p99_by_window(in_window, window.started, 10.0),
    }


def _p99_by_window(detections: list[Detection], start: float, width_s: float) -> list[float]:
    buckets: dict[int, list[float]] = {}
    for d in detections:
        buckets.setdefault(int((d.wall_ts - start) // width_s), []).append(d.timings.get("latency_ms", 0.0))
    return [percentiles(buckets[k])["p99"] for k in sorted(buckets)]


def markdown(result: dict[str, Any]) -> str:
    fps, lat, sat, calls = result["fps"], result["latency_ms"], result["saturated"], result["call_overhead"]
    live = result["loaded"]
    rows = [
        "| variant | frames/s | vs bare | backend |",
        "| --- | --- | --- | --- |",
    ]
    for name in ("bare", "ultralytics_sequential", "ultralytics_threads", "pipeline"):
        if name in fps:
            ratio = fps[name] / fps["bare"] if fps.get("bare") else 0.0
            rows.append(f"| {name} | {fps[name]:.1f} | {ratio:.2f} | {result['backends'].get(name, '')} |")
    rows += [
        "",
        f"- pipeline / bare: **{result['ratio_pipeline_vs_bare']:.2f}**; "
        f"pipeline / plain Ultralytics (best of the two): **{result['ratio_pipeline_vs_ultralytics']:.2f}**",
        f"- per batch of {result['settings']['max_batch']}: `YOLO.predict` {calls['predict_ms']} ms, "
        f"the runner {calls['runner_ms']} ms, forward alone {calls['forward_ms']} ms",
        f"- live at {live['offered_load']:.0%} of capacity ({live['offered_fps']} frames/s offered): latency "
        f"p50 {lat['p50']} ms, p95 {lat['p95']} ms, p99 {lat['p99']} ms (one batch: {result['one_batch_ms']:.0f} ms "
        f"bare, {sat['infer_ms_per_batch']['p50']} ms in a saturated detector); p99 per 10 s: "
        f"{live['latency_p99_by_10s']}; dropped: {live['dropped'] or 'none'}, unaccounted {live['unaccounted']}",
        f"- batch sizes (saturated): {sat['batch_sizes']}; dropped: {sat['dropped'] or 'none'}; "
        f"CPU cores used: {sat['cpu_cores_used']}; Redis {sat['redis_used_mib']} MiB; "
        f"detector RSS {sat['detector_rss_mib']} MiB ({sat['detector_rss_growth_pct']:+}% over the run)",
        f"- CPU steal per variant (%, other guests of the host): {result['cpu_steal_pct']}",
    ]
    return "\n".join(rows) + "\n"


def main(s: BenchSettings, json_path: str | None, markdown_path: str | None) -> int:
    frames_per_video = 64
    cameras = cameras_from(s.videos, s.cameras, frames_per_video)
    detector = s.detector()
    variant_s = max(2.0, s.duration_s / 3)
    clock = StealClock()
    results: list[VariantResult] = [bench_bare(detector, cameras, variant_s)]
    steal = {"bare": clock.lap()}
    print(f"bare model: {results[0].fps:.1f} frames/s ({results[0].backend})", flush=True)
    overhead = bench_call_overhead(detector, cameras)
    steal["call_overhead"] = clock.lap()
    print(f"per batch of {s.max_batch}: {overhead}", flush=True)
    for threaded in (False, True):
        results.append(bench_ultralytics(s.weights, detector, cameras, variant_s, threaded=threaded))
        steal[results[-1].name] = clock.lap()
        print(f"{results[-1].name}: {results[-1].fps:.1f} frames/s", flush=True)
    saturated = bench_pipeline(s, None, s.duration_s)
    steal["pipeline"] = clock.lap()
    print(f"pipeline: {saturated['fps']:.1f} frames/s with {s.cameras} cameras", flush=True)
    natives = [native_fps(s.videos[i % len(s.videos)]) for i in range(s.cameras)]
    live_fps = rate_per_camera(s.load * saturated["fps"], natives)
    offered = sum(min(live_fps, n) for n in natives)
    if offered < 0.98 * s.load * saturated["fps"]:
        log.warning("the videos' native rates cap the offered load at %.0f%% of capacity: add --cameras",
                    100 * offered / saturated["fps"])  # fmt: skip
    loaded = bench_pipeline(s, live_fps, s.duration_s)
    steal["live"] = clock.lap()
    print(f"pipeline at {s.load:.0%} load: latency {loaded['latency_ms']}", flush=True)
    fps = {r.name: round(r.fps, 2) for r in results} | {"pipeline": saturated["fps"]}
    best_plain = max(fps["ultralytics_sequential"], fps["ultralytics_threads"])
    result = {
        "settings": {k: str(v) if isinstance(v, (Path, tuple)) else v for k, v in s.__dict__.items()},
        "fps": fps,
        "backends": {r.name: r.backend for r in results} | {"pipeline": results[0].backend},
        "ratio_pipeline_vs_bare": round(saturated["fps"] / fps["bare"], 3),
        "ratio_pipeline_vs_ultralytics": round(saturated["fps"] / best_plain, 3),
        "latency_ms": loaded["latency_ms"],
        "one_batch_ms": round(1000 * s.max_batch / fps["bare"], 1),
        "call_overhead": overhead,
        "cpu_steal_pct": steal,
        "saturated": saturated,
        "loaded": loaded
        | {
            "fps_per_camera": round(live_fps, 2),
            "offered_fps": round(offered, 2),
            "offered_load": round(offered / saturated["fps"], 3),
        },
    }
    text = markdown(result)
    print(text)
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
    if markdown_path:
        Path(markdown_path).write_text(text)
    return 0
