"""``streamproc detect``: one detector worker of the pool."""

from __future__ import annotations

import logging
import os

from streamproc.config import PipelineConfig
from streamproc.detector import Detector, Fault
from streamproc.health import Heartbeat, new_worker_id
from streamproc.model import ModelRunner
from workers.common import open_streams, stop_on_signals

log = logging.getLogger("streamproc.detect")
FAULT_ENV = "STREAMPROC_FAULT"  # tests only: see streamproc.detector.Fault


def main(cfg: PipelineConfig, worker_id: str | None = None) -> int:
    stop = stop_on_signals()
    worker_id = worker_id or new_worker_id("detect")
    streams = open_streams(cfg, worker_id)
    runner = ModelRunner.load(cfg.detector)
    log.info("detector %s: model %s on %s, batch <= %d", worker_id, runner.name, runner.device, cfg.detector.max_batch)
    heartbeat = Heartbeat(streams.client, streams.keys, worker_id, "detect")
    fault = Fault.parse(os.environ.get(FAULT_ENV))
    Detector(cfg.detector, runner, streams, worker_id, stop, heartbeat, fault=fault).run()
    heartbeat.remove()
    return 0
