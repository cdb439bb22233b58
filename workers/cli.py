"""The ``streamproc`` command line: parses flags once, builds the config, and hands it to a worker."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeAlias

import redis

from streamproc.autoscale import parse_range
from streamproc.config import (
    DEMO_MODEL,
    PipelineConfig,
    RuleConfig,
    load_rules,
    load_yaml,
    parse_source_flag,
    validate_config,
)
from streamproc.errors import ConfigError, StreamprocError
from streamproc.metrics import serving
from streamproc.redact import redact, setup_logging
from workers.cameras import add_parser as add_cameras_parser

REDIS_URL_ENV = "STREAMPROC_REDIS_URL"
METRICS_PORT_ENV = "STREAMPROC_METRICS_PORT"
MEDIA = Path(__file__).resolve().parents[1] / "media"
SAMPLE_VIDEOS = (MEDIA / "bottle-detection.mp4", MEDIA / "car-detection.mp4")


PIPELINE_DEFAULTS: dict[str, Any] = {
    "config": None, "redis": None, "source": [], "loop": False, "realtime": False, "fps": None, "model": None,
    "device": None, "workers": None, "rules": None, "codec": None, "imgsz": None, "conf": None, "max_batch": None,
    "metrics_port": 0, "resolved_config": None, "threads": None, "autoscale": None,
}  # fmt: skip


def connection_flags(p: argparse.ArgumentParser) -> None:
    """Where the pipeline's Redis is: for commands that only read or change its state."""
    p.add_argument("--config", type=Path, help="YAML config file (see docs/CONFIG.md)")
    p.add_argument("--redis", metavar="URL", help=f"Redis URL (default: ${REDIS_URL_ENV}, else an embedded Redis)")


def _pipeline_flags(p: argparse.ArgumentParser) -> None:
    connection_flags(p)
    p.add_argument("--source", action="append", default=[], metavar="NAME=URI", help="a camera (repeatable)")
    p.add_argument("--loop", action="store_true", help="replay file sources forever")
    p.add_argument("--realtime", action="store_true", help="play file sources at their native rate")
    p.add_argument("--fps", type=float, help="frame-rate cap for --source cameras")
    p.add_argument("--model", help="model file (.pt, .onnx, OpenVINO dir, .engine)")
    p.add_argument("--device", help="cpu, cuda or cuda:N")
    p.add_argument("--workers", type=int, help="detector processes (run)")
    p.add_argument("--rules", type=Path, help="YAML file with alert rules")
    p.add_argument("--codec", choices=["jpeg", "raw"], help="frame transport codec")
    p.add_argument("--imgsz", type=int, help="inference size")
    p.add_argument("--conf", type=float, help="confidence threshold")
    p.add_argument("--max-batch", type=int, help="frames per inference call at most")
    p.add_argument("--threads", type=int, help="inference threads per detector (default: all cores)")
    p.add_argument("--autoscale", metavar="MIN:MAX", help="run: scale detector processes with demand")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ.get(METRICS_PORT_ENV, "0")),
        help=f"serve /metrics and /healthz on this port (default ${METRICS_PORT_ENV}, else off)",
    )
    p.add_argument("--resolved-config", type=Path, help=argparse.SUPPRESS)


def build_config(args: argparse.Namespace) -> PipelineConfig:
    """Config file (or the supervisor's resolved JSON), then flags on top; validated once."""
    if args.resolved_config:
        data: dict[str, Any] = json.loads(args.resolved_config.read_text(encoding="utf-8"))
        return validate_config(data, "resolved config")
    data = load_yaml(args.config) if args.config else {}
    where = f"config file {args.config}" if args.config else "flags"
    _apply_flags(data, args)
    cfg = validate_config(data, where)
    if args.rules:
        rules: list[RuleConfig] = load_rules(args.rules)
        cfg.alert = cfg.alert.model_copy(update={"rules": rules})
    return cfg


