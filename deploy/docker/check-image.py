"""Build-time check of an image's Python stack: run by deploy/docker/Dockerfile.{cpu,cuda} in the builder.

    python check-image.py cpu|cuda

Fails the build (exit 1, one line per problem) when an import breaks, the shipped demo model is
missing, the CPU image got a CUDA torch, or the CUDA image's torch and ONNX Runtime were built for
different CUDA major versions (they share the CUDA libraries that the torch wheel brings along). It
needs no GPU: it reads build information only.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import sys


def _cuda_major_of_onnxruntime() -> str | None:
    """The CUDA major version onnxruntime-gpu was built for, from its package metadata."""
    try:
        from onnxruntime.capi import build_and_package_info as info  # type: ignore[import-not-found]

        version = getattr(info, "cuda_version", None)
        if version:
            return str(version).split(".")[0]
    except ImportError:
        pass
    try:
        requirements = md.requires("onnxruntime-gpu") or []
    except md.PackageNotFoundError:
        return None
    for requirement in requirements:
        found = re.match(r"nvidia-cuda-runtime(?:-cu(\d+))?\s*~=\s*(\d+)", requirement)
        if found:
            return found.group(1) or found.group(2)
    return None


def check(variant: str) -> list[str]:
    problems: list[str] = []
    from streamproc.model import configure_ultralytics

    configure_ultralytics()  # offline and quiet, before Ultralytics is imported

    import cv2
    import onnxruntime
    import torch
    import ultralytics  # noqa: F401 (the import itself is the check)

    from streamproc.config import DEMO_MODEL
    from workers.cli import parser

    parser()  # every command line parser builds
    if not DEMO_MODEL.is_file():
        problems.append(f"the demo model {DEMO_MODEL} is missing from the package")
    if not hasattr(cv2, "imdecode"):
        problems.append("cv2 has no imdecode")
    providers = onnxruntime.get_available_providers()
    if variant == "cpu":
        if torch.version.cuda:
            problems.append(f"CPU image has a CUDA torch ({torch.__version__}, CUDA {torch.version.cuda})")
    elif variant == "cuda":
        if not torch.version.cuda:
            problems.append(f"CUDA image has a CPU-only torch ({torch.__version__})")
        if "CUDAExecutionProvider" not in providers:
            problems.append(f"onnxruntime has no CUDAExecutionProvider (providers: {providers})")
        ort_major = _cuda_major_of_onnxruntime()
        torch_major = (torch.version.cuda or "").split(".")[0]
        if ort_major is None:
            problems.append("onnxruntime-gpu is missing, or its CUDA version cannot be told")
        elif torch_major and ort_major != torch_major:
            problems.append(f"torch uses CUDA {torch.version.cuda} but onnxruntime-gpu was built for CUDA {ort_major}")
    else:
        problems.append(f"unknown variant {variant!r} (expected cpu or cuda)")
    return problems


def main() -> int:
    variant = sys.argv[1] if len(sys.argv) > 1 else ""
    problems = check(variant)
    for problem in problems:
        print(f"check-image: {problem}", file=sys.stderr)
    if not problems:
        print(f"check-image: {variant} stack OK")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
