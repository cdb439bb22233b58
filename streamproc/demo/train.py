"""Train the demo detector shipped as ``streamproc/models/demo-line.{pt,onnx,json}``.

Run ``python -m streamproc.demo.train [--out streamproc/models] [--epochs N] [--seed S] [--media DIR]``.

No weights can be downloaded where this project runs, so the demo ships its own small YOLO26n, trained from
scratch (``YOLO("yolo26n.yaml")``) on CPU in about 30 minutes on a 2-core machine (docs/DEMO.md). Classes, in order:
``part, scratch, missing_corner, wrong_colour, bottle, car``.

Data (generated into ``--workdir``, never committed):

* frames of the synthetic conveyor line (:mod:`streamproc.demo.line`) with seeds 1..N, never the demo
  video's seed 0, labelled from the exact scene geometry. A part whose groove or cut is mostly outside the
  frame is labelled ``part``: nothing in the image says it is defective. Frames are stored as JPEG with
  random quality so the model sees compression artefacts like those of the H.264 demo video and the
  product's JPEG frames;
* pseudo-labelled frames of the two real sample videos, so the demo model also finds something on the
  real cameras. Labels come from deterministic classical vision: bottles by the hue of the blue-tinted
  water bottles against the grey wall and white table; cars by difference from the per-pixel median
  background, with the camera's auto-exposure drift divided out first and only brighter-or-differently
  coloured pixels counted so that the cars' shadows are left out. Both were checked by eye on drawn
  boxes. Validation frames of the real videos are other frames of the same videos (a sanity check, not a
  held-out measure).

Export: ``format="onnx", dynamic=True, imgsz=320`` with ``nms`` left at None. YOLO26 has two heads; in
ultralytics 8.4.190 ``predict()`` with its defaults (``nms=None``) runs the one-to-many head and classic
NMS (conf 0.25, iou 0.7, max_det 300) on the ``.pt`` model. An ONNX export with ``nms=None`` contains that
same one-to-many head's raw output and ``predict()`` on it applies the same NMS, so both give the same
boxes. ``nms=False`` would export the NMS-free one-to-one head instead (output ``(N, 300, 6)``) and
``predict()`` on the ONNX file would then differ from ``predict()`` on the ``.pt``; ``nms=True`` embeds
NMS into the graph. This was checked by running both files on the demo video.

Reproducibility: fixed seeds for the data and ``seed``/``deterministic=True`` for training; a rerun on
the same machine and library versions gives the same data and close to the same weights.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import av
import cv2
import numpy as np
import yaml
from numpy.typing import NDArray

from streamproc.demo.line import DEFECTS, Box, LineScene, LineTruth, PartView, render_line
from streamproc.demo.score import iou, match_part

CLASSES: tuple[str, ...] = ("part", *DEFECTS, "bottle", "car")
IMGSZ = 320
REPO_ROOT = Path(__file__).resolve().parents[2]
LINE_TRAIN_SEEDS = range(1, 11)
LINE_VAL_SEED = 1000
LINE_TRAIN_DEFECT_RATE = 0.6
LINE_TRAIN_PARTS_PER_SECOND = 1.5
"""Defect share and part density above the demo's (37 %, 0.75/s): more labelled parts per image."""
LINE_FRAME_STEP = 16
MIN_DEFECT_VISIBLE = 0.6
"""A groove or cut must be at least this much inside the frame to be labelled as that defect."""
BOTTLE_VIDEO, CAR_VIDEO = "bottle-detection.mp4", "car-detection.mp4"

Image = NDArray[np.uint8]


@dataclass(frozen=True)
class Sample:
    image: Image
    labels: list[tuple[int, Box]]
    """Class index and pixel box of each object."""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    started = time.monotonic()
    workdir: Path = args.workdir
    out: Path = args.out
    _configure_ultralytics(workdir / "config")
    if args.check:
        return _check_only(out, args.media, workdir)
    data_yaml = build_dataset(workdir / "data", args.media, seed=args.seed)
    best, metrics = train(data_yaml, workdir / "runs", epochs=args.epochs, seed=args.seed)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(best, out / "demo-line.pt")
    export_onnx(out / "demo-line.pt", out / "demo-line.onnx")
    minutes = (time.monotonic() - started) / 60
    write_metadata(out / "demo-line.json", metrics, epochs=args.epochs, seed=args.seed, wall_minutes=minutes)
    print(f"done in {minutes:.1f} min: {out / 'demo-line.pt'}, {out / 'demo-line.onnx'}")
    return 0


