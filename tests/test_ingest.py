"""Ingest on real video into a real Redis: exact frame counts, sampling and budget drops, all in the ledger."""

import threading
from pathlib import Path

import av
import redis

from streamproc.config import IngestConfig, RedisConfig, SourceConfig
from streamproc.embedded_redis import RedisServer
from streamproc.ingest import CameraIngest, RateLimiter
from streamproc.keys import Keys
from streamproc.ledger import read_ledgers
from streamproc.messages import Frame
from streamproc.transport import Streams, connect
from tests.conftest import BOTTLE, BOTTLE_FRAMES, CAR, CAR_FRAMES, Figures, make_clip

KEYS = Keys("sp", 4)


def _ingest(server: RedisServer, source: SourceConfig, codec: str = "jpeg") -> tuple[Streams, CameraIngest]:
    streams = Streams(connect(RedisConfig(), server.url), KEYS)
    camera = CameraIngest(source, IngestConfig(codec=codec), streams, threading.Event(), "test-ingest")
    camera.run()
    return streams, camera


def test_exact_frame_counts_of_sample_videos(redis_server: RedisServer, figures: Figures) -> None:
    for name, path, expected in (("bottles", BOTTLE, BOTTLE_FRAMES), ("parking", CAR, CAR_FRAMES)):
        source = SourceConfig(name=name, uri=str(path), max_inflight=5000)
        streams, camera = _ingest(redis_server, source)
        ledger = read_ledgers(streams.client, KEYS, [name])[name]
        assert camera.status.state == "finished"
        assert (ledger.read, ledger.published, ledger.in_flight, ledger.unaccounted) == (
            expected,
            expected,
            expected,
            0,
        )
        entries = streams.client.xrange(KEYS.frames(KEYS.shard_of(name)))
        seqs = [int(f[b"seq"]) for _, f in entries if f[b"cam"] == name.encode()]
        assert seqs == list(range(expected))
        figures.add("ingest", f"{name}: {ledger.read} frames read, {ledger.published} published")


def test_timestamps_come_from_pts_and_resize_keeps_original_size(redis_server: RedisServer) -> None:
    source = SourceConfig(name="cars", uri=str(CAR), max_inflight=5000, max_side=384)
    streams, _ = _ingest(redis_server, source, codec="raw")
    frames = [Frame.from_fields(f, 2**30) for _, f in streams.client.xrange(KEYS.frames(KEYS.shard_of("cars")))]
    assert (frames[0].width, frames[0].height, frames[0].enc_width, frames[0].enc_height) == (768, 432, 384, 216)
    assert len(frames[0].data) == 384 * 216 * 3
    with av.open(str(CAR)) as container:
        expected_ts = [float(f.time) for f in container.decode(video=0)]
    assert [f.ts for f in frames] == expected_ts
    assert [f.prev_seq for f in frames[:3]] == [-1, 0, 1]


def test_fps_cap_counts_every_sampled_out_frame(redis_server: RedisServer) -> None:
    source = SourceConfig(name="bottles", uri=str(BOTTLE), fps=10, max_inflight=5000)
    streams, _ = _ingest(redis_server, source)
    ledger = read_ledgers(streams.client, KEYS, ["bottles"])["bottles"]
    with av.open(str(BOTTLE)) as container:
        times = [float(f.time) for f in container.decode(video=0)]
    limiter = RateLimiter(10)
    kept = sum(limiter.keep(t) for t in times)
    assert 395 <= kept <= 400  # 39.8 s at 10 fps
    assert ledger.published == kept
    assert ledger.dropped == {"fps_cap": BOTTLE_FRAMES - kept}
    assert ledger.unaccounted == 0


def test_live_budget_drops_are_counted(redis_server: RedisServer, tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "clip.mp4", 120)
    source = SourceConfig(name="cam", uri=str(clip), mode="live", max_inflight=10, max_age_ms=0)
    streams, _ = _ingest(redis_server, source)
    ledger = read_ledgers(streams.client, KEYS, ["cam"])["cam"]
    assert (ledger.read, ledger.published, ledger.dropped, ledger.unaccounted) == (120, 10, {"backlog_full": 110}, 0)


def test_lossless_budget_applies_backpressure(redis_server: RedisServer, tmp_path: Path) -> None:
    """With a budget of 5 and a consumer acking slowly, ingest waits instead of dropping."""
    clip = make_clip(tmp_path / "clip.mp4", 40)
    streams = Streams(connect(RedisConfig(), redis_server.url), KEYS)
    stream = KEYS.frames(KEYS.shard_of("cam"))
    streams.ensure_group(stream, "detectors")
    source = SourceConfig(name="cam", uri=str(clip), max_inflight=5)
    camera = CameraIngest(source, IngestConfig(), streams, threading.Event(), "t")
    thread = threading.Thread(target=camera.run)
    thread.start()
    consumer = redis.Redis.from_url(redis_server.url)
    seen = 0
    max_length = 0
    while thread.is_alive() or seen < 40:
        reply = consumer.xreadgroup("detectors", "c", {stream: ">"}, count=1, block=200)
        max_length = max(max_length, consumer.xlen(stream))
        for _, entries in reply or []:
            for entry_id, _fields in entries:
                seen += 1
                streams.finish(KEYS.shard_of("cam"), [_outcome(entry_id)], 1000)
    thread.join()
    ledger = read_ledgers(streams.client, KEYS, ["cam"])["cam"]
    assert (seen, ledger.processed, ledger.dropped, ledger.in_flight) == (40, 40, {}, 0)
    assert max_length <= 5


def _outcome(entry_id: bytes):  # type: ignore[no-untyped-def]
    from streamproc.transport import Outcome

    return Outcome(entry_id, "cam", "processed", {"v": "1"})
