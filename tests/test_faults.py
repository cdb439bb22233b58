"""Faults injected into real processes over a real Redis: SIGKILL and SIGSTOP of detectors, poison
frames, garbage entries, SIGTERM. Each test checks the ledger identity and that no (camera, seq) has
two results, and records its counts."""

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from streamproc.detector import FAULT_POINTS
from streamproc.embedded_redis import RedisServer
from streamproc.messages import Detection, Frame
from tests.conftest import DEMO_RULES, Figures, make_clip, read_report, streamproc
from tests.harness import KEYS, Pipeline, check_outcome

FAULT = "STREAMPROC_FAULT"


def _pending_of(client: redis.Redis, consumer_pid: int, pipeline: Pipeline) -> list[bytes]:
    """Entry ids pending on the detector whose process id is ``consumer_pid``."""
    names = [w for w, h in pipeline.heartbeats().items() if h["pid"] == consumer_pid]
    ids = []
    for stream in KEYS.all_frames():
        if not client.exists(stream):
            continue
        for p in client.xpending_range(stream, "detectors", "-", "+", 1000):
            if p["consumer"].decode() in names:
                ids.append(p["message_id"])
    return ids


def _seqs(client: redis.Redis, ids: list[bytes]) -> set[int]:
    stream = KEYS.frames(KEYS.shard_of("cam"))
    return {int(Frame.from_fields(client.xrange(stream, i, i)[0][1], 2**30).seq) for i in ids}


@pytest.mark.parametrize("point", FAULT_POINTS)
def test_killed_detector_batch_is_reprocessed(
    redis_server: RedisServer, tmp_path: Path, point: str, figures: Figures
) -> None:
    clip = make_clip(tmp_path / "clip.mp4", 80)
    p = Pipeline.create(redis_server.url, tmp_path, {"cam": str(clip)}, detector={"max_batch": 4, "max_wait_ms": 50},
                        source_options={"max_inflight": 200})  # fmt: skip
    victim = p.start("victim", "detect", env={FAULT: point})
    p.start("rescuer", "detect")
    p.wait_detectors(2)
    p.start("ingest", "ingest")
    p.start("alert", "alert")
    p.wait_for("the victim to die", lambda: victim.poll() is not None)
    died = time.time()
    assert victim.returncode == -signal.SIGKILL
    client = p.client
    held = _seqs(client, _pending_of(client, victim.pid, p))
    assert held, "the victim died holding no frame"
    p.wait_for("every frame processed", p.all_processed, timeout=120)
    codes = p.stop()
    assert {n: c for n, c in codes.items() if n != "victim"} == {"rescuer": 0, "ingest": 0, "alert": 0}
    ledgers, results = check_outcome(p)
    assert ledgers["cam"].processed == 80 and set(s for _, s in results) == set(range(80))
    published = {
        d.seq: int(entry_id.split(b"-")[0]) / 1000
        for stream in KEYS.all_detections()
        for entry_id, f in client.xrange(stream)
        if (d := Detection.from_fields(f))
    }
    recovery = max(published[s] for s in held) - died
    assert recovery <= 1.0 + 3.0  # claim_idle_ms = 1000, plus claim polling and the reprocessing
    figures.add(f"SIGKILL {point}", f"victim held seqs {sorted(held)}; republished {recovery:.2f} s after death; "
                f"80/80 processed, 0 duplicates")  # fmt: skip