def _apply_flags(data: dict[str, Any], args: argparse.Namespace) -> None:
    redis_url = args.redis or os.environ.get(REDIS_URL_ENV)
    if redis_url:
        data.setdefault("redis", {})["url"] = redis_url
    if args.source:
        data["sources"] = []
        for flag in args.source:
            name, uri = parse_source_flag(flag)
            source: dict[str, Any] = {"name": name, "uri": uri, "loop": args.loop, "realtime": args.realtime}
            if args.fps:
                source["fps"] = args.fps
            data["sources"].append(source)
    detector = {
        "model": args.model,
        "device": args.device,
        "imgsz": args.imgsz,
        "conf": args.conf,
        "max_batch": args.max_batch,
        "threads": args.threads,
    }
    data.setdefault("detector", {}).update({k: v for k, v in detector.items() if v is not None})
    if args.codec:
        data.setdefault("ingest", {})["codec"] = args.codec
    if args.workers is not None:
        data["workers"] = args.workers
    if args.autoscale:
        try:
            low, high = parse_range(args.autoscale)
        except ValueError as e:
            raise ConfigError(str(e)) from e
        data["autoscale"] = {**data.get("autoscale", {}), "min_workers": low, "max_workers": high}


def _cmd_run(args: argparse.Namespace) -> int:
    from workers.common import stop_on_signals
    from workers.run import run

    cfg = build_config(args)
    code, _ = run(cfg, report=args.report, log_level=args.log_level, stop=stop_on_signals())
    return code


def _cmd_ingest(args: argparse.Namespace) -> int:
    from workers.ingest import main

    cfg = build_config(args)
    with serving(args.metrics_port):
        return main(cfg, registry=args.registry, lease_ms=args.lease_ms)


def _cmd_cameras(args: argparse.Namespace) -> int:
    from workers.cameras import main

    return main(build_config(args), args)


def _cmd_detect(args: argparse.Namespace) -> int:
    from workers.detect import main

    cfg = build_config(args)
    with serving(args.metrics_port):
        return main(cfg)


def _cmd_alert(args: argparse.Namespace) -> int:
    from workers.alert import main

    cfg = build_config(args)
    with serving(args.metrics_port):
        return main(cfg)


def _cmd_tail(args: argparse.Namespace) -> int:
    from workers.tail import main

    return main(build_config(args), args.kind, camera=args.camera, from_start=args.from_start, count=args.count)


def _cmd_status(args: argparse.Namespace) -> int:
    from workers.status import main

    return main(build_config(args), as_json=args.json)


def _cmd_demo(args: argparse.Namespace) -> int:
    from workers.demo import main

    return main(
        report=args.report,
        redis_url=args.redis or os.environ.get(REDIS_URL_ENV),
        seconds=args.seconds,
        media=args.media,
        log_level=args.log_level,
    )


def _cmd_bench(args: argparse.Namespace) -> int:
    from workers.bench import BenchSettings, main

    model = Path(args.model)
    weights = args.weights or (str(model.with_suffix(".pt")) if model.with_suffix(".pt").exists() else args.model)
    settings = BenchSettings(
        model=args.model,
        weights=weights,
        imgsz=args.imgsz,
        cameras=args.cameras,
        duration_s=args.duration,
        max_batch=args.max_batch,
        device=args.device,
        workers=args.workers,
        load=args.load,
        videos=SAMPLE_VIDEOS,
        warmup_s=args.warmup,
        threads=args.threads,
    )
    return main(settings, args.json, args.markdown)


