"""Configuration: pydantic models for every knob, loaded once at a program's entry and passed down.

A YAML file (``streamproc run --config FILE``) has the shape of :class:`PipelineConfig`; command-line
flags override it. Unknown keys are errors (``extra="forbid"``) so a typo never silently falls back
to a default. YAML is read with ``yaml.safe_load`` only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from streamproc.errors import ConfigError

DEMO_MODEL = Path(__file__).parent / "models" / "demo-line.onnx"
CAMERA_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
LIVE_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "v4l2://", "udp://", "tcp://", "srt://")


class StrictModel(BaseModel):
    """Base for config sections: unknown keys are rejected, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class RedisConfig(StrictModel):
    url: str | None = Field(
        None, description="redis://[user:pass@]host:port/db or rediss:// for TLS; unset starts an embedded Redis"
    )
    cluster: bool = Field(False, description="Talk to a Redis Cluster (keys carry hash tags per shard)")
    prefix: str = Field("sp", pattern=r"^[A-Za-z0-9_\-]{1,32}$", description="Key prefix of every key we own")
    shards: int = Field(4, ge=1, le=1024, description="Number of shard streams cameras are hashed onto")
    tls_ca: Path | None = Field(None, description="CA bundle to verify a rediss:// server")
    tls_cert: Path | None = Field(None, description="Client certificate for mutual TLS")
    tls_key: Path | None = Field(None, description="Client key for mutual TLS")
    socket_timeout_s: float = Field(10.0, gt=0, description="Socket timeout of Redis commands")


class SourceConfig(StrictModel):
    name: str = Field(pattern=CAMERA_NAME, description="Camera name: letters, digits, _ . -")
    uri: str = Field(min_length=1, description="File path, rtsp://, http(s):// (HLS too), or v4l2:///dev/videoN")
    fps: float | None = Field(None, gt=0, description="Frame-rate cap (frames beyond it are sampled out)")
    max_side: int | None = Field(None, ge=32, description="Resize so the longer side is at most this")
    loop: bool = Field(False, description="Replay a file forever")
    realtime: bool = Field(False, description="Pace a file at its native frame rate, as a live camera would")
    mode: Literal["live", "lossless"] | None = Field(
        None,
        description="live: skip stale frames, never wait; lossless: backpressure, every frame processed. "
        "Default: live for network cameras and realtime files, lossless for files",
    )
    max_age_ms: int = Field(2000, ge=0, description="live: frames older than this are skipped (0 = never)")
    max_inflight: int = Field(8, ge=1, le=10_000, description="Frames of this camera queued in Redis at most")
    open_timeout_s: float = Field(10.0, gt=0, description="Time allowed to open the source")
    read_timeout_s: float = Field(5.0, gt=0, description="A live source silent this long is reconnected")
    rtsp_transport: Literal["tcp", "udp"] = Field("tcp", description="RTSP transport")

    @property
    def is_live(self) -> bool:
        """True for network cameras and devices (as opposed to files)."""
        return self.uri.startswith(LIVE_SCHEMES) or self.uri.startswith("/dev/video")

    @property
    def effective_mode(self) -> Literal["live", "lossless"]:
        if self.mode is not None:
            return self.mode
        return "live" if self.is_live or self.realtime else "lossless"


class IngestConfig(StrictModel):
    codec: Literal["jpeg", "raw"] = Field("jpeg", description="Transport codec: jpeg (small) or raw (lossless)")
    jpeg_quality: int = Field(90, ge=1, le=100, description="JPEG quality of the jpeg codec")
    reconnect_initial_s: float = Field(0.5, gt=0, description="First reconnect delay of a live source")
    reconnect_max_s: float = Field(30.0, gt=0, description="Reconnect delay ceiling (exponential, jittered)")
    decode_threads: int = Field(0, ge=0, description="Decoder threads per source (0 = FFmpeg's choice)")