def test_paused_detector_publishes_no_duplicate(redis_server: RedisServer, tmp_path: Path, figures: Figures) -> None:
    clip = make_clip(tmp_path / "clip.mp4", 200)
    p = Pipeline.create(redis_server.url, tmp_path, {"cam": str(clip)}, detector={"max_batch": 4},
                        source_options={"max_inflight": 300})  # fmt: skip
    sleeper = p.start("sleeper", "detect")
    p.start("worker", "detect")
    p.wait_detectors(2)
    p.start("ingest", "ingest")
    p.start("alert", "alert")
    client = p.client
    held: list[bytes] = []
    for _ in range(200):  # stop it while it holds frames
        if _pending_of(client, sleeper.pid, p):
            sleeper.send_signal(signal.SIGSTOP)
            held = _pending_of(client, sleeper.pid, p)
            if held:
                break
            sleeper.send_signal(signal.SIGCONT)
        time.sleep(0.02)
    assert held, "never caught the sleeper holding frames"
    p.wait_for("the held frames to be reclaimed and everything processed", p.all_processed, timeout=120)
    sleeper.send_signal(signal.SIGCONT)
    p.wait_for("the sleeper to finish its stale batch", lambda: any(
        h.get("duplicates_suppressed", 0) > 0 for h in p.heartbeats().values() if h["pid"] == sleeper.pid
    ), timeout=30)  # fmt: skip
    assert p.stop() == {"sleeper": 0, "worker": 0, "ingest": 0, "alert": 0}
    ledgers, results = check_outcome(p)
    assert ledgers["cam"].processed == 200 and len(results) == 200
    figures.add("SIGSTOP", f"paused holding {len(held)} frames past the claim timeout; 200 results, 0 duplicates")