def _cmd_export(args: argparse.Namespace) -> int:
    from streamproc.export import export_model
    from streamproc.model import configure_ultralytics, resolve_model

    configure_ultralytics()
    out = export_model(resolve_model(args.model), args.format, imgsz=args.imgsz, half=args.half,
                       device=args.device, batch=args.max_batch)  # fmt: skip
    print(out)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamproc", description="Real-time video analytics on Redis Streams")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = p.add_subparsers(dest="command", required=True)
    commands: dict[str, tuple[str, Callable[[argparse.Namespace], int]]] = {
        "run": ("ingest + detector pool + alerter on this machine", _cmd_run),
        "ingest": ("decode cameras and publish frames", _cmd_ingest),
        "detect": ("one detector worker", _cmd_detect),
        "alert": ("track objects, evaluate rules, publish alerts", _cmd_alert),
        "tail": ("print stream entries as JSON lines", _cmd_tail),
        "status": ("ledger, cameras, workers, streams", _cmd_status),
    }
    p.set_defaults(**PIPELINE_DEFAULTS)
    for name, (help_text, func) in commands.items():
        cmd = sub.add_parser(name, help=help_text)
        if name in ("tail", "status"):
            connection_flags(cmd)
        else:
            _pipeline_flags(cmd)
        cmd.set_defaults(func=func)
        if name == "run":
            cmd.add_argument("--report", metavar="PATH", help="write the summary as JSON")
        if name == "tail":
            cmd.add_argument("kind", choices=["detections", "alerts", "dead"])
            cmd.add_argument("--camera", help="only this camera")
            cmd.add_argument("--from-start", action="store_true", help="from the oldest entry, not only new ones")
            cmd.add_argument("--count", type=int, help="stop after N entries")
            cmd.add_argument("--json", action="store_true", help="JSON lines (the default output is JSON too)")
        if name == "status":
            cmd.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "ingest":
            cmd.add_argument("--registry", action="store_true", help="also run a share of the registry's cameras")
            cmd.add_argument("--lease-ms", type=int, default=5000, help="camera lease time (takeover after it)")
    add_cameras_parser(sub, connection_flags).set_defaults(func=_cmd_cameras)
    _bench_parser(sub)
    _export_parser(sub)
    _demo_parser(sub)
    return p


Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _bench_parser(sub: Subparsers) -> None:
    bench = sub.add_parser("bench", help="bare model vs plain Ultralytics vs the pipeline, side by side")
    bench.add_argument("--model", default=str(DEMO_MODEL), help="model the bare model and the pipeline run")
    bench.add_argument("--weights", help="weights for plain Ultralytics (default: the .pt beside --model)")
    bench.add_argument("--imgsz", type=int, default=640)
    bench.add_argument("--cameras", type=int, default=4)
    bench.add_argument("--duration", type=float, default=30.0, help="seconds measured per pipeline run")
    bench.add_argument("--max-batch", type=int, default=8)
    bench.add_argument("--device", default="cpu")
    cores = os.cpu_count() or 1
    bench.add_argument("--workers", type=int, default=cores, help="detector processes of the pipeline (cores)")
    bench.add_argument("--threads", type=int, default=1, help="inference threads per pipeline detector")
    bench.add_argument("--load", type=float, default=0.7, help="fraction of capacity for the latency run")
    bench.add_argument("--warmup", type=float, default=8.0, help="seconds of each pipeline run not measured")
    bench.add_argument("--json", metavar="PATH", help="write the results as JSON")
    bench.add_argument("--markdown", metavar="PATH", help="write the results as a markdown table")
    bench.set_defaults(func=_cmd_bench)


def _export_parser(sub: Subparsers) -> None:
    export = sub.add_parser("export", help="export a model for the detector (dynamic batch)")
    export.add_argument("--model", required=True, help="weights to export (.pt)")
    export.add_argument("--format", required=True, choices=["onnx", "openvino", "engine"])
    export.add_argument("--imgsz", type=int, default=640)
    export.add_argument("--half", action="store_true", help="FP16 (engine, openvino)")
    export.add_argument("--device", default="cpu", help="cuda:0 for TensorRT engines")
    export.add_argument("--max-batch", type=int, default=16, help="largest batch of an engine")
    export.set_defaults(func=_cmd_export)


def _demo_parser(sub: Subparsers) -> None:
    demo = sub.add_parser("demo", help="the demo line and sample videos, scored against ground truth")
    demo.add_argument("--report", metavar="PATH", help="write the report as JSON")
    demo.add_argument("--redis", metavar="URL", help="use this Redis instead of an embedded one")
    demo.add_argument("--seconds", type=float, default=40.0, help="length of the generated line video")
    demo.add_argument("--media", type=Path, help="folder with the sample videos")
    demo.set_defaults(func=_cmd_demo)


ACL_HINT = "the Redis user lacks an ACL rule (see docs/SECURITY.md for the rules of each worker)"


def acl_refusal(err: redis.exceptions.ResponseError) -> bool:
    """True when Redis refused a command or key to this user, directly or inside a Lua script."""
    text = str(err)
    return isinstance(err, redis.exceptions.NoPermissionError) or "user executing the script can't" in text


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        func: Callable[[argparse.Namespace], int] = args.func
        code = func(args)
        # The work is done. Python puts default signal handlers back while it shuts down, so a stop
        # request arriving now would turn a clean exit into "killed by SIGTERM": ignore it instead.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        return code
    except StreamprocError as e:
        print(f"streamproc: error: {redact(str(e))}", file=sys.stderr)  # a flag may hold a URL with credentials
        return 2
    except redis.exceptions.ResponseError as e:
        if not acl_refusal(e):
            raise
        print(f"streamproc: error: Redis refused a command ({redact(str(e))}): {ACL_HINT}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
