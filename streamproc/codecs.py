"""Frame codecs for transport: JPEG (small, lossy) and raw BGR (lossless, exact)."""

from __future__ import annotations

from typing import cast

import cv2
import numpy as np
from numpy.typing import NDArray

from streamproc.errors import BadMessage

Image = NDArray[np.uint8]


def encode(image: Image, codec: str, jpeg_quality: int = 90) -> bytes:
    """Encode a BGR uint8 (H, W, 3) image for the frames stream."""
    if codec == "raw":
        return np.ascontiguousarray(image).tobytes()
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def decode(data: bytes, codec: str, width: int, height: int) -> Image:
    """Decode a payload back to a BGR (height, width, 3) image; a mismatch is a BadMessage."""
    if codec == "raw":
        expected = width * height * 3
        if len(data) != expected:
            raise BadMessage("bad_payload", f"raw payload of {len(data)} bytes, expected {width}x{height}x3")
        return np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3)
    image = cast(Image | None, cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR))
    if image is None:
        raise BadMessage("bad_payload", "JPEG payload does not decode")
    if image.shape[:2] != (height, width):
        raise BadMessage("bad_payload", f"JPEG is {image.shape[1]}x{image.shape[0]}, header says {width}x{height}")
    return image
