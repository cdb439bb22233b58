"""Shared fixtures: a real redis-server per test, the sample videos, generated clips, the CLI.

Measured figures that tests record with the ``figures`` fixture are printed at the end of the run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import redis

from streamproc.embedded_redis import RedisServer

REPO = Path(__file__).resolve().parents[1]
MEDIA = REPO / "media"
BOTTLE = MEDIA / "bottle-detection.mp4"
CAR = MEDIA / "car-detection.mp4"
BOTTLE_FRAMES = 1189
CAR_FRAMES = 377
MODELS = REPO / "streamproc" / "models"
DEMO_ONNX = MODELS / "demo-line.onnx"
DEMO_PT = MODELS / "demo-line.pt"
DEMO_RULES = REPO / "streamproc" / "demo" / "rules.yaml"

_FIGURES: list[tuple[str, str]] = []


class Figures:
    """Collects measured numbers; they are printed in the terminal summary."""

    def add(self, test: str, text: str) -> None:
        _FIGURES.append((test, text))
        print(f"[figure] {test}: {text}")


@pytest.fixture(autouse=True)
def _no_stray_workers() -> Iterator[None]:
    """Worker processes a failed test left behind are killed, so they cannot load the next tests."""
    yield
    from tests.harness import LIVE

    while LIVE:
        LIVE.pop().kill_all()


@pytest.fixture
def figures() -> Figures:
    return Figures()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _FIGURES:
        terminalreporter.section("measured figures")
        for test, text in _FIGURES:
            terminalreporter.write_line(f"{test}: {text}")


@pytest.fixture(scope="session")
def demo_line(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """A 20 s demo line video (seed 0) and its ground truth, rendered once per test session."""
    from streamproc.demo.line import render_line

    video = tmp_path_factory.mktemp("line") / "line.mp4"
    return video, render_line(video, seconds=20.0, seed=0)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    data = tmp_path / "redis"
    data.mkdir()
    server = RedisServer(data_dir=data).start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


def streamproc(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed command line as a user would, capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "workers", *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def read_report(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def make_clip(path: Path, frames: int, size: tuple[int, int] = (320, 240), fps: int = 25) -> Path:
    """An H.264 clip of ``frames`` frames: a bright square moving over a gradient (decode order = display order)."""
    width, height = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"bf": "0", "g": str(fps)}
        stream.codec_context.time_base = Fraction(1, fps)
        base = np.tile(np.linspace(0, 255, width, dtype=np.uint8), (height, 1))
        for i in range(frames):
            image = np.dstack([base, np.roll(base, i * 3, axis=1), base[::-1]]).copy()
            x = (i * 5) % (width - 40)
            image[height // 2 - 20 : height // 2 + 20, x : x + 40] = 255
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
