"""The model runner: any detector Ultralytics loads, called in batches with Ultralytics' own pre- and
post-processing, but without the per-call set-up that ``YOLO.predict`` repeats on every call.

``YOLO.predict`` rebuilds its source loader and re-checks arguments on each call (about 30 ms here).
We call it once at load time to build and warm up the predictor with the user's arguments, then feed
each batch straight through the predictor's ``pre_transform`` (LetterBox), the backend and its
``postprocess`` (NMS or the NMS-free head, box scaling). Boxes therefore equal what ``predict``
returns on the same frames; the fidelity tests hold us to that.
"""

from __future__ import annotations

import logging
import os
import socket
from collections import defaultdict
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from streamproc.config import DetectorConfig
from streamproc.errors import ModelError

log = logging.getLogger(__name__)

Image = NDArray[np.uint8]
# (cls, conf, x1, y1, x2, y2) per box, in the pixels of the image given to the model
RawBoxes = NDArray[np.float32]
MODEL_SUFFIXES = (".pt", ".onnx", ".engine", ".torchscript", ".yaml", ".yml", ".tflite", ".mlpackage", ".xml")


def configure_ultralytics(config_dir: Path | None = None) -> None:
    """Make Ultralytics local and quiet: no downloads of fonts or settings sync, no pip at run time.

    Must run before ``ultralytics`` is imported; entry points call it once.
    """
    target = config_dir or Path.home() / ".cache" / "streamproc" / "ultralytics"
    target.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("YOLO_CONFIG_DIR", str(target))
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    os.environ.setdefault("YOLO_VERBOSE", "false")


def _official_asset(name: str) -> bool:
    from ultralytics.utils.downloads import GITHUB_ASSETS_NAMES

    return name in GITHUB_ASSETS_NAMES