def _check_only(out: Path, media: Path, workdir: Path) -> int:
    """Run :func:`check_demo` on the weights in ``out`` and record the result in their metadata."""
    results = check_demo([out / "demo-line.pt", out / "demo-line.onnx"], media, workdir)
    meta_path = out / "demo-line.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["demo_check"] = results
    meta_path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    for key, value in results.items():
        print(key, {k: v for k, v in value.items() if k not in {"own_class_frames"}})
    return 0


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "streamproc" / "models")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--media",
        type=Path,
        default=Path("../shared/media"),
        help="folder with the sample videos; a relative path starts at the repository root",
    )
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / "runs" / "demo-train")
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not train: check the weights in --out on the demo video and sample videos, record the result",
    )
    args = parser.parse_args(argv)
    args.media = (REPO_ROOT / args.media).resolve()
    for name in (BOTTLE_VIDEO, CAR_VIDEO):
        if not (args.media / name).is_file():
            parser.error(f"{args.media / name} not found (see --media)")
    return args


def _configure_ultralytics(config_dir: Path) -> None:
    """Keep ultralytics offline and local; must run before ultralytics is imported."""
    config_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("YOLO_CONFIG_DIR", str(config_dir))
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "false"
    font = Path(os.environ["YOLO_CONFIG_DIR"]) / "Arial.ttf"
    if not font.exists():  # ultralytics would otherwise try to download it for its plots
        shutil.copyfile(_any_ttf(), font)


def _any_ttf() -> Path:
    import matplotlib  # a dependency of ultralytics, ships DejaVu fonts

    candidates = [
        Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf",
        *sorted(Path("/usr/share/fonts").rglob("*.ttf")),
    ]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError("no TrueType font found to stand in for Arial.ttf")


# --- dataset -----------------------------------------------------------------------------------------


def build_dataset(root: Path, media: Path, *, seed: int) -> Path:
    """Write images and YOLO labels under ``root``; return the data YAML path."""
    if root.exists():
        shutil.rmtree(root)
    rng = np.random.default_rng(seed)
    counts: dict[str, int] = {}
    splits = {
        "train": [
            line_samples(LINE_TRAIN_SEEDS, LINE_FRAME_STEP),
            bottle_samples(media / BOTTLE_VIDEO, lambda i: i % 24 == 0),
            car_samples(media / CAR_VIDEO, train=True),
        ],
        "val": [
            line_samples([LINE_VAL_SEED], 10),
            bottle_samples(media / BOTTLE_VIDEO, lambda i: i % 40 == 2),
            car_samples(media / CAR_VIDEO, train=False),
        ],
    }
    for split, sources in splits.items():
        index = 0
        for samples in sources:
            for sample in samples:
                _write_sample(root, split, f"{index:05d}", sample, int(rng.integers(60, 96)))
                index += 1
        counts[split] = index
    data = {"path": str(root), "train": "images/train", "val": "images/val", "names": dict(enumerate(CLASSES))}
    data_yaml = root / "data.yaml"
    data_yaml.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    print(f"dataset: {counts} images in {root}")
    return data_yaml


def _write_sample(root: Path, split: str, name: str, sample: Sample, jpeg_quality: int) -> None:
    for sub in ("images", "labels"):
        (root / sub / split).mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(root / "images" / split / f"{name}.jpg"), sample.image, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    h, w = sample.image.shape[:2]
    lines = [
        f"{cls} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}"
        for cls, (x1, y1, x2, y2) in sample.labels
    ]
    (root / "labels" / split / f"{name}.txt").write_text("".join(f"{ln}\n" for ln in lines), encoding="utf-8")


def line_samples(seeds: Sequence[int] | range, step: int) -> Iterator[Sample]:
    """Every ``step``-th frame of a 40 s line per seed (frames without parts included, as negatives)."""
    for seed in seeds:
        scene = LineScene(seed=seed, defect_rate=LINE_TRAIN_DEFECT_RATE, parts_per_second=LINE_TRAIN_PARTS_PER_SECOND)
        for index in range(seed % step, scene.n_frames, step):
            labels = [(line_class(v), v.box) for v in scene.views(index) if v.box[2] - v.box[0] >= 4]
            yield Sample(scene.render(index), labels)


