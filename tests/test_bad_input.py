"""Bad input: one clear line naming the problem, a non-zero exit where nothing can go on, and the other
cameras keep running."""

import threading
import time
from pathlib import Path

import av

from streamproc.config import IngestConfig, RedisConfig, SourceConfig
from streamproc.embedded_redis import RedisServer
from streamproc.ingest import CameraIngest
from streamproc.keys import Keys
from streamproc.transport import Streams, connect
from tests.conftest import Figures, make_clip, read_report, streamproc

MODEL_ARGS = ["--model", "yolo26n.yaml", "--imgsz", "320"]


def _faststart_truncated(tmp_path: Path) -> Path:
    """A clip whose index is at the front (so it opens) cut in half (so it ends early)."""
    plain = make_clip(tmp_path / "plain.mp4", 100)
    faststart = tmp_path / "faststart.mp4"
    with av.open(str(plain)) as src, av.open(str(faststart), "w", options={"movflags": "faststart"}) as dst:
        out = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = out
                dst.mux(packet)
    data = faststart.read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 2])
    return truncated


def _corrupted(tmp_path: Path) -> Path:
    data = bytearray(make_clip(tmp_path / "c.mp4", 100).read_bytes())
    for offset in range(len(data) // 3, len(data) // 3 + 4000, 7):
        data[offset] = (data[offset] * 31 + 17) % 256
    path = tmp_path / "corrupted.mp4"
    path.write_bytes(bytes(data))
    return path


def test_bad_sources_fail_alone(redis_server: RedisServer, tmp_path: Path, figures: Figures) -> None:
    good = make_clip(tmp_path / "good.mp4", 60)
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not a video\n" * 100)
    sources = {
        "good": str(good),
        "missing": str(tmp_path / "missing.mp4"),
        "empty": str(tmp_path / "empty.mp4"),
        "text": str(tmp_path / "notes.txt"),
        "truncated": str(_faststart_truncated(tmp_path)),
        "corrupted": str(_corrupted(tmp_path)),
        "weird": "gopher://host/cam",
    }
    args = [a for name, uri in sources.items() for a in ("--source", f"{name}={uri}")]
    report = tmp_path / "report.json"
    result = streamproc("run", "--redis", redis_server.url, *args, *MODEL_ARGS, "--report", str(report))
    assert result.returncode == 0, result.stderr[-2000:]
    cams = read_report(report)["cameras"]
    assert cams["good"]["read"] == cams["good"]["processed"] == 60
    assert cams["truncated"]["read"] == cams["truncated"]["processed"] == 46
    assert 0 < cams["corrupted"]["processed"] == cams["corrupted"]["read"]
    assert all(c["unaccounted"] == 0 for c in cams.values())
    expected = {
        "missing": "file not found",
        "empty": "file is empty (0 bytes)",
        "text": "has no video stream",
        "truncated": "ended after 46 of 100 frames",
        "weird": "unknown scheme 'gopher'",
    }
    for name, text in expected.items():
        lines = [line for line in result.stderr.splitlines() if f"camera {name} (" in line and text in line]
        assert lines, f"no error line for {name}: {result.stderr[-3000:]}"
    figures.add("bad input", f"good camera processed {cams['good']['processed']}/60 beside 6 bad sources")


def test_every_source_failing_exits_non_zero(redis_server: RedisServer, tmp_path: Path) -> None:
    result = streamproc("run", "--redis", redis_server.url, "--source", f"a={tmp_path}/nope.mp4", *MODEL_ARGS)
    assert result.returncode == 3
    assert "file not found (check the path)" in result.stderr


def test_bad_model_path_fails_fast_with_one_line(tmp_path: Path) -> None:
    started = time.monotonic()
    result = streamproc("run", "--source", f"a={tmp_path}/x.mp4", "--model", str(tmp_path / "weights.pt"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("streamproc: error: model ")
    assert "no such file" in result.stderr
    assert time.monotonic() - started < 30  # no download retries


def test_invalid_config_key(tmp_path: Path) -> None:
    config = tmp_path / "streamproc.yaml"
    config.write_text("detector:\n  confidence: 0.5\n")
    result = streamproc("run", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"streamproc: error: config file {config}: detector.confidence: unknown key (check its spelling against "
        "docs/CONFIG.md)"
    )


def test_unreachable_camera_reconnects_without_stopping(redis_server: RedisServer) -> None:
    streams = Streams(connect(RedisConfig(), redis_server.url), Keys())
    stop = threading.Event()
    source = SourceConfig(name="gone", uri="rtsp://user:secret@127.0.0.1:9/cam", open_timeout_s=1)
    camera = CameraIngest(source, IngestConfig(reconnect_initial_s=0.1, reconnect_max_s=0.2), streams, stop, "t")
    thread = threading.Thread(target=camera.run)
    thread.start()
    time.sleep(2.0)
    assert thread.is_alive() and camera.status.state == "reconnecting"
    assert "cannot open" in camera.status.error
    state = streams.client.hget(Keys().camera_state, "gone") or b""
    assert b"secret" not in state and b"rtsp://***@127.0.0.1:9/cam" in state
    stop.set()
    thread.join(5)
    assert not thread.is_alive()
