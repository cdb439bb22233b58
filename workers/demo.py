"""``streamproc demo``: the demo line and the two sample videos through the whole pipeline.

The line camera plays a generated conveyor video (rendered once, cached) whose ground truth says which
parts are defective; the report scores the reject alerts against it (recall, precision, latency).
The sample videos run as two more cameras. Every source plays at its native rate, like a camera.
"""

from __future__ import annotations

import logging
from pathlib import Path

from streamproc.config import (
    DEMO_MODEL,
    AlertConfig,
    DetectorConfig,
    PipelineConfig,
    RedisConfig,
    SourceConfig,
    TrackerConfig,
    load_rules,
)
from streamproc.demo.line import LineTruth, render_line
from streamproc.demo.score import score_rejects
from streamproc.report import write_report
from workers.common import stop_on_signals
from workers.run import run

log = logging.getLogger("streamproc.demo")

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "streamproc" / "demo" / "rules.yaml"
MEDIA_DIRS = (REPO / "media", REPO.parent / "shared" / "media")
CACHE = Path.home() / ".cache" / "streamproc" / "demo"
LINE_SEED = 0
REJECT_RULE = "reject-defective-part"


def line_video(seconds: float) -> tuple[Path, LineTruth]:
    """The demo line video and its ground truth, rendered on first use."""
    video = CACHE / f"line-seed{LINE_SEED}-{seconds:g}s.mp4"
    truth_path = video.with_suffix(".truth.json")
    if not (video.exists() and truth_path.exists()):
        CACHE.mkdir(parents=True, exist_ok=True)
        print(f"rendering the demo line video ({seconds:g} s) to {video} ...", flush=True)
        truth = render_line(video, seconds=seconds, seed=LINE_SEED)
        truth.save(truth_path)
    return video, LineTruth.load(truth_path)


def sample_sources(media: Path | None) -> list[SourceConfig]:
    """The two real sample videos as cameras, where they can be found."""
    folder = media or next((d for d in MEDIA_DIRS if (d / "bottle-detection.mp4").exists()), None)
    if folder is None:
        print("sample videos not found (looked in media/ and ../shared/media): running the line camera only")
        return []
    return [
        SourceConfig(name="bottles", uri=str(folder / "bottle-detection.mp4"), realtime=True, fps=6),
        SourceConfig(name="parking", uri=str(folder / "car-detection.mp4"), realtime=True, fps=6),
    ]


def demo_config(video: Path, media: Path | None, redis_url: str | None) -> PipelineConfig:
    return PipelineConfig(
        redis=RedisConfig(url=redis_url),
        sources=[SourceConfig(name="line", uri=str(video), realtime=True), *sample_sources(media)],
        detector=DetectorConfig(model=str(DEMO_MODEL), imgsz=320),
        # parts cross the frame in ~2.5 s: a looser match keeps one track per part across dropped frames
        alert=AlertConfig(rules=load_rules(RULES), tracker=TrackerConfig(match_thresh=0.9)),
    )


def main(
    *, report: str | None, redis_url: str | None, seconds: float, media: Path | None, log_level: str = "WARNING"
) -> int:
    video, truth = line_video(seconds)
    cfg = demo_config(video, media, redis_url)
    print(f"demo: {len(cfg.sources)} cameras ({', '.join(s.name for s in cfg.sources)}), model {DEMO_MODEL.name}")
    code, summary = run(cfg, log_level=log_level, stop=stop_on_signals())
    # frame index from the media timestamp: seqs continue across runs on the same Redis, PTS do not
    rejects = [
        {**a, "seq": round(a["ts"] * truth.fps)}
        for a in summary["alert_list"]
        if a["camera"] == "line" and a["rule"] == REJECT_RULE
    ]
    score = score_rejects(truth, rejects)
    print(score.summary(), flush=True)
    summary["line_score"] = score.to_dict()
    if report:
        write_report(report, summary)
    return code
