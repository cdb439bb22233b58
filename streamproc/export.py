"""Model export through Ultralytics (ONNX, OpenVINO, TensorRT), and the cached ONNX export that the
detector runs on CPU in place of a ``.pt`` file (ONNX Runtime is about 3x faster than eager PyTorch on
the CPUs measured in docs/BENCHMARKS.md)."""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import tempfile
from pathlib import Path

from streamproc.errors import ModelError

FORMATS = ("onnx", "openvino", "engine")
CACHE = Path.home() / ".cache" / "streamproc" / "exports"


def export_model(weights: str, fmt: str, *, imgsz: int, half: bool = False, device: str = "cpu",
                 batch: int = 16) -> Path:  # fmt: skip
    """Export with dynamic batch (and size): what the detector's batches need. Returns the exported path,
    written next to ``weights`` as Ultralytics does."""
    if fmt not in FORMATS:
        raise ModelError(f"export format {fmt!r}: expected one of {', '.join(FORMATS)}")
    from ultralytics.models import YOLO

    try:
        out = YOLO(weights, task="detect").export(
            format=fmt, dynamic=True, imgsz=imgsz, half=half, device=device, batch=batch, verbose=False
        )
    except Exception as e:  # Ultralytics raises many types; the message is what the user needs
        raise ModelError(f"export of {weights} to {fmt} failed ({type(e).__name__}: {e})") from e
    return Path(str(out))


def cached_onnx(weights: Path, imgsz: int) -> Path:
    """The ONNX export of a ``.pt`` file, made once per file content and shared by every worker on the
    machine (a file lock keeps concurrent workers from exporting twice)."""
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    target = CACHE / f"{weights.stem}-{digest}.onnx"
    if target.exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():
            return target
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            copy = Path(tmp) / weights.name
            shutil.copyfile(weights, copy)
            exported = export_model(str(copy), "onnx", imgsz=imgsz)
            exported.replace(target)
    return target