class DetectorConfig(StrictModel):
    model: str = Field(str(DEMO_MODEL), description="Model file: .pt, .onnx, OpenVINO dir, .engine, or .yaml")
    device: str = Field("cpu", pattern=r"^(cpu|cuda|cuda:\d+|mps|\d+)$", description="cpu, cuda or cuda:N")
    half: bool | None = Field(None, description="Half precision; default on for CUDA")
    imgsz: int = Field(640, ge=32, le=4096, description="Inference size, as in YOLO.predict")
    conf: float = Field(0.25, ge=0, le=1, description="Confidence threshold, as in YOLO.predict")
    iou: float = Field(0.7, ge=0, le=1, description="NMS IoU threshold, as in YOLO.predict")
    max_det: int = Field(300, ge=1, description="Maximum detections per frame, as in YOLO.predict")
    nms: bool | None = Field(None, description="As in YOLO.predict: None/True classic NMS, False NMS-free head")
    max_batch: int = Field(8, ge=1, le=256, description="Frames per inference call at most")
    max_wait_ms: int = Field(10, ge=0, description="Longest wait to fill a batch")
    claim_idle_ms: int = Field(
        10_000, ge=100, description="Frames pending this long on a consumer are reclaimed (keep it above 4 batch times)"
    )
    max_deliveries: int = Field(3, ge=1, description="Deliveries before a frame goes to the dead-letter stream")
    threads: int | None = Field(None, ge=1, description="Inference threads (default: all cores)")
    backend: Literal["auto", "native"] = Field(
        "auto", description="auto: on CPU a .pt model runs as its ONNX export (cached; ~3x faster); native: as given"
    )
    results_maxlen: int = Field(20_000, ge=100, description="Entries kept per detections stream")
    max_payload_bytes: int = Field(64 * 2**20, ge=1024, description="Larger frame payloads are dead-lettered")


def _default_zone() -> dict[str, list[tuple[float, float]]]:
    return {}


