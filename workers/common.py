"""What every worker process does the same way: logging, signals, connecting to Redis."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

import redis

from streamproc.config import PipelineConfig
from streamproc.errors import StreamprocError
from streamproc.keys import Keys
from streamproc.transport import REDIS_ERRORS, Streams, connect, describe_redis_error

log = logging.getLogger("streamproc")


def stop_on_signals() -> threading.Event:
    """An Event set by SIGTERM or SIGINT: workers stop reading, finish what they hold, and exit 0."""
    stop = threading.Event()

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: finishing work in hand", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def keys_for(cfg: PipelineConfig) -> Keys:
    return Keys(cfg.redis.prefix, cfg.redis.shards)


def open_streams(cfg: PipelineConfig, name: str) -> Streams:
    """Connect and check the server answers (one clear line if not, with credentials redacted)."""
    url = cfg.redis.url
    if not url:
        raise StreamprocError("no Redis URL: pass --redis URL or set redis.url in the config")
    client = connect(cfg.redis, url, name=name)
    try:
        client.ping()
    except redis.exceptions.AuthenticationError as e:
        raise StreamprocError(f"{describe_redis_error(url, e)}: check the user and password") from e
    except REDIS_ERRORS as e:
        raise StreamprocError(describe_redis_error(url, e)) from e
    except redis.exceptions.ResponseError as e:
        raise StreamprocError(describe_redis_error(url, e)) from e
    return Streams(client, keys_for(cfg))
