"""Real worker processes for the fault-tolerance tests: start, kill, pause and stop them, and check the
outcome through Redis (ledger identity, one result per frame)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import yaml

from streamproc.keys import Keys
from streamproc.ledger import CameraLedger, read_ledgers
from streamproc.messages import Detection
from streamproc.observe import pipeline_idle
from tests.conftest import DEMO_ONNX

KEYS = Keys()
LIVE: list[Pipeline] = []  # every pipeline a test made; conftest kills what is left after each test


@dataclass
class Pipeline:
    redis_url: str
    tmp: Path
    config: Path
    cameras: list[str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        redis_url: str,
        tmp: Path,
        sources: dict[str, str],
        *,
        detector: dict[str, Any] | None = None,
        source_options: dict[str, Any] | None = None,
        rules: Path | None = None,
    ) -> Pipeline:
        config: dict[str, Any] = {
            "redis": {"url": redis_url},
            "sources": [{"name": n, "uri": u, **(source_options or {})} for n, u in sources.items()],
            "detector": {"model": str(DEMO_ONNX), "imgsz": 320, "claim_idle_ms": 1000, **(detector or {})},
        }
        if rules is not None:
            config["alert"] = yaml.safe_load(rules.read_text())
        path = tmp / "streamproc.yaml"
        path.write_text(yaml.safe_dump(config))
        pipeline = cls(redis_url, tmp, path, list(sources))
        LIVE.append(pipeline)
        return pipeline

    @property
    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    def start(
        self, name: str, role: str, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
    ) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
        argv = [sys.executable, "-m", "workers", "--log-level", "INFO", role, "--config", str(self.config), *args]
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def heartbeats(self) -> dict[str, dict[str, Any]]:
        raw = self.client.hgetall(KEYS.workers)
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    def wait_for(self, what: str, condition: Any, timeout: float = 60.0) -> float:
        """Poll ``condition()`` until true; returns the seconds it took."""
        started = time.monotonic()
        while not condition():
            if time.monotonic() - started > timeout:
                logs = "\n".join(f"--- {n}\n{self.log(n)[-1500:]}" for n in self.procs)
                raise AssertionError(f"timed out waiting for {what}\n{logs}")
            time.sleep(0.1)
        return time.monotonic() - started

    def wait_detectors(self, count: int) -> None:
        self.wait_for(
            f"{count} detectors", lambda: sum(h["kind"] == "detect" for h in self.heartbeats().values()) >= count
        )

    def ledgers(self) -> dict[str, CameraLedger]:
        return read_ledgers(self.client, KEYS, self.cameras)

    def all_processed(self) -> bool:
        ledgers = self.ledgers()
        states = {k.decode(): json.loads(v)["state"] for k, v in self.client.hgetall(KEYS.camera_state).items()}
        finished = all(states.get(c) in ("finished", "failed") for c in self.cameras)
        return finished and all(lg.in_flight == 0 for lg in ledgers.values()) and pipeline_idle(self.client, KEYS)

    def results(self) -> list[Detection]:
        out = []
        for stream in KEYS.all_detections():
            out += [Detection.from_fields(f) for _, f in self.client.xrange(stream)]
        return out

    def signal(self, name: str, sig: signal.Signals) -> None:
        self.procs[name].send_signal(sig)

    def kill_all(self) -> None:
        """SIGKILL whatever still runs (after a failed test)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def stop(self, timeout: float = 30.0) -> dict[str, int]:
        """SIGTERM every running worker; returns their exit codes."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = {}
        for name, proc in self.procs.items():
            codes[name] = proc.wait(timeout)
        return codes


def check_outcome(pipeline: Pipeline) -> tuple[dict[str, CameraLedger], Counter[tuple[str, int]]]:
    """The two promises: every frame accounted for, and at most one result per (camera, seq)."""
    ledgers = pipeline.ledgers()
    for camera, ledger in ledgers.items():
        assert ledger.unaccounted == 0, f"{camera}: {ledger}"
    results = Counter((d.camera, d.seq) for d in pipeline.results())
    duplicates = {k: n for k, n in results.items() if n > 1}
    assert not duplicates, f"duplicate results: {sorted(duplicates)[:10]}"
    for camera, ledger in ledgers.items():
        produced = sum(1 for c, _ in results if c == camera)
        assert produced == ledger.processed + ledger.dropped.get("stale", 0), camera
    return ledgers, results
