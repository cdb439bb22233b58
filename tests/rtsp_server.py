"""A live RTSP camera for tests: GStreamer's RTSP server replaying an H.264 mp4 in a loop, forever.

Run with Debian's Python, where ``gi`` lives (not the project venv)::

    /usr/bin/python3 tests/rtsp_server.py --port 8554 --file clip.mp4 [--mount /cam] [--fps 25]

The file's H.264 access units are read once, at start-up (``filesrc ! qtdemux ! h264parse``, SPS/PPS
repeated before every keyframe). Each client session gets its own pipeline
``appsrc is-live=true do-timestamp=true ! h264parse ! rtph264pay``; a thread pushes the access units
into it at the file's frame rate on the wall clock, from the first one (a keyframe) to the last and
then again from the first: a live, endless, timestamped feed, as a camera sends. Frames are produced
only while the session's pipeline is playing, as a camera that drops what nobody watches. Prints
``ready`` on stdout once the port is listening; SIGKILL makes the camera go away.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

LAUNCH = (
    "( appsrc name=src is-live=true do-timestamp=true format=time "
    "caps=video/x-h264,stream-format=byte-stream,alignment=au "
    "! h264parse ! rtph264pay name=pay0 pt=96 config-interval=1 )"
)


def read_access_units(path: str) -> tuple[list[bytes], float]:
    """Every H.264 access unit of the file, in decode order, as Annex B bytes; and the frame rate."""
    pipeline = Gst.parse_launch(
        f'filesrc location="{path}" ! qtdemux ! h264parse config-interval=-1 '
        "! video/x-h264,stream-format=byte-stream,alignment=au ! appsink name=sink sync=false"
    )
    sink = pipeline.get_by_name("sink")
    pipeline.set_state(Gst.State.PLAYING)
    units: list[bytes] = []
    fps = 0.0
    while True:
        sample = sink.emit("try-pull-sample", 10 * Gst.SECOND)
        if sample is None:
            break
        if not fps:
            structure = sample.get_caps().get_structure(0)
            ok, num, den = structure.get_fraction("framerate")
            fps = num / den if ok and num and den else 0.0
        buffer = sample.get_buffer()
        units.append(buffer.extract_dup(0, buffer.get_size()))
    pipeline.set_state(Gst.State.NULL)
    if not units:
        raise SystemExit(f"rtsp_server: no H.264 video in {path}")
    return units, fps or 25.0


class LoopingFeed:
    """Creates a session pipeline per client and feeds it the file's access units in real time."""

    def __init__(self, units: list[bytes], fps: float) -> None:
        self.units = units
        self.interval = 1.0 / fps

    def on_media_configure(self, _factory: GstRtspServer.RTSPMediaFactory, media: GstRtspServer.RTSPMedia) -> None:
        appsrc = media.get_element().get_by_name_recurse_up("src")
        done = threading.Event()
        media.connect("unprepared", lambda _media: done.set())
        threading.Thread(target=self.feed, args=(appsrc, done), daemon=True).start()

    def feed(self, appsrc: Gst.Element, done: threading.Event) -> None:
        while not done.is_set() and appsrc.get_state(0)[1] != Gst.State.PLAYING:
            time.sleep(0.005)
        index, due = 0, time.monotonic()
        while not done.is_set():
            buffer = Gst.Buffer.new_wrapped(self.units[index])
            if appsrc.emit("push-buffer", buffer) != Gst.FlowReturn.OK:
                return  # the session ended (flushing or EOS)
            index = (index + 1) % len(self.units)
            due += self.interval
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                due = time.monotonic()  # fell behind (busy machine): go on from now, never burst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--file", required=True, help="an mp4 (or mov/mkv qtdemux reads) with H.264 video")
    parser.add_argument("--mount", default="/cam")
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--fps", type=float, help="frame rate (default: the file's)")
    args = parser.parse_args()

    Gst.init(None)
    units, fps = read_access_units(args.file)
    feed = LoopingFeed(units, args.fps or fps)

    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(LAUNCH)
    factory.set_shared(False)
    factory.connect("media-configure", feed.on_media_configure)
    server = GstRtspServer.RTSPServer()
    server.set_address(args.address)
    server.set_service(str(args.port))
    server.get_mount_points().add_factory(args.mount, factory)
    if not server.attach(None):
        print(f"rtsp_server: cannot listen on {args.address}:{args.port}", file=sys.stderr)
        return 1
    print(f"ready rtsp://{args.address}:{args.port}{args.mount} ({len(units)} frames at {fps:g} fps)", flush=True)
    GLib.MainLoop().run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
