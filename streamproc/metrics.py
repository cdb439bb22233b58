"""Prometheus metrics and the health endpoint of each worker process.

``--metrics-port N`` (or ``STREAMPROC_METRICS_PORT``) serves ``/metrics`` (Prometheus text format) and
``/healthz`` (200 while the worker's main loop has turned within the last ``HEALTHY_WITHIN_S`` seconds,
503 otherwise: a stuck worker fails its liveness probe). Labels carry camera names, never URIs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import cast
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import Counter, Gauge, Histogram, make_wsgi_app

HEALTHY_WITHIN_S = 60.0

FRAMES = Counter("streamproc_frames", "Frames by camera and outcome (read, published, dropped_<reason>)",
                 ["camera", "outcome"])  # fmt: skip
RESULTS = Counter("streamproc_results", "Frames finished by detectors, by outcome", ["outcome"])
BATCH_SIZE = Histogram("streamproc_batch_size", "Frames per inference call", buckets=(1, 2, 4, 8, 16, 32, 64))
INFERENCE_SECONDS = Histogram("streamproc_inference_seconds", "Model time per batch",
                              buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))  # fmt: skip
LATENCY_SECONDS = Histogram("streamproc_latency_seconds", "Capture to result published",
                            buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10))  # fmt: skip
ALERTS = Counter("streamproc_alerts", "Alerts published", ["camera", "rule"])
BACKLOG = Gauge("streamproc_backlog_frames", "Frames waiting or in process in Redis (all shards)")
OLDEST_AGE = Gauge("streamproc_oldest_frame_age_seconds", "Age of the oldest frame not yet finished")
LAST_LOOP = Gauge("streamproc_last_loop_timestamp_seconds", "When the worker's main loop last turned")


class _Liveness:
    last = 0.0


def beat() -> None:
    """Mark the main loop alive (read by /healthz)."""
    _Liveness.last = time.time()
    LAST_LOOP.set(_Liveness.last)


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return


def _app() -> Callable[[dict[str, object], Callable[..., object]], Iterable[bytes]]:
    metrics = make_wsgi_app()

    def app(environ: dict[str, object], start_response: Callable[..., object]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            healthy = time.time() - _Liveness.last < HEALTHY_WITHIN_S
            start_response("200 OK" if healthy else "503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"ok\n" if healthy else b"main loop stuck\n"]
        return cast(Iterable[bytes], metrics(environ, start_response))

    return app


@contextmanager
def serving(port: int) -> Iterator[None]:
    """Serve /metrics and /healthz on ``port`` from a thread while the block runs (0: do nothing).

    On the way out the server first finishes the request it is answering: a worker that exits while
    Prometheus scrapes it would otherwise cut the page short, and an empty page reads as every series gone.
    """
    if not port:
        yield
        return
    beat()
    server = make_server("0.0.0.0", port, _app(), handler_class=_Quiet)  # noqa: S104 (probes come from outside)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