class RuleConfig(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$", description="Rule name, carried by its alerts")
    classes: list[str] = Field(min_length=1, description="Class names this rule fires on")
    min_conf: float = Field(0.5, ge=0, le=1, description="A frame counts when the class has at least this conf")
    min_frames: int = Field(3, ge=1, description="Frames counted on one tracked object before it fires")
    cameras: list[str] | None = Field(None, description="Cameras the rule applies to (default all)")
    zones: dict[str, list[tuple[float, float]]] = Field(
        default_factory=_default_zone, description="camera -> polygon [[x, y], ...] in frame pixels"
    )
    cooldown_s: float = Field(0.0, ge=0, description="Minimum time between two alerts of this rule per camera")
    action: str = Field("alert", pattern=r"^[A-Za-z0-9_.\-]{1,32}$", description="Action carried by the alert")

    @field_validator("zones")
    @classmethod
    def _polygons(cls, zones: dict[str, list[tuple[float, float]]]) -> dict[str, list[tuple[float, float]]]:
        for camera, polygon in zones.items():
            if len(polygon) < 3:
                raise ValueError(f"zone of camera {camera!r} needs at least 3 points")
        return zones


class TrackerConfig(StrictModel):
    """ByteTrack settings, with Ultralytics' bytetrack.yaml defaults."""

    track_high_thresh: float = Field(0.25, ge=0, le=1, description="First-stage match threshold")
    track_low_thresh: float = Field(0.1, ge=0, le=1, description="Second-stage match threshold")
    new_track_thresh: float = Field(0.25, ge=0, le=1, description="Start a new track at this confidence")
    track_buffer: int = Field(30, ge=1, description="Frames a lost track is kept")
    match_thresh: float = Field(0.8, ge=0, le=1, description="Matching threshold")
    fuse_score: bool = Field(True, description="Fuse detection score with IoU for matching")


class AlertConfig(StrictModel):
    rules: list[RuleConfig] = Field(default_factory=list, description="Alert rules (or --rules FILE)")
    tracker: TrackerConfig = Field(default_factory=TrackerConfig, description="ByteTrack settings")
    merge_iou: float = Field(
        0.7, ge=0, le=1, description="Boxes of different classes overlapping more are one object (before tracking)"
    )
    reorder_timeout_ms: int = Field(
        1000, ge=0, description="Wait this long for a camera's missing earlier frame before moving on"
    )
    alerts_maxlen: int = Field(100_000, ge=100, description="Entries kept per alerts stream")

    @model_validator(mode="after")
    def _unique_rule_names(self) -> AlertConfig:
        names = [r.name for r in self.rules]
        if len(names) != len(set(names)):
            raise ValueError("rule names must be unique")
        return self


class AutoscaleConfig(StrictModel):
    """Detector autoscaling of ``streamproc run`` (see streamproc/autoscale.py)."""

    min_workers: int = Field(1, ge=1, description="Fewest detector processes")
    max_workers: int = Field(4, ge=1, description="Most detector processes")
    up_age_s: float = Field(1.0, gt=0, description="Add a worker when the oldest unfinished frame is older")
    up_backlog_per_worker: int = Field(32, ge=1, description="Add a worker when the backlog exceeds this per worker")
    down_busy: float = Field(0.6, gt=0, le=1, description="Remove one when the rest would be at most this busy")
    down_after_s: float = Field(15.0, ge=0, description="... continuously for this long")
    cooldown_s: float = Field(10.0, ge=0, description="No other change for this long after a change")

    @model_validator(mode="after")
    def _ordered(self) -> AutoscaleConfig:
        if self.max_workers < self.min_workers:
            raise ValueError("max_workers must be >= min_workers")
        return self


class PipelineConfig(StrictModel):
    redis: RedisConfig = Field(default_factory=RedisConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    detector: DetectorConfig = Field(default_factory=DetectorConfig)
    alert: AlertConfig = Field(default_factory=AlertConfig)
    sources: list[SourceConfig] = Field(default_factory=list)
    workers: Annotated[int, Field(ge=1, le=256, description="Detector processes for `streamproc run`")] = 1
    autoscale: AutoscaleConfig | None = Field(None, description="Scale the detector processes of `run` on demand")

    @model_validator(mode="after")
    def _unique_sources(self) -> PipelineConfig:
        names = [s.name for s in self.sources]
        if len(names) != len(set(names)):
            dupes = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"camera names must be unique, repeated: {', '.join(dupes)}")
        return self


def describe_validation_error(err: ValidationError, where: str) -> str:
    """One line for a pydantic error: the first problem, its location and how many more there are."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key (check its spelling against docs/CONFIG.md)"
    more = len(err.errors()) - 1
    suffix = f" (+{more} more)" if more else ""
    return f"{where}: {loc}: {msg}{suffix}"


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping with the safe loader; a missing or malformed file is a ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"config file {path}: cannot read ({e.strerror or e})") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path}: not valid YAML ({str(e).splitlines()[0]})") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level")
    return data


def validate_config(data: dict[str, Any], where: str) -> PipelineConfig:
    """Build a PipelineConfig, turning validation errors into one-line ConfigErrors."""
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(describe_validation_error(e, where)) from e


def load_rules(path: Path) -> list[RuleConfig]:
    """Rules from a YAML file holding ``rules: [...]``."""
    data = load_yaml(path)
    unknown = set(data) - {"rules"}
    if unknown:
        raise ConfigError(f"rules file {path}: unknown top-level key {sorted(unknown)[0]!r} (expected 'rules')")
    try:
        return AlertConfig.model_validate({"rules": data.get("rules", [])}).rules
    except ValidationError as e:
        raise ConfigError(describe_validation_error(e, f"rules file {path}")) from e


def parse_source_flag(flag: str) -> tuple[str, str]:
    """``NAME=URI`` from ``--source``; the error names the flag and the expected form."""
    name, sep, uri = flag.partition("=")
    if not sep or not name or not uri:
        raise ConfigError(f"--source {flag!r}: expected NAME=URI, e.g. --source cam1=rtsp://host/stream")
    return name, uri


def _shown_default(default: Any, factory: Any, required: bool) -> str:
    if required:
        return "required"
    if factory is not None:
        value = factory()
        return "see its section" if isinstance(value, BaseModel) else f"`{value}`"
    if default == str(DEMO_MODEL):
        return "the shipped demo model"
    return f"`{default}`"


def config_reference() -> str:
    """docs/CONFIG.md, generated from the models so that the reference never drifts from the code."""
    sections: list[tuple[str, type[BaseModel]]] = [
        ("redis", RedisConfig),
        ("ingest", IngestConfig),
        ("detector", DetectorConfig),
        ("alert", AlertConfig),
        ("alert.tracker", TrackerConfig),
        ("alert.rules[]", RuleConfig),
        ("sources[]", SourceConfig),
        ("autoscale", AutoscaleConfig),
    ]
    lines = [
        "# Configuration reference",
        "",
        "Generated from `streamproc/config.py` by `python -m streamproc.config > docs/CONFIG.md`",
        "(a test checks it is current). A YAML file passed with `--config` has these sections; flags",
        "override it. Unknown keys are errors.",
        "",
        "Top level: `workers` (detector processes for `streamproc run`, default 1), and the sections below.",
    ]
    for title, model in sections:
        lines += ["", f"## `{title}`", "", "| key | default | description |", "| --- | --- | --- |"]
        for name, info in model.model_fields.items():
            default = _shown_default(info.default, info.default_factory, info.is_required())
            lines.append(f"| `{name}` | {default} | {info.description or ''} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(config_reference(), end="")