def line_class(view: PartView) -> int:
    """Label index of a part as seen in one frame (see the module docstring)."""
    if view.defect is None:
        return 0
    if view.defect == "wrong_colour" or view.defect_visible_fraction >= MIN_DEFECT_VISIBLE:
        return CLASSES.index(view.defect)
    return 0


def video_frames(path: Path) -> Iterator[Image]:
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.video[0]):
            yield cast(Image, frame.to_ndarray(format="bgr24"))


def bottle_samples(path: Path, take: Any) -> Iterator[Sample]:
    """Frames ``i`` of the bottle video with ``take(i)`` true, labelled by :func:`bottle_boxes`."""
    cls = CLASSES.index("bottle")
    for index, frame in enumerate(video_frames(path)):
        if take(index):
            yield Sample(frame, [(cls, box) for box in bottle_boxes(frame)])


def bottle_boxes(frame: Image) -> list[Box]:
    """Water bottles: pixels of blue-cyan hue (the wall and table are warm grey, hands and sleeve red).

    Hue is reliable here even where saturation is low because the water and caps are the only blue
    things in the scene; a tall narrow blob of it is a bottle, including one lifted by a hand.
    """
    hsv = cv2.cvtColor(frame, cv2.COLOR_BGR2HSV)
    hue, sat, val = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    blue = ((hue >= 80) & (hue <= 130) & (sat >= 6) & (val >= 40)).astype(np.uint8) * 255
    opened = cv2.morphologyEx(blue, cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
    closed = cv2.morphologyEx(opened, cv2.MORPH_CLOSE, np.ones((15, 7), np.uint8))
    n, _, stats, _ = cv2.connectedComponentsWithStats(closed)
    boxes = []
    for x, y, w, bh, area in stats[1:n]:
        if bh >= 80 and 25 <= w <= 100 and bh / w > 1.5 and area > 0.4 * w * bh:
            boxes.append((float(x), float(y), float(x + w), float(y + bh)))
    return boxes


def car_samples(path: Path, *, train: bool) -> Iterator[Sample]:
    """Car-video frames: train takes even frames with cars and every 24th without; val some odd ones.

    Cars half in the frame matter: their dark windscreen across a light body otherwise looks like a
    scratched plate to a model trained mostly on the line.
    """
    frames = list(video_frames(path))
    background = median_background(frames)
    cls = CLASSES.index("car")
    for index, frame in enumerate(frames):
        boxes = car_boxes(frame, background)
        take = (index % 2 == 0 and (boxes or index % 24 == 0)) if train else index % 12 == 5
        if take:
            yield Sample(frame, [(cls, box) for box in boxes])


def median_background(frames: Sequence[Image]) -> Image:
    """Per-pixel median of every other frame: cars pass through, the empty parking area stays."""
    return cast(Image, np.median(np.stack(frames[::2]), axis=0).astype(np.uint8))


def car_boxes(frame: Image, background: Image) -> list[Box]:
    """Cars: pixels clearly brighter than the background in some channel (white, silver and red cars).

    The camera's auto exposure darkens the whole frame when a white car comes in, so the background is
    first scaled by the per-channel median ratio. Counting only increases leaves out the dark shadows
    under the cars; dark windows are filled in by the closing.
    """
    img = cv2.GaussianBlur(frame, (5, 5), 0).astype(np.float32)
    bg = cv2.GaussianBlur(background, (5, 5), 0).astype(np.float32)
    gain = np.median(img.reshape(-1, 3), axis=0) / np.maximum(np.median(bg.reshape(-1, 3), axis=0), 1.0)
    brighter = ((img - bg * gain).max(axis=2) > 30).astype(np.uint8) * 255
    opened = cv2.morphologyEx(brighter, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    closed = cv2.morphologyEx(opened, cv2.MORPH_CLOSE, np.ones((9, 9), np.uint8))
    n, _, stats, _ = cv2.connectedComponentsWithStats(closed)
    return [
        (float(x), float(y), float(x + w), float(y + h))
        for x, y, w, h, area in stats[1:n]
        if area >= 800 and w >= 15 and h >= 15
    ]


# --- training and export ---------------------------------------------------------------------------


def train(data_yaml: Path, project: Path, *, epochs: int, seed: int) -> tuple[Path, dict[str, Any]]:
    """Train YOLO26n from scratch; return the best (already optimizer-stripped) weights and final metrics."""
    import torch  # imported after _configure_ultralytics set the environment
    from ultralytics.models import YOLO

    threads = os.cpu_count() or 1

    def use_all_cores(_: object) -> None:
        torch.set_num_threads(threads)  # ultralytics' select_device leaves one core idle

    model = YOLO("yolo26n.yaml")
    model.add_callback("on_train_start", use_all_cores)
    model.add_callback("on_train_epoch_start", use_all_cores)
    model.train(
        data=str(data_yaml),
        epochs=epochs,
        imgsz=IMGSZ,
        batch=16,
        device="cpu",
        workers=0,
        seed=seed,
        deterministic=True,
        warmup_epochs=1,
        close_mosaic=max(1, epochs // 6),
        hsv_h=0.01,
        hsv_s=0.4,
        hsv_v=0.3,
        scale=0.3,
        translate=0.1,
        fliplr=0.5,
        mosaic=1.0,
        cache="ram",
        val=False,
        plots=False,
        project=str(project),
        name="demo-line",
        exist_ok=True,
        verbose=False,
    )
    trainer = model.trainer
    if trainer is None:
        raise RuntimeError("ultralytics returned no trainer")
    best = Path(trainer.best)
    metrics = YOLO(str(best)).val(
        data=str(data_yaml),
        imgsz=IMGSZ,
        batch=16,
        device="cpu",
        plots=False,
        workers=0,
        project=str(project),
        name="final-val",
        exist_ok=True,
    )
    return best, _per_class_metrics(metrics)


def _per_class_metrics(metrics: Any) -> dict[str, Any]:
    box = metrics.box
    per_class = {
        CLASSES[int(c)]: {"mAP50": round(float(box.ap50[i]), 4), "mAP50-95": round(float(box.ap[i]), 4)}
        for i, c in enumerate(box.ap_class_index)
    }
    return {"mAP50": round(float(box.map50), 4), "mAP50-95": round(float(box.map), 4), "per_class": per_class}


def export_onnx(weights: Path, target: Path) -> None:
    """ONNX with the one-to-many head (``nms`` left at None), matching default ``predict()`` on the .pt."""
    from ultralytics.models import YOLO

    exported = YOLO(str(weights)).export(format="onnx", dynamic=True, imgsz=IMGSZ, simplify=True)
    shutil.move(str(exported), target)


def write_metadata(path: Path, metrics: dict[str, Any], *, epochs: int, seed: int, wall_minutes: float) -> None:
    meta = {
        "model": "yolo26n",
        "classes": list(CLASSES),
        "imgsz": IMGSZ,
        "epochs": epochs,
        "seed": seed,
        "line_train_seeds": list(LINE_TRAIN_SEEDS),
        "line_val_seed": LINE_VAL_SEED,
        "export": {"format": "onnx", "dynamic": True, "nms": None},
        "val": metrics,
        "train_wall_minutes": round(wall_minutes, 1),
        "date": datetime.now(UTC).date().isoformat(),
    }
    path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


# --- acceptance check on the demo video ------------------------------------------------------------

CHECK_CONF = 0.6
CHECK_FRAMES = 3
"""A part counts as flagged with a defect class at conf >= CHECK_CONF on at least CHECK_FRAMES frames."""
CHECK_IOU = 0.5
Detections = list[tuple[int, float, Box]]
"""Class index, confidence and pixel box of each detection in one frame."""


CHECK_LINES = ((0, 40.0), (0, 20.0), (101, 40.0), (102, 40.0), (103, 40.0))
"""(seed, seconds) of the line videos checked: the demo's own, the 20 s one the tests use, three unseen."""


def check_demo(weights: Sequence[Path], media: Path, workdir: Path) -> dict[str, Any]:
    """Run each model with default ``predict()`` settings on line videos and on the sample videos.

    On the 40 s demo video every model runs on the decoded frames and after a JPEG round trip at quality
    90 (how the product transports frames); on the other line videos only the last model (the ONNX file
    the product runs) on JPEG frames. For the sample videos: boxes per class at conf >= 0.5.
    """
    from ultralytics.models import YOLO

    models = {path.name: YOLO(str(path), task="detect") for path in weights}
    product = list(models)[-1]
    results: dict[str, Any] = {}
    for seed, seconds in CHECK_LINES:
        truth, frames = _line_video(workdir / f"line-seed{seed}-{seconds:g}s.mp4", seed, seconds)
        jpeg_frames = [_jpeg_round_trip(f) for f in frames]
        for name, model in models.items():
            runs = {"raw": frames, "jpeg90": jpeg_frames} if (seed, seconds) == CHECK_LINES[0] else {}
            if name == product:
                runs["jpeg90"] = jpeg_frames
            for variant, images in runs.items():
                key = f"{name}:seed{seed}-{seconds:g}s:{variant}"
                results[key] = part_check(truth, [_detect(model, im) for im in images])
    for name, model in models.items():
        results[f"{name}:media"] = {
            video_name: _count_class(model, media / video_name, cls)
            for video_name, cls in ((BOTTLE_VIDEO, "bottle"), (CAR_VIDEO, "car"))
        }
    return results


def _line_video(video: Path, seed: int, seconds: float) -> tuple[LineTruth, list[Image]]:
    """Render a line video and decode it, checking that decode order gives exactly the truth's frames."""
    video.parent.mkdir(parents=True, exist_ok=True)
    truth = render_line(video, seconds=seconds, seed=seed)
    frames = list(video_frames(video))
    if len(frames) != truth.n_frames:
        raise RuntimeError(f"{video} decodes to {len(frames)} frames, expected {truth.n_frames}")
    return truth, frames


def _jpeg_round_trip(image: Image) -> Image:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return cast(Image, cv2.imdecode(buf, cv2.IMREAD_COLOR))


def _detect(model: Any, image: Image) -> Detections:
    boxes = model.predict(image, imgsz=IMGSZ, verbose=False)[0].boxes
    return [
        (int(k), float(c), (float(b[0]), float(b[1]), float(b[2]), float(b[3])))
        for k, c, b in zip(boxes.cls.tolist(), boxes.conf.tolist(), boxes.xyxy.tolist(), strict=True)
    ]


def part_check(truth: LineTruth, detections: Sequence[Detections]) -> dict[str, Any]:
    """Per part: frames with its own defect class and with any defect class (conf >= CHECK_CONF).

    ``recall``: defective parts with their own class on >= CHECK_FRAMES frames / defective parts.
    ``precision``: flagged parts that are defective / flagged parts, where flagged means any defect
    class on >= CHECK_FRAMES frames. Confident defect boxes that match no part are counted apart.
    """
    own: dict[int, int] = {}
    flagged: dict[int, int] = {}
    unmatched = 0
    defect_ids = {CLASSES.index(d) for d in DEFECTS}
    for index, frame in enumerate(detections):
        for cls, conf, box in frame:
            if cls not in defect_ids or conf < CHECK_CONF:
                continue
            part = match_part(truth, index, box)
            part_box = part.box_at(index) if part else None
            if part is None or part_box is None or iou(part_box, box) < CHECK_IOU:
                unmatched += 1
                continue
            flagged[part.part_id] = flagged.get(part.part_id, 0) + 1
            if CLASSES[cls] == part.defect:
                own[part.part_id] = own.get(part.part_id, 0) + 1
    found = [p.part_id for p in truth.defective if own.get(p.part_id, 0) >= CHECK_FRAMES]
    flagged_ids = [pid for pid, n in flagged.items() if n >= CHECK_FRAMES]
    false_ids = sorted(p.part_id for p in truth.good if p.part_id in flagged_ids)
    return {
        "defective_parts": len(truth.defective),
        "found": len(found),
        "recall": round(len(found) / max(1, len(truth.defective)), 4),
        "flagged_parts": len(flagged_ids),
        "good_parts_flagged": false_ids,
        "precision": round((len(flagged_ids) - len(false_ids)) / max(1, len(flagged_ids)), 4),
        "unmatched_defect_boxes": unmatched,
        "own_class_frames": {
            p.part_id: [p.defect, own.get(p.part_id, 0), p.last_frame - p.first_frame + 1] for p in truth.defective
        },
        "good_part_defect_frames": {p.part_id: flagged[p.part_id] for p in truth.good if p.part_id in flagged},
    }


def _count_class(model: Any, video: Path, name: str) -> dict[str, int]:
    """Boxes per class at conf >= 0.5 over all frames of ``video``, and frames with a ``name`` box."""
    counts: dict[str, int] = {}
    frames_with = 0
    for frame in video_frames(video):
        names = [CLASSES[cls] for cls, conf, _ in _detect(model, frame) if conf >= 0.5]
        for n in names:
            counts[n] = counts.get(n, 0) + 1
        frames_with += name in names
    return {**counts, f"frames_with_{name}": frames_with}


if __name__ == "__main__":
    raise SystemExit(main())
