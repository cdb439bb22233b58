"""Live network sources for tests: a real RTSP camera that can go away and come back, and a TCP proxy
that can stall a connection without closing it (half-open).

:class:`RtspServer` runs ``tests/rtsp_server.py`` (GStreamer's RTSP server) with Debian's
``/usr/bin/python3``, where ``gi`` lives; the Debian packages it needs are installed by
``scripts/install-test-deps.sh``. ``stop()`` kills the process (the camera goes away: its TCP
connections are closed by the kernel), ``start()`` brings it back on the same port.

:class:`StallingProxy` sits between a client and a server. ``freeze()`` stops forwarding bytes in both
directions while keeping every TCP connection open, which is what a client sees when a camera or a
network box dies without closing its connections; ``thaw()`` drops the stalled connections (they never
recover) and forwards new ones normally again.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")
READY_TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gst_rtsp_available() -> str:
    """ "" when GStreamer's RTSP server can run here, else why not (the reason a test is skipped with)."""
    if not os.path.exists(SYSTEM_PYTHON):
        return f"{SYSTEM_PYTHON} not found"
    probe = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
        "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
        "missing = [e for e in ('appsrc', 'qtdemux', 'h264parse', 'rtph264pay') if not Gst.ElementFactory.find(e)]; "
        "assert not missing, missing"
    )
    result = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=30, check=False)
    if result.returncode:
        last = (result.stderr.strip().splitlines() or ["?"])[-1]
        return f"GStreamer RTSP server unavailable ({last}): run scripts/install-test-deps.sh"
    return ""


def require_gst_rtsp() -> None:
    if reason := gst_rtsp_available():
        pytest.skip(reason)


class RtspServer:
    """A live RTSP camera at ``rtsp://127.0.0.1:PORT/MOUNT`` replaying ``file`` in a loop."""

    def __init__(self, file: Path, log_path: Path, port: int | None = None, mount: str = "/cam") -> None:
        self.file = file
        self.port = port or free_port()
        self.mount = mount
        self.log_path = log_path
        self.proc: subprocess.Popen[str] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}{self.mount}"

    def start(self) -> RtspServer:
        """Start serving (again, on the same port) and return once the port listens."""
        assert self.proc is None, "already running"
        cmd = [SYSTEM_PYTHON, str(SERVER_SCRIPT), "--port", str(self.port), "--file", str(self.file)]
        cmd += ["--mount", self.mount]
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], READY_TIMEOUT_S)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("ready"):
            self.stop()
            raise RuntimeError(f"RTSP server did not start: {self.log_path.read_text()[-2000:]}")
        self.starts += 1
        return self

    def stop(self) -> None:
        """Kill the server: the camera goes away without a goodbye (no RTSP TEARDOWN, no EOS)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def __enter__(self) -> RtspServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


class _Link:
    """One proxied connection: the client's socket and ours to the server."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.closed = threading.Event()

    def close(self) -> None:
        self.closed.set()
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


class StallingProxy:
    """A TCP proxy on 127.0.0.1 that forwards to ``target`` and can be frozen (half-open stall)."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.flowing = threading.Event()
        self.flowing.set()
        self.links: list[_Link] = []
        self.connections = 0
        self.bytes_forwarded = 0
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def url(self, mount: str = "/cam") -> str:
        return f"rtsp://127.0.0.1:{self.port}{mount}"

    def freeze(self) -> None:
        """Stop forwarding in both directions; every connection stays open (nothing is closed or reset)."""
        self.flowing.clear()

    def thaw(self) -> None:
        """Drop the connections that stalled (a half-open connection never comes back), then forward again."""
        with self._lock:
            stalled, self.links = self.links, []
        for link in stalled:
            link.close()
        self.flowing.set()

    def close(self) -> None:
        self._stopped.set()
        self.flowing.set()
        with contextlib.suppress(OSError):
            self.listener.close()
        with self._lock:
            links, self.links = self.links, []
        for link in links:
            link.close()

    def __enter__(self) -> StallingProxy:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()  # the server is down: refuse as it would
                continue
            upstream.settimeout(None)
            link = _Link(client, upstream)
            with self._lock:
                self.links.append(link)
                self.connections += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(link, src, dst), daemon=True).start()

    def _pump(self, link: _Link, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not link.closed.is_set():
                if not self.flowing.is_set():
                    time.sleep(0.02)  # frozen: read nothing, send nothing, close nothing
                    continue
                ready, _, _ = select.select([src], [], [], 0.05)
                if not ready or not self.flowing.is_set():
                    continue
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
                self.bytes_forwarded += len(data)
        except (OSError, ValueError):
            pass
        link.close()