def _github_reachable(timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection(("github.com", 443), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_model(spec: str) -> str:
    """Check a model reference before Ultralytics sees it (it would otherwise retry downloads for a minute).

    Accepts an existing file or directory (OpenVINO), a shipped architecture YAML (random weights), or an
    official asset name such as ``yolo26n.pt`` when github.com is reachable.
    """
    path = Path(spec)
    if path.exists():
        if path.is_file() and path.stat().st_size == 0:
            raise ModelError(f"model {spec}: file is empty (re-export or re-download it)")
        return str(path)
    if path.suffix in (".yaml", ".yml") and path.parent == Path("."):
        return spec
    if _official_asset(path.name) and path.parent == Path("."):
        if _github_reachable():
            return spec
        raise ModelError(
            f"model {spec}: not on disk and github.com is unreachable to download it; "
            "download it elsewhere and pass its path with --model"
        )
    raise ModelError(f"model {spec}: no such file (pass a .pt, .onnx, .engine file or OpenVINO directory)")


def _device_name(device: str) -> str:
    return "cuda:0" if device == "cuda" else device


class ModelRunner:
    """A loaded detector; :meth:`infer` takes a list of BGR frames and returns boxes per frame."""

    def __init__(self, yolo: Any, cfg: DetectorConfig, name: str) -> None:
        self.yolo = yolo
        self.cfg = cfg
        self.name = name
        self.predictor = yolo.predictor
        self.names: dict[int, str] = {int(k): str(v) for k, v in self.predictor.model.names.items()}
        self.device = self.predictor.device
        self.cuda = self.device.type == "cuda"
        self.warmed_shapes: set[tuple[int, int]] = set()

    @classmethod
    def load(cls, cfg: DetectorConfig) -> ModelRunner:
        """Resolve, load and warm up the model with the predict arguments of ``cfg``."""
        configure_ultralytics()
        spec = runtime_model(resolve_model(cfg.model), cfg)
        from ultralytics.models import YOLO

        try:
            yolo = YOLO(spec, task="detect")
        except Exception as e:  # Ultralytics raises many types for unreadable weights
            raise ModelError(f"model {spec}: cannot be loaded ({type(e).__name__}: {str(e).splitlines()[0]})") from e
        if yolo.task != "detect":
            raise ModelError(f"model {spec}: is a {yolo.task} model, streamproc runs detect models")
        yolo.predict([np.zeros((cfg.imgsz, cfg.imgsz, 3), np.uint8)], **predict_args(cfg))
        backend: Any = yolo.predictor.model  # type: ignore[attr-defined]
        _set_threads(backend, spec, cfg.threads)
        log.info("model %s runs as %s (%s)", cfg.model, Path(spec).name, backend.format)
        return cls(yolo, cfg, Path(cfg.model).name)

    def infer(self, images: Sequence[Image]) -> list[RawBoxes]:
        """Boxes per image as (N, 6) arrays ``cls, conf, x1, y1, x2, y2`` in each image's pixels.

        Images of equal shape run as one batch (as ``predict`` would letterbox them: rectangular padding
        only when all shapes in a batch agree); each distinct shape is its own call.
        """
        out: list[RawBoxes | None] = [None] * len(images)
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, image in enumerate(images):
            groups[image.shape].append(i)
        for indices in groups.values():
            for i, boxes in zip(indices, self._infer_same_shape([images[i] for i in indices]), strict=True):
                out[i] = boxes
        return [b if b is not None else np.zeros((0, 6), np.float32) for b in out]

    @property
    def backend(self) -> str:
        """The runtime Ultralytics chose for the file: pt (PyTorch), onnx (ONNX Runtime), openvino, engine..."""
        return str(self.predictor.model.format)

    def _infer_same_shape(self, images: list[Image]) -> list[RawBoxes]:
        tensor = self.preprocess(images)
        self._warm_batch_sizes(tensor)
        preds = self.forward(tensor)
        predictor = self.predictor
        predictor.batch = ([""] * len(images), images, [""] * len(images))
        with _inference_mode():
            results = predictor.postprocess(preds, tensor, images)
        return [_as_rows(r.boxes.data) for r in results]

    def preprocess(self, images: list[Image]) -> Any:
        """Ultralytics' preprocess (LetterBox, BGR->RGB, /255) of same-shape images into one tensor, on
        the model's device; from pinned host memory on CUDA."""
        import torch

        predictor = self.predictor
        with _inference_mode():
            batch = torch.from_numpy(np.stack(predictor.pre_transform(images)))
            if self.cuda:
                batch = batch.pin_memory().to(self.device, non_blocking=True)
            tensor = batch.permute(0, 3, 1, 2).contiguous().flip(1)
            tensor = tensor.half() if predictor.model.fp16 else tensor.float()
            return tensor.div_(255)

    def _warm_batch_sizes(self, tensor: Any) -> None:
        """On the first batch of a new input shape, run every batch size up to ``max_batch`` once.

        OpenVINO compiles kernels for each input shape it has not seen: the first batch of each size took
        about 220 ms more than the next on the development CPU. Live batches vary in size, so without this
        the first batch of each size, minutes into a run, would pay it on live frames.
        """
        shape = (int(tensor.shape[2]), int(tensor.shape[3]))
        if self.backend != "openvino" or shape in self.warmed_shapes:
            return
        self.warmed_shapes.add(shape)
        for size in range(1, self.cfg.max_batch + 1):
            if size != tensor.shape[0]:
                self.forward(tensor[:1].expand(size, -1, -1, -1).contiguous())

    def forward(self, tensor: Any) -> Any:
        """The model alone on a preprocessed batch (the benchmark's "bare model")."""
        with _inference_mode():
            return self.predictor.inference(tensor)


def _inference_mode() -> Any:
    import torch

    return torch.inference_mode()


def predict_args(cfg: DetectorConfig) -> dict[str, Any]:
    """The ``YOLO.predict`` keyword arguments equivalent to a detector config."""
    device = _device_name(cfg.device)
    half = cfg.half if cfg.half is not None else device.startswith("cuda")
    return {
        "imgsz": cfg.imgsz,
        "conf": cfg.conf,
        "iou": cfg.iou,
        "max_det": cfg.max_det,
        "nms": cfg.nms,
        "half": half,
        "device": device,
        "verbose": False,
    }


def _as_rows(data: Any) -> RawBoxes:
    """(N, 6) ``x1 y1 x2 y2 conf cls`` tensor -> (N, 6) float32 ``cls conf x1 y1 x2 y2`` array."""
    array = data.detach().float().cpu().numpy()
    if array.size == 0:
        return np.zeros((0, 6), np.float32)
    return np.ascontiguousarray(array[:, [5, 4, 0, 1, 2, 3]], dtype=np.float32)


def runtime_model(spec: str, cfg: DetectorConfig) -> str:
    """What actually runs: on CPU with ``backend: auto``, a ``.pt`` file runs as its cached ONNX export."""
    if cfg.backend == "auto" and _device_name(cfg.device) == "cpu" and spec.endswith(".pt") and Path(spec).exists():
        from streamproc.export import cached_onnx

        return str(cached_onnx(Path(spec), cfg.imgsz))
    return spec


def _set_threads(backend: Any, spec: str, threads: int | None) -> None:
    """Inference threads: all cores by default (Ultralytics leaves one idle on CPU), or ``threads``.

    ONNX Runtime sessions and OpenVINO compiled models cannot change their thread count after creation, so
    on CPU they are rebuilt with it (several single-threaded detector processes then do not oversubscribe)."""
    import torch

    torch.set_num_threads(threads or os.cpu_count() or 1)
    if not threads:
        return
    inner: Any = getattr(backend, "backend", None)
    session = getattr(inner, "session", None)
    if session is not None and session.get_providers() == ["CPUExecutionProvider"]:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        inner.session = onnxruntime.InferenceSession(spec, options, providers=["CPUExecutionProvider"])
    compiled = getattr(inner, "ov_compiled_model", None)
    if compiled is not None and list(compiled.get_property("EXECUTION_DEVICES")) == ["CPU"]:
        _recompile_openvino(inner, spec, threads)


def _recompile_openvino(inner: Any, spec: str, threads: int) -> None:
    """Recompile an OpenVINO CPU model with ``threads``, keeping Ultralytics' other compile options (its
    default precision included: bf16 on CPUs with AMX, as ``YOLO.predict`` runs it).

    Pinning is turned off: OpenVINO pins each process's threads from core 0 up, so two single-threaded
    detectors on one machine shared core 0 and left core 1 idle (measured: 17 + 19 instead of 36 + 33 img/s).
    """
    import openvino

    path = Path(spec)
    xml = path if path.is_file() else next(path.glob("*.xml"))
    previous = inner.compile_model.keywords.get("config", {})
    config = {**previous, "INFERENCE_NUM_THREADS": threads, "ENABLE_CPU_PINNING": False}
    inner.compile_model = partial(inner.compile_model, config=config)
    inner.ov_compiled_model = inner.compile_model(openvino.Core().read_model(str(xml)))
