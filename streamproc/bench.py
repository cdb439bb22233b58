"""Benchmark variants that run inside one process: the bare model and plain Ultralytics.

The pipeline variant (ingest, Redis, detector pool) is run by ``workers/bench.py`` on the same frames,
model and machine, in the same invocation, so the ratios between them are what to read.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import cycle
from pathlib import Path
from typing import Any, cast

import av

from streamproc.codecs import Image
from streamproc.config import DetectorConfig
from streamproc.model import ModelRunner, configure_ultralytics, predict_args, resolve_model


@dataclass(frozen=True, slots=True)
class Camera:
    """A benchmark camera: a name and pre-decoded BGR frames from one of the sample videos."""

    name: str
    frames: Sequence[Image]


@dataclass
class VariantResult:
    name: str
    frames: int
    seconds: float
    backend: str
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"frames": self.frames, "seconds": round(self.seconds, 2), "fps": round(self.fps, 2),
                "backend": self.backend, **self.notes}  # fmt: skip


def decode_frames(video: Path, limit: int) -> list[Image]:
    """The first ``limit`` frames of a video as BGR arrays (as ingest would produce them)."""
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames = []
        for frame in container.decode(stream):
            frames.append(cast(Image, frame.to_ndarray(format="bgr24")))
            if len(frames) >= limit:
                break
    return frames


def cameras_from(videos: Sequence[Path], count: int, frames_per_video: int) -> list[Camera]:
    """``count`` cameras cycling over the videos (decoded once each)."""
    decoded = {v: decode_frames(v, frames_per_video) for v in videos}
    return [Camera(f"cam{i}", decoded[videos[i % len(videos)]]) for i in range(count)]


def native_fps(video: Path) -> float:
    """The frame rate a video plays at: a live run paces each camera at this rate at most."""
    with av.open(str(video)) as container:
        rate = container.streams.video[0].average_rate
    return float(rate) if rate else 0.0


def rate_per_camera(target_fps: float, natives: Sequence[float]) -> float:
    """The fps cap that makes cameras of these native rates offer ``target_fps`` in total (a camera
    slower than the cap offers its native rate); the fastest native rate when the target is out of reach."""
    remaining, left = target_fps, len(natives)
    for native in sorted(natives):
        share = remaining / left
        if native >= share:
            return share
        remaining, left = remaining - native, left - 1
    return max(natives)


def _timed(duration_s: float, step: Callable[[], int]) -> tuple[int, float]:
    """Call ``step`` (which returns frames done) until ``duration_s`` has passed."""
    frames, started = 0, time.perf_counter()
    while time.perf_counter() - started < duration_s:
        frames += step()
    return frames, time.perf_counter() - started


def bench_bare(cfg: DetectorConfig, cameras: Sequence[Camera], duration_s: float) -> VariantResult:
    """(a) The model's forward pass alone, in a tight loop, on batches decoded and letterboxed in advance."""
    runner = ModelRunner.load(cfg)
    round_robin = [cam.frames[i] for i in range(min(len(c.frames) for c in cameras)) for cam in cameras]
    by_shape: dict[tuple[int, ...], list[Image]] = {}
    for image in round_robin:
        by_shape.setdefault(image.shape, []).append(image)
    batches = []
    for images in by_shape.values():
        for start in range(0, len(images) - cfg.max_batch + 1, cfg.max_batch):
            batches.append(runner.preprocess(images[start : start + cfg.max_batch]))
    source = cycle(batches)
    runner.forward(next(source))  # warm-up

    def step() -> int:
        tensor = next(source)
        runner.forward(tensor)
        return int(tensor.shape[0])

    frames, seconds = _timed(duration_s, step)
    return VariantResult("bare", frames, seconds, runner.backend, {"batch": cfg.max_batch})


def bench_call_overhead(cfg: DetectorConfig, cameras: Sequence[Camera], calls: int = 20) -> dict[str, float]:
    """Median milliseconds per batch of ``max_batch`` frames: ``YOLO.predict`` (re-runs its set-up every
    call), the runner's path (same pre/post-processing, set-up once), and the forward pass alone."""
    runner = ModelRunner.load(cfg)
    frames = list(cameras[0].frames[: cfg.max_batch])
    args = predict_args(cfg)
    tensor = runner.preprocess(frames)

    variants: dict[str, Callable[[], object]] = {
        "predict_ms": lambda: runner.yolo.predict(frames, **args),
        "runner_ms": lambda: runner.infer(frames),
        "forward_ms": lambda: runner.forward(tensor),
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(calls + 1):  # interleaved, so that a slow spell of the machine hits all three alike
        for name, call in variants.items():
            started = time.perf_counter()
            call()
            samples[name].append((time.perf_counter() - started) * 1000)
    timings = {name: round(statistics.median(values[1:]), 2) for name, values in samples.items()}
    timings["predict_overhead_ms"] = round(timings["predict_ms"] - timings["runner_ms"], 2)
    return timings


def bench_ultralytics(
    weights: str, cfg: DetectorConfig, cameras: Sequence[Camera], duration_s: float, *, threaded: bool
) -> VariantResult:
    """(b) Plain Ultralytics as its docs show it: ``YOLO(weights).predict(frame)`` per frame, one camera
    after another, or one thread (and model object: they are not thread-safe) per camera."""
    configure_ultralytics()
    from ultralytics.models import YOLO

    spec = resolve_model(weights)
    args = {**predict_args(cfg), "verbose": False}
    if not threaded:
        model = YOLO(spec, task="detect")
        model.predict(cameras[0].frames[0], **args)  # warm-up, as any loop would pay once
        frames_in_order = cycle([f for cam in cameras for f in cam.frames])

        def step() -> int:
            model.predict(next(frames_in_order), **args)
            return 1

        frames, seconds = _timed(duration_s, step)
        return VariantResult("ultralytics_sequential", frames, seconds, _backend(spec))
    models = [YOLO(spec, task="detect") for _ in cameras]
    for model, cam in zip(models, cameras, strict=True):
        model.predict(cam.frames[0], **args)
    counts = [0] * len(cameras)
    stop = threading.Event()

    def loop(index: int) -> None:
        for frame in cycle(cameras[index].frames):
            if stop.is_set():
                return
            models[index].predict(frame, **args)
            counts[index] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(cameras))]
    started = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(duration_s)
    stop.set()
    for t in threads:
        t.join()
    return VariantResult("ultralytics_threads", sum(counts), time.perf_counter() - started, _backend(spec))


def _backend(spec: str) -> str:
    suffix = Path(spec).suffix
    return {".onnx": "onnxruntime", ".engine": "tensorrt", ".pt": "pytorch", ".yaml": "pytorch"}.get(suffix, suffix)
