"""``streamproc alert``: track objects per camera, evaluate rules, publish alerts."""

from __future__ import annotations

from streamproc.alerter import Alerter
from streamproc.config import PipelineConfig
from streamproc.health import Heartbeat
from streamproc.model import configure_ultralytics
from workers.common import open_streams, stop_on_signals

CONSUMER = "alerter"


def main(cfg: PipelineConfig) -> int:
    configure_ultralytics()
    stop = stop_on_signals()
    streams = open_streams(cfg, CONSUMER)
    heartbeat = Heartbeat(streams.client, streams.keys, CONSUMER, "alert")
    Alerter(cfg.alert, streams, CONSUMER, stop, heartbeat).run()
    heartbeat.remove()
    return 0
