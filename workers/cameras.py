"""``streamproc cameras add|remove|list``: the camera registry, changed at run time (no restarts)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

from streamproc.config import PipelineConfig
from streamproc.redact import redact
from streamproc.registry import Registry, describe, parse_camera
from workers.common import open_streams

OPTIONS = ("fps", "max_side", "realtime", "loop", "mode", "max_inflight", "max_age_ms")


def main(cfg: PipelineConfig, args: argparse.Namespace) -> int:
    registry = Registry(open_streams(cfg, "cameras"))
    if args.action == "add":
        options = {k: getattr(args, k) for k in OPTIONS if getattr(args, k) not in (None, False)}
        source = parse_camera(args.name, args.uri, options)
        registry.add(source)
        print(f"camera {source.name} registered ({redact(source.uri)})")
        return 0
    if args.action == "remove":
        if not registry.remove(args.name):
            print(f"camera {args.name} is not registered")
            return 1
        print(f"camera {args.name} removed")
        return 0
    cameras = registry.cameras()
    if args.json:
        print(json.dumps({n: {**s.model_dump(mode="json"), "uri": redact(s.uri)} for n, s in cameras.items()}))
    else:
        print(describe(cameras))
    return 0


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], flags: Callable[[argparse.ArgumentParser], None]
) -> argparse.ArgumentParser:
    cameras = sub.add_parser("cameras", help="add, remove and list cameras in the registry")
    actions = cameras.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="register a camera (or change it)")
    add.add_argument("name")
    add.add_argument("uri")
    add.add_argument("--fps", type=float)
    add.add_argument("--max-side", dest="max_side", type=int)
    add.add_argument("--realtime", action="store_true")
    add.add_argument("--loop", action="store_true")
    add.add_argument("--mode", choices=["live", "lossless"])
    add.add_argument("--max-inflight", dest="max_inflight", type=int)
    add.add_argument("--max-age-ms", dest="max_age_ms", type=int)
    remove = actions.add_parser("remove", help="unregister a camera (its worker stops it)")
    remove.add_argument("name")
    listing = actions.add_parser("list", help="registered cameras")
    listing.add_argument("--json", action="store_true")
    for action in (add, remove, listing):
        flags(action)
    return cameras
