"""The camera registry: cameras added and removed at run time, spread over ingest workers through
leases, and taken over when a worker dies, with no duplicate (camera, seq) and the ledger intact."""

import json
import signal
import time
from pathlib import Path

from streamproc.embedded_redis import RedisServer
from tests.conftest import Figures, make_clip, streamproc
from tests.harness import KEYS, Pipeline, check_outcome

LEASE_MS = 1500


def _holders(p: Pipeline, cameras: list[str]) -> dict[str, str | None]:
    raw = p.client.mget([KEYS.lease(KEYS.shard_of(c), c) for c in cameras])
    return {c: v.decode() if v else None for c, v in zip(cameras, raw, strict=True)}


def _add(p: Pipeline, name: str, clip: Path) -> None:
    result = streamproc("cameras", "add", name, str(clip), "--realtime", "--loop", "--fps", "5",
                        "--redis", p.redis_url, timeout=30)  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_cameras_command_validates_and_redacts(redis_server: RedisServer) -> None:
    url = redis_server.url
    ok = streamproc("cameras", "add", "gate", "rtsp://admin:hunter2@10.0.0.9/s", "--fps", "5", "--redis", url)
    assert ok.returncode == 0 and "hunter2" not in ok.stdout + ok.stderr
    bad = streamproc("cameras", "add", "gate2", "rtsp://h/s", "--fps", "-1", "--redis", url)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "camera gate2: fps" in bad.stderr
    listed = json.loads(streamproc("cameras", "list", "--json", "--redis", url).stdout)
    assert listed["gate"]["uri"] == "rtsp://***@10.0.0.9/s" and listed["gate"]["fps"] == 5
    assert streamproc("cameras", "remove", "gate", "--redis", url).returncode == 0
    assert streamproc("cameras", "remove", "gate", "--redis", url).returncode == 1


def test_leases_spread_add_remove_and_takeover(redis_server: RedisServer, tmp_path: Path, figures: Figures) -> None:
    clip = make_clip(tmp_path / "clip.mp4", 50, fps=10)
    p = Pipeline.create(redis_server.url, tmp_path, {})
    p.start("detector", "detect")
    p.start("alert", "alert")
    p.wait_detectors(1)
    cameras = ["c1", "c2", "c3", "c4"]
    for name in cameras:
        _add(p, name, clip)
    args = ("--registry", "--lease-ms", str(LEASE_MS))
    a = p.start("ingest-a", "ingest", args=args)
    p.start("ingest-b", "ingest", args=args)

    def spread(names: list[str]) -> dict[str, int]:
        holders = _holders(p, names)
        counts: dict[str, int] = {}
        for holder in holders.values():
            if holder:
                counts[holder] = counts.get(holder, 0) + 1
        return counts if sum(counts.values()) == len(names) else {}

    p.wait_for("4 cameras spread 2 + 2", lambda: sorted(spread(cameras).values()) == [2, 2], timeout=30)
    cameras.append("c5")
    _add(p, "c5", clip)
    took = p.wait_for("the new camera to run", lambda: _holders(p, ["c5"])["c5"] is not None, timeout=10)
    assert streamproc("cameras", "remove", "c2", "--redis", p.redis_url).returncode == 0
    cameras.remove("c2")
    p.wait_for("the removed camera's lease to go", lambda: _holders(p, ["c2"])["c2"] is None, timeout=10)

    names_of_a = {w for w, h in p.heartbeats().items() if h["pid"] == a.pid}
    a.send_signal(signal.SIGKILL)
    a.wait()
    killed = time.monotonic()
    p.wait_for("the survivor to hold every camera", lambda: set(spread(cameras)) - names_of_a == set(spread(cameras))
               and len(spread(cameras)) == 1, timeout=30)  # fmt: skip
    takeover = time.monotonic() - killed
    assert takeover <= LEASE_MS / 1000 + 2.0
    time.sleep(2.0)  # frames flow from the survivor
    p.signal("ingest-b", signal.SIGTERM)
    assert p.procs["ingest-b"].wait(15) == 0
    p.cameras = ["c1", "c2", "c3", "c4", "c5"]
    p.wait_for("the last frames to be finished", lambda: all(lg.in_flight == 0 for lg in p.ledgers().values()))
    codes = p.stop()
    assert codes["detector"] == 0 and codes["alert"] == 0
    _, results = check_outcome(p)
    figures.add("registry", f"new camera running after {took:.2f} s; takeover {takeover:.2f} s after SIGKILL "
                f"(lease {LEASE_MS} ms); {len(results)} results, 0 duplicates, ledger balanced")  # fmt: skip
