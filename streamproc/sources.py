"""Video sources decoded with PyAV: files, RTSP, HTTP/HLS and V4L2 devices.

A source is opened with timeouts on both the open and every read, so a camera that stalls without
closing its connection (half-open TCP) raises instead of hanging forever. Errors become one-line
:class:`SourceError` messages naming the camera and the URI (credentials redacted).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import av.container
import numpy as np
from numpy.typing import NDArray

from streamproc.config import SourceConfig
from streamproc.errors import SourceError
from streamproc.redact import redact

log = logging.getLogger(__name__)

NETWORK_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "udp://", "tcp://", "srt://")
MAX_CONSECUTIVE_DECODE_ERRORS = 50
TEXT_FORMATS = {"tty"}  # FFmpeg renders text files as "video"; a camera never is one


@dataclass(frozen=True, slots=True)
class RawFrame:
    """A decoded frame before sampling: still in FFmpeg's format, so skipped frames cost no conversion."""

    frame: av.VideoFrame
    pts: int | None
    media_ts: float | None


def target_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(width, height) after limiting the longer side to ``max_side`` (even numbers, aspect kept)."""
    if not max_side or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def to_bgr(raw: RawFrame, size: tuple[int, int]) -> NDArray[np.uint8]:
    """Convert (and resize, in the same pass) to a BGR uint8 array."""
    width, height = size
    if (width, height) == (raw.frame.width, raw.frame.height):
        array = raw.frame.to_ndarray(format="bgr24")
    else:
        array = raw.frame.to_ndarray(format="bgr24", width=width, height=height, interpolation="AREA")
    return np.ascontiguousarray(array)


class VideoSource:
    """One open PyAV container for a camera; iterate :meth:`frames` until the source ends or fails."""

    def __init__(self, cfg: SourceConfig, decode_threads: int = 0) -> None:
        self.cfg = cfg
        self.decode_threads = decode_threads
        self.decode_errors = 0
        self.decoded = 0
        self.expected_frames = 0
        self._container: av.container.InputContainer | None = None
        self.nominal_fps: float | None = None

    @property
    def where(self) -> str:
        return f"camera {self.cfg.name} ({redact(self.cfg.uri)})"

    def _open_args(self) -> tuple[str, str | None, dict[str, str]]:
        uri = self.cfg.uri
        if uri.startswith("v4l2://"):
            return uri.removeprefix("v4l2://"), "v4l2", {}
        if uri.startswith("/dev/video"):
            return uri, "v4l2", {}
        if uri.startswith(("rtsp://", "rtsps://")):
            return uri, None, {"rtsp_transport": self.cfg.rtsp_transport}
        if uri.startswith(NETWORK_SCHEMES):
            return uri, None, {}
        if "://" in uri and not uri.startswith("file://"):
            scheme = uri.split("://", 1)[0]
            raise SourceError(
                f"{self.where}: unknown scheme {scheme!r} (use a file path, rtsp://, http(s):// or v4l2://)"
            )
        path = Path(uri.removeprefix("file://"))
        self._check_file(path)
        return str(path), None, {}

    def _check_file(self, path: Path) -> None:
        if not path.exists():
            raise SourceError(f"{self.where}: file not found (check the path)")
        if path.is_dir():
            raise SourceError(f"{self.where}: is a directory, expected a video file")
        if path.stat().st_size == 0:
            raise SourceError(f"{self.where}: file is empty (0 bytes)")

    def open(self) -> None:
        """Open the container and its first video stream; raises SourceError with the reason."""
        target, fmt, options = self._open_args()
        timeout = (self.cfg.open_timeout_s, self.cfg.read_timeout_s)
        try:
            container = av.open(target, format=fmt, options=options, timeout=timeout)
        except av.error.ExitError as e:  # PyAV's interrupt callback: the open timeout passed
            raise SourceError(f"{self.where}: cannot open (no answer within {self.cfg.open_timeout_s:g} s)") from e
        except av.error.InvalidDataError as e:
            raise SourceError(f"{self.where}: not a readable video (ffmpeg: {e.strerror})") from e
        except (av.error.FFmpegError, OSError) as e:
            raise SourceError(f"{self.where}: cannot open ({redact(str(e))})") from e
        if not container.streams.video or container.format.name in TEXT_FORMATS:
            container.close()
            raise SourceError(f"{self.where}: has no video stream (not a video file?)")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if self.decode_threads:
            stream.codec_context.thread_count = self.decode_threads
        self.expected_frames = stream.frames
        rate = stream.average_rate or stream.guessed_rate
        self.nominal_fps = float(rate) if rate else None
        self._container = container

    def frames(self) -> Iterator[RawFrame]:
        """Decoded frames in order. Corrupt packets are skipped and counted in ``decode_errors``;
        a run of them, a read timeout or an I/O error raises SourceError. A live source never ends:
        the end of its stream (the camera closed the connection) raises SourceError too, so that the
        caller reconnects."""
        container = self._container
        if container is None:
            raise RuntimeError("open() first")
        stream = container.streams.video[0]
        live = self.cfg.is_live
        consecutive = 0
        packets = container.demux(stream)
        try:
            while True:
                started = time.monotonic()
                packet = next(packets, None)
                if packet is None:
                    break
                # A read that hits the timeout makes FFmpeg flush its parser: the frame it held comes
                # out as a packet, and only the next read fails, one more timeout later. Such a late
                # packet means the source was silent for the whole read timeout: stop after it.
                silent_s = time.monotonic() - started
                try:
                    decoded = packet.decode()
                except av.error.InvalidDataError:
                    self.decode_errors += 1
                    consecutive += 1
                    if consecutive > MAX_CONSECUTIVE_DECODE_ERRORS:
                        msg = f"{self.where}: stream is corrupt ({consecutive} bad packets in a row)"
                        raise SourceError(msg) from None
                    decoded = []
                else:
                    consecutive = 0
                for frame in decoded:
                    self.decoded += 1
                    yield RawFrame(frame, frame.pts, float(frame.time) if frame.time is not None else None)
                if live and silent_s >= self.cfg.read_timeout_s:
                    raise SourceError(self._silent(silent_s))
        except av.error.ExitError as e:  # PyAV's interrupt callback: the read timeout passed
            raise SourceError(self._silent(self.cfg.read_timeout_s)) from e
        except av.error.FFmpegError as e:
            raise SourceError(f"{self.where}: read failed ({redact(str(e))})") from e
        if live:
            raise SourceError(f"{self.where}: stream ended (the camera closed the connection)")

    def _silent(self, seconds: float) -> str:
        return f"{self.where}: no data for {seconds:.1f} s (read timeout {self.cfg.read_timeout_s:g} s)"

    def shortfall(self) -> str:
        """Why a file ended early ("" when it did not): its header promised more frames than it had."""
        if self.expected_frames and self.decoded < self.expected_frames:
            return f"{self.where}: ended after {self.decoded} of {self.expected_frames} frames (truncated or corrupt)"
        return ""

    def close(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            except av.error.FFmpegError:
                log.debug("%s: error while closing", self.where)
            self._container = None
