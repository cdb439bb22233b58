"""Fidelity: the pipeline's boxes are what `YOLO(model).predict(frames)` returns on the same frames.

Lossless codec, no resize: same classes, xyxy within 0.5 px, conf within 1e-3, frame by frame.
JPEG codec: at least 95% of the direct boxes with conf >= 0.5 are matched at IoU >= 0.9.
Both on the two real sample videos (sampled at 5 fps to keep the test short), through the real
pipeline (ingest, Redis, detector worker) and with the real model.
"""

from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from streamproc.config import RedisConfig
from streamproc.embedded_redis import RedisServer
from streamproc.keys import Keys
from streamproc.messages import Detection
from streamproc.observe import StreamTail
from streamproc.transport import Streams, connect
from tests.conftest import BOTTLE, CAR, DEMO_ONNX, DEMO_PT, Figures, read_report, streamproc

CAMERAS = {"bottles": BOTTLE, "parking": CAR}
FPS = 5


def _pipeline(server: RedisServer, tmp_path: Path, model: Path, codec: str) -> dict[tuple[str, int], Detection]:
    report = tmp_path / "report.json"
    args = [a for name, path in CAMERAS.items() for a in ("--source", f"{name}={path}")]
    result = streamproc(
        "run", "--redis", server.url, *args, "--fps", str(FPS), "--codec", codec, "--model", str(model),
        "--imgsz", "320", "--report", str(report),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert read_report(report)["unaccounted"] == 0
    streams = Streams(connect(RedisConfig(), server.url), Keys())
    entries = StreamTail(streams, streams.keys.all_detections(), "0").read(count=100_000)
    detections = [Detection.from_fields(fields) for _, _, fields in entries]
    by_key = {(d.camera, d.seq): d for d in detections}
    assert len(by_key) == len(detections), "a frame has two results"
    return by_key


def _direct(model: Path, wanted: dict[str, set[int]]) -> dict[tuple[str, int], Any]:
    from ultralytics import YOLO

    yolo = YOLO(str(model), task="detect")
    out = {}
    for camera, path in CAMERAS.items():
        with av.open(str(path)) as container:
            frames = [(i, f.to_ndarray(format="bgr24")) for i, f in enumerate(container.decode(video=0))]
        frames = [(i, image) for i, image in frames if i in wanted[camera]]
        for start in range(0, len(frames), 8):
            chunk = frames[start : start + 8]
            results = yolo.predict([image for _, image in chunk], imgsz=320, verbose=False)
            for (i, _), r in zip(chunk, results, strict=True):
                out[(camera, i)] = r.boxes.data.cpu().numpy()
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _pipeline_rows(det: Detection) -> np.ndarray:
    return np.array([[*b.xyxy, b.conf, b.cls] for b in det.boxes], dtype=np.float64).reshape(-1, 6)


def _compare_exact(pipe: dict[tuple[str, int], Detection], direct: dict[tuple[str, int], Any]) -> tuple[int, float]:
    boxes, worst = 0, 0.0
    for key, rows in direct.items():
        got = _pipeline_rows(pipe[key])
        expected = rows[np.lexsort((rows[:, 0], -rows[:, 4]))]
        got = got[np.lexsort((got[:, 0], -got[:, 4]))]
        assert got.shape == expected.shape, f"{key}: {len(got)} boxes, direct predict gave {len(expected)}"
        if len(got):
            assert np.array_equal(got[:, 5], expected[:, 5]), f"{key}: classes differ"
            assert np.abs(got[:, 4] - expected[:, 4]).max() <= 1e-3, f"{key}: conf differs"
            worst = max(worst, float(np.abs(got[:, :4] - expected[:, :4]).max()))
            assert worst <= 0.5, f"{key}: box differs by {worst:.3f} px"
        boxes += len(got)
    return boxes, worst


def _match_rate(pipe: dict[tuple[str, int], Detection], direct: dict[tuple[str, int], Any]) -> tuple[int, float]:
    total = matched = 0
    for key, expected in direct.items():
        got = _pipeline_rows(pipe[key])
        for row in expected[expected[:, 4] >= 0.5]:
            total += 1
            same_class = got[got[:, 5] == row[5]]
            matched += any(_iou(row, g) >= 0.9 for g in same_class)
    return total, matched / total if total else 0.0


@pytest.mark.parametrize("model", [DEMO_ONNX, DEMO_PT], ids=["onnx", "pt"])
def test_lossless_pipeline_equals_direct_predict(
    redis_server: RedisServer, tmp_path: Path, model: Path, figures: Figures
) -> None:
    pipe = _pipeline(redis_server, tmp_path, model, "raw")
    wanted = {c: {seq for cam, seq in pipe if cam == c} for c in CAMERAS}
    direct = _direct(model, wanted)
    assert set(direct) == set(pipe)
    boxes, worst = _compare_exact(pipe, direct)
    assert boxes >= 100, "too few boxes for a meaningful comparison"
    figures.add(
        f"fidelity raw {model.suffix}", f"{len(direct)} frames, {boxes} boxes identical, max |dxyxy| {worst:.4f} px"
    )


def test_jpeg_pipeline_matches_direct_predict(redis_server: RedisServer, tmp_path: Path, figures: Figures) -> None:
    pipe = _pipeline(redis_server, tmp_path, DEMO_ONNX, "jpeg")
    wanted = {c: {seq for cam, seq in pipe if cam == c} for c in CAMERAS}
    total, rate = _match_rate(pipe, _direct(DEMO_ONNX, wanted))
    assert total >= 100
    assert rate >= 0.95
    figures.add("fidelity jpeg", f"{total} direct boxes with conf >= 0.5, {rate:.1%} matched at IoU >= 0.9")


@pytest.mark.parametrize("variant", ["pt-native", "openvino"])
def test_model_runner_equals_predict_for_other_backends(tmp_path: Path, variant: str, figures: Figures) -> None:
    """The runner's fast path (no per-call set-up) gives predict's boxes on the PyTorch and OpenVINO
    backends too (the pipeline tests above cover ONNX Runtime and the .pt -> ONNX auto path)."""
    import shutil

    from streamproc.config import DetectorConfig
    from streamproc.export import export_model
    from streamproc.model import ModelRunner

    weights = tmp_path / DEMO_PT.name
    shutil.copyfile(DEMO_PT, weights)
    model = str(weights) if variant == "pt-native" else str(export_model(str(weights), "openvino", imgsz=320))
    threads = 1 if variant == "openvino" else None  # OpenVINO is recompiled for a thread count: cover that
    runner = ModelRunner.load(DetectorConfig(model=model, imgsz=320, backend="native", threads=threads))
    assert runner.backend == ("pt" if variant == "pt-native" else "openvino")
    with av.open(str(BOTTLE)) as container:
        frames = [f.to_ndarray(format="bgr24") for i, f in enumerate(container.decode(video=0)) if i % 40 == 0]
    got = runner.infer(frames)
    from ultralytics import YOLO

    expected = YOLO(model, task="detect").predict(frames, imgsz=320, verbose=False)
    # OpenVINO compiles per input shape: the first batch warmed every batch size of its letterboxed shape
    assert runner.warmed_shapes == ({(192, 320)} if variant == "openvino" else set())
    boxes = 0
    for rows, result in zip(got, expected, strict=True):
        want = result.boxes.data.cpu().numpy()
        assert rows.shape == want.shape
        assert np.allclose(rows[:, [2, 3, 4, 5]], want[:, :4], atol=0.5) and np.allclose(
            rows[:, 1], want[:, 4], atol=1e-3
        )
        boxes += len(rows)
    assert boxes >= 20
    figures.add(f"fidelity runner {variant}", f"{len(frames)} frames, {boxes} boxes equal to predict")