def test_poison_frame_goes_to_dead_letter(redis_server: RedisServer, tmp_path: Path, figures: Figures) -> None:
    clip = make_clip(tmp_path / "clip.mp4", 40)
    p = Pipeline.create(redis_server.url, tmp_path, {"cam": str(clip)}, detector={"max_deliveries": 3})
    report = tmp_path / "report.json"
    env = {**os.environ, FAULT: "during_inference@cam:17"}
    result = streamproc("run", "--config", str(p.config), "--report", str(report), env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_report(report)
    cam = summary["cameras"]["cam"]
    assert (cam["read"], cam["processed"], cam["dead_lettered"], cam["unaccounted"]) == (40, 39, 1, 0)
    dead = p.client.xrange(KEYS.dead(KEYS.shard_of("cam")))
    assert len(dead) == 1 and dead[0][1][b"f:seq"] == b"17"
    assert dead[0][1][b"reason"].startswith(b"max_deliveries")
    restarts = sum(w["restarts"] for w in summary["workers"].values())
    assert restarts == 3
    figures.add("poison frame", f"killed {restarts} detectors, then dead-lettered; 39/40 processed")


def test_bad_entries_are_dead_lettered(redis_server: RedisServer, tmp_path: Path, figures: Figures) -> None:
    clip = make_clip(tmp_path / "clip.mp4", 30)
    p = Pipeline.create(redis_server.url, tmp_path, {"cam": str(clip)}, detector={"max_payload_bytes": 100_000})
    p.start("detector", "detect")
    p.wait_detectors(1)
    good = Frame(
        camera="forged", seq=0, prev_seq=-1, ts=0.0, wall_ts=time.time(), width=32, height=32, pts=None,
        codec="jpeg", enc_width=32, enc_height=32, max_age_ms=0, data=b"",
    ).to_fields()  # fmt: skip
    bad_entries = {
        "garbage": {b"\xff\xfe": b"\x00\x01\x02"},
        "wrong version": {**good, "v": "99"},
        "missing fields": {"v": "1", "cam": "forged", "data": b"x"},
        "oversized": {**good, "data": b"\0" * 200_000},
        "undecodable": {**good, "data": b"not a jpeg"},
    }
    stream = KEYS.frames(0)
    for fields in bad_entries.values():
        p.client.xadd(stream, fields)  # type: ignore[arg-type]
    p.start("ingest", "ingest")
    p.start("alert", "alert")
    p.wait_for("good frames processed", p.all_processed, timeout=60)
    assert p.procs["detector"].poll() is None, "the detector died"
    assert p.stop() == {"detector": 0, "ingest": 0, "alert": 0}
    ledgers, _ = check_outcome(p)
    assert ledgers["cam"].processed == 30
    reasons = sorted(f[b"reason"].decode().split(":")[0] for _, f in p.client.xrange(KEYS.dead(0)))
    assert reasons == ["bad_payload", "bad_version", "bad_version", "missing_field", "oversized"]
    figures.add("bad entries", f"{len(reasons)} dead-lettered ({', '.join(reasons)}); 30/30 good frames processed")


def test_sigterm_finishes_the_batch_in_hand(redis_server: RedisServer, tmp_path: Path, figures: Figures) -> None:
    clip = make_clip(tmp_path / "clip.mp4", 200)
    p = Pipeline.create(redis_server.url, tmp_path, {"cam": str(clip)}, detector={"max_batch": 8},
                        source_options={"max_inflight": 300})  # fmt: skip
    first = p.start("first", "detect")
    p.wait_detectors(1)
    p.start("ingest", "ingest")
    client = p.client
    p.wait_for("a batch in hand", lambda: bool(_pending_of(client, first.pid, p)))
    names = [w for w, h in p.heartbeats().items() if h["pid"] == first.pid]
    first.send_signal(signal.SIGTERM)
    started = time.monotonic()
    assert first.wait(15) == 0
    took = time.monotonic() - started
    pending_after = sum(
        c["pending"] for s in KEYS.all_frames() if client.exists(s) for c in client.xinfo_consumers(s, "detectors")
        if c["name"].decode() in names
    )  # fmt: skip
    assert pending_after == 0
    p.start("second", "detect")
    p.start("alert", "alert")
    p.wait_for("every frame processed", p.all_processed, timeout=120)
    assert p.stop() == {"first": 0, "ingest": 0, "second": 0, "alert": 0}
    ledgers, results = check_outcome(p)
    assert ledgers["cam"].processed == 200 and len(results) == 200
    figures.add("SIGTERM", f"detector exited 0 in {took:.2f} s holding nothing; 200/200 processed")


def test_redis_restart_under_load(tmp_path: Path, demo_line: tuple[Path, Any], figures: Figures) -> None:
    """SIGKILL Redis (AOF, appendfsync always) while the demo line runs live; restart it on the same port."""
    video, _truth = demo_line
    data = tmp_path / "redis"
    data.mkdir()
    server = RedisServer(data_dir=data, appendonly=True).start()
    try:
        p = Pipeline.create(server.url, tmp_path, {"line": str(video)}, source_options={"realtime": True},
                            detector={"claim_idle_ms": 2000}, rules=DEMO_RULES)  # fmt: skip
        p.start("detector", "detect")
        p.start("alert", "alert")
        p.wait_detectors(1)
        p.start("ingest", "ingest")
        alerts_stream = KEYS.alerts(KEYS.shard_of("line"))
        p.wait_for("a first alert", lambda: p.client.xlen(alerts_stream) >= 2, timeout=60)
        before = p.client.xrange(alerts_stream)
        server.kill()
        time.sleep(2.0)
        server.start()
        p.wait_for("every frame accounted for after the restart", p.all_processed, timeout=120)
        codes = p.stop()
        assert codes == {"detector": 0, "alert": 0, "ingest": 0}
        ledgers, _ = check_outcome(p)
        after = p.client.xrange(alerts_stream)
        assert before == after[: len(before)], "an alert published before the restart was lost or changed"
        keys = [(f[b"track"], f[b"rule"]) for _, f in after]
        assert len(keys) == len(set(keys)), "an object was alerted twice"
        lost = ledgers["line"].dropped.get("redis_unavailable", 0)
        assert lost > 0
        figures.add("Redis restart", f"{len(before)} alerts before, {len(after)} after, none lost; "
                    f"{ledgers['line'].read} frames read, {lost} counted redis_unavailable, "
                    f"{ledgers['line'].processed} processed, 0 duplicates")  # fmt: skip
    finally:
        server.cleanup()
