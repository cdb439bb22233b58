"""Synthetic conveyor-line video with exact ground truth, for the demo and for training the demo detector.

A grey belt carries metal plates from left to right at one constant speed. Some plates are defective:
``scratch`` (a dark groove across the plate), ``missing_corner`` (a triangular cut through which the belt
shows) or ``wrong_colour`` (a plate in a clearly different hue). The belt texture, its slats and the side
rollers move with the parts, the lighting drifts and every frame gets sensor noise, so a detector cannot
just subtract a static background.

Everything is a pure function of the seed: :class:`LineScene` can render any frame on its own (random
access), which the training script uses to label frames, and :func:`render_line` encodes the frames as
H.264 without B-frames so that decode order equals presentation order and frame index ``i`` of the
ground truth is the ``i``-th decoded frame.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal, cast, get_args

import av
import cv2
import numpy as np
from numpy.typing import NDArray

Defect = Literal["scratch", "missing_corner", "wrong_colour"]
DEFECTS: tuple[Defect, ...] = get_args(Defect)
Box = tuple[float, float, float, float]
"""Axis-aligned box ``(x1, y1, x2, y2)`` in pixels of the full frame."""

Image = NDArray[np.uint8]
FloatImage = NDArray[np.float32]

DEFECT_RATE = 0.37
"""Share of defective parts on the demo line (the brief asks for 35-40 %)."""
PARTS_PER_SECOND = 0.75
TRAVERSE_SECONDS = 2.5
"""Time a part needs to cross the frame, from its first to its last visible pixel column."""
MIN_GAP_PX = 25
"""Smallest horizontal gap between two parts, so that they never overlap."""
SUPERSAMPLE = 4
"""Parts are drawn at this scale and reduced with area averaging, which anti-aliases their outlines."""
TRUTH_SUFFIX = ".truth.json"

_STEEL_BGR = (172.0, 160.0, 146.0)
_WRONG_COLOURS_BGR = (
    (40.0, 115.0, 215.0),  # copper / orange
    (60.0, 170.0, 60.0),  # green
    (55.0, 50.0, 200.0),  # red
    (35.0, 190.0, 215.0),  # brass / yellow
)


@dataclass(frozen=True)
class PartTruth:
    """Where one part is in every frame in which at least part of it is visible."""

    part_id: int
    defect: Defect | None
    first_frame: int
    last_frame: int
    boxes: tuple[Box, ...]
    """Visible (frame-clipped) box for each frame from ``first_frame`` to ``last_frame``."""

    def __post_init__(self) -> None:
        if len(self.boxes) != self.last_frame - self.first_frame + 1:
            raise ValueError(
                f"part {self.part_id}: {len(self.boxes)} boxes for frames {self.first_frame}..{self.last_frame}"
            )

    def box_at(self, frame_index: int) -> Box | None:
        """The visible box in ``frame_index``, or None when the part is not in that frame."""
        if self.first_frame <= frame_index <= self.last_frame:
            return self.boxes[frame_index - self.first_frame]
        return None


@dataclass(frozen=True)
class LineTruth:
    """Ground truth of one rendered line video."""

    seed: int
    fps: int
    width: int
    height: int
    n_frames: int
    parts: tuple[PartTruth, ...]

    @property
    def defective(self) -> tuple[PartTruth, ...]:
        return tuple(p for p in self.parts if p.defect is not None)

    @property
    def good(self) -> tuple[PartTruth, ...]:
        return tuple(p for p in self.parts if p.defect is None)

    def parts_at(self, frame_index: int) -> list[tuple[PartTruth, Box]]:
        """Parts visible in ``frame_index`` with their boxes there."""
        out = []
        for part in self.parts:
            box = part.box_at(frame_index)
            if box is not None:
                out.append((part, box))
        return out

    def to_dict(self) -> dict[str, object]:
        return {
            "seed": self.seed,
            "fps": self.fps,
            "width": self.width,
            "height": self.height,
            "n_frames": self.n_frames,
            "parts": [
                {
                    "part_id": p.part_id,
                    "defect": p.defect,
                    "first_frame": p.first_frame,
                    "last_frame": p.last_frame,
                    "boxes": [list(b) for b in p.boxes],
                }
                for p in self.parts
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> LineTruth:
        raw_parts = cast(list[dict[str, object]], data["parts"])
        return cls(
            seed=int(cast(int, data["seed"])),
            fps=int(cast(int, data["fps"])),
            width=int(cast(int, data["width"])),
            height=int(cast(int, data["height"])),
            n_frames=int(cast(int, data["n_frames"])),
            parts=tuple(_part_from_dict(p) for p in raw_parts),
        )

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> LineTruth:
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))


def _part_from_dict(data: dict[str, object]) -> PartTruth:
    defect = data["defect"]
    if defect is not None and defect not in DEFECTS:
        raise ValueError(f"unknown defect {defect!r}")
    boxes = cast(list[list[float]], data["boxes"])
    return PartTruth(
        part_id=int(cast(int, data["part_id"])),
        defect=defect,
        first_frame=int(cast(int, data["first_frame"])),
        last_frame=int(cast(int, data["last_frame"])),
        boxes=tuple((float(b[0]), float(b[1]), float(b[2]), float(b[3])) for b in boxes),
    )


def truth_path(video_path: Path) -> Path:
    """``line.mp4`` -> ``line.truth.json``."""
    return video_path.with_suffix(TRUTH_SUFFIX)


@dataclass(frozen=True)
class PartView:
    """What one frame shows of one part; the training script labels frames from these."""

    part_id: int
    defect: Defect | None
    box: Box
    visible_fraction: float
    """Share of the part's pixels inside the frame."""
    defect_visible_fraction: float
    """Share of the defect's own pixels (groove, cut, whole plate for a colour) inside the frame."""


@dataclass(frozen=True)
class _Sprite:
    """A part pre-rendered once: colour, coverage and shadow on a small canvas, plus its tight box."""

    colour: FloatImage
    alpha: FloatImage
    shadow: FloatImage
    box: Box
    alpha_columns: NDArray[np.float64]
    defect_columns: NDArray[np.float64]


@dataclass(frozen=True)
class _Placement:
    part_id: int
    defect: Defect | None
    sprite: _Sprite
    x0: float
    """Sprite canvas left edge at frame 0 (negative: still left of the frame)."""
    y0: int

    def left_at(self, frame_index: int, speed: float) -> int:
        return round(self.x0 + speed * frame_index)


class LineScene:
    """The conveyor line for one seed; renders any frame on demand."""

    def __init__(
        self,
        *,
        seconds: float = 40.0,
        fps: int = 15,
        width: int = 640,
        height: int = 360,
        seed: int = 0,
        defect_rate: float = DEFECT_RATE,
        parts_per_second: float = PARTS_PER_SECOND,
    ) -> None:
        self.seed, self.fps, self.width, self.height = seed, fps, width, height
        self.n_frames = round(seconds * fps)
        self.belt_top, self.belt_bottom = round(0.14 * height), round(0.86 * height)
        self.speed = (width + 90) / (TRAVERSE_SECONDS * fps)
        """Belt and part speed in pixels per frame."""
        rng = np.random.default_rng([seed, 1])
        self._belt = _belt_texture(rng, height, self.belt_top, self.belt_bottom, width)
        n_parts = max(1, round(seconds * parts_per_second))
        self._placements = self._plan_parts(rng, n_parts, defect_rate)

    def _plan_parts(self, rng: np.random.Generator, n_parts: int, defect_rate: float) -> list[_Placement]:
        """Lay parts out along the belt so that each one enters and leaves the frame within the clip.

        The belt length that passes the frame is shared out: every gap is at least ``MIN_GAP_PX`` and the
        rest of the free length is split by random weights, so spacing varies but nothing overlaps.
        """
        sprites = [(d, _render_sprite(rng, d)) for d in _defect_plan(rng, n_parts, defect_rate)]
        widths = np.array([s.box[2] - s.box[0] for _, s in sprites])
        belt_length = self.speed * (self.n_frames - 1) - self.width - 2.0
        free = belt_length - widths.sum() - MIN_GAP_PX * (n_parts - 1)
        if free < 0:
            raise ValueError(f"{n_parts} parts do not fit in {self.n_frames} frames")
        weights = rng.uniform(0.0, 1.0, n_parts - 1)
        gaps = MIN_GAP_PX + free * weights / max(weights.sum(), 1e-9)
        placements: list[_Placement] = []
        left = -1.0  # frame x of the part's left edge at frame 0: parts further back enter later
        for part_id, (defect, sprite) in enumerate(sprites):
            left -= widths[part_id] + (gaps[part_id - 1] if part_id else 0.0)
            bx1, by1, _, by2 = sprite.box
            y_lo, y_hi = self.belt_top + 6 - by1, self.belt_bottom - 6 - by2
            placements.append(_Placement(part_id, defect, sprite, left - bx1, int(rng.uniform(y_lo, y_hi))))
        return placements

    def _view(self, place: _Placement, frame_index: int) -> PartView | None:
        sprite, left = place.sprite, place.left_at(frame_index, self.speed)
        bx1, by1, bx2, by2 = sprite.box
        x1, x2 = max(0.0, left + bx1), min(float(self.width), left + bx2)
        if x2 - x1 < 1.0:
            return None
        cols = slice(max(0, -left), max(0, min(len(sprite.alpha_columns), self.width - left)))
        visible = float(sprite.alpha_columns[cols].sum() / sprite.alpha_columns.sum())
        defect = float(sprite.defect_columns[cols].sum() / max(sprite.defect_columns.sum(), 1e-9))
        box = (x1, place.y0 + by1, x2, place.y0 + by2)
        return PartView(place.part_id, place.defect, box, visible, defect)

    def views(self, frame_index: int) -> list[PartView]:
        """Parts visible in ``frame_index`` (no rendering)."""
        views = (self._view(p, frame_index) for p in self._placements)
        return [v for v in views if v is not None]

    def render(self, frame_index: int) -> Image:
        """BGR frame ``frame_index``."""
        shift = round(self.speed * frame_index)
        frame = self._belt[:, (np.arange(self.width) - shift) % self._belt.shape[1]].copy()
        for place in self._placements:
            left = place.left_at(frame_index, self.speed)
            if -place.sprite.alpha.shape[1] < left < self.width:
                _composite(frame, place.sprite, left, place.y0)
        frame *= _lighting(self.seed, frame_index, self.fps, self.height, self.width)
        noise_rng = np.random.default_rng([self.seed, 2, frame_index])
        frame += noise_rng.normal(0.0, 3.0, frame.shape).astype(np.float32)
        return np.clip(frame, 0, 255).astype(np.uint8)

    def truth(self) -> LineTruth:
        parts = []
        for place in self._placements:
            frames = [(f, v) for f in range(self.n_frames) if (v := self._view(place, f)) is not None]
            parts.append(
                PartTruth(place.part_id, place.defect, frames[0][0], frames[-1][0], tuple(v.box for _, v in frames))
            )
        return LineTruth(self.seed, self.fps, self.width, self.height, self.n_frames, tuple(parts))


def _defect_plan(rng: np.random.Generator, n_parts: int, defect_rate: float) -> list[Defect | None]:
    """Exactly ``round(n_parts * defect_rate)`` defective parts, defect kinds as even as possible."""
    n_bad = round(n_parts * defect_rate)
    offset = int(rng.integers(len(DEFECTS)))
    kinds = [DEFECTS[(i + offset) % len(DEFECTS)] for i in range(n_bad)]
    plan: list[Defect | None] = [*kinds, *([None] * (n_parts - n_bad))]
    order = rng.permutation(n_parts)
    return [plan[i] for i in order]


def _belt_texture(rng: np.random.Generator, height: int, top: int, bottom: int, width: int) -> FloatImage:
    """One period of the moving background: belt with slats, roller rails, static housing rows.

    The texture wraps around horizontally (its noise is blurred with wrap-around), so scrolling it by any
    amount never shows a seam.
    """
    period = 64
    length = period * (width // period + 4)
    tex = np.empty((height, length, 3), np.float32)
    grain = _wrapped_blur(rng.normal(0.0, 1.0, (bottom - top, length)).astype(np.float32), 3.0)
    mottle = _wrapped_blur(rng.normal(0.0, 1.0, (bottom - top, length)).astype(np.float32), 12.0)
    belt = 100.0 + 20.0 * grain + 36.0 * mottle
    x = np.arange(length) % period
    belt -= np.where(x < 4, 28.0, 0.0)[None, :]  # dark groove between slats
    belt += np.where((x >= 4) & (x < 7), 12.0, 0.0)[None, :]  # lit slat edge
    tex[top:bottom] = belt[..., None] * np.array([1.0, 1.0, 1.04], np.float32)
    roller = 150.0 + 45.0 * np.cos(2 * np.pi * np.arange(length) / 24.0)
    rail = 14
    for y0, y1 in ((top - rail, top), (bottom, bottom + rail)):
        tex[y0:y1] = roller[None, :, None] * np.array([0.95, 1.0, 1.0], np.float32)
    tex[: top - rail] = np.array([58.0, 62.0, 66.0], np.float32)
    tex[bottom + rail :] = np.array([70.0, 74.0, 78.0], np.float32)
    return tex


def _wrapped_blur(noise: FloatImage, sigma: float) -> FloatImage:
    """Gaussian blur that wraps horizontally, normalised back to unit standard deviation."""
    pad = int(4 * sigma)
    wrapped = np.concatenate([noise[:, -pad:], noise, noise[:, :pad]], axis=1)
    blurred = cv2.GaussianBlur(wrapped, (0, 0), sigma)[:, pad:-pad]
    return cast(FloatImage, blurred / max(float(blurred.std()), 1e-6) / 4.0)


def _lighting(seed: int, frame_index: int, fps: int, height: int, width: int) -> FloatImage:
    """Slow global brightness drift, a little flicker and a drifting horizontal light falloff."""
    t = frame_index / fps
    phase = (seed % 97) * 0.37
    gain = 1.0 + 0.08 * np.sin(2 * np.pi * t / 7.0 + phase) + 0.02 * np.sin(2 * np.pi * t * 1.7)
    centre = 0.5 + 0.25 * np.sin(2 * np.pi * t / 11.0 + phase)
    x = np.arange(width, dtype=np.float32) / width
    row = gain * (1.0 - 0.35 * (x - centre) ** 2)
    return np.broadcast_to(row[None, :, None], (height, width, 1)).astype(np.float32)


def _composite(frame: FloatImage, sprite: _Sprite, left: int, top: int) -> None:
    """Darken the belt under the part's shadow, then blend the part over it (in place)."""
    h, w = sprite.alpha.shape
    x0, x1 = max(0, left), min(frame.shape[1], left + w)
    sx = slice(x0 - left, x1 - left)
    region = frame[top : top + h, x0:x1]
    region *= 1.0 - 0.45 * sprite.shadow[:, sx, None]
    a = sprite.alpha[:, sx, None]
    region *= 1.0 - a
    region += a * sprite.colour[:, sx]


def _rounded_rect(w: float, h: float, r: float) -> NDArray[np.float64]:
    """Outline of a rounded rectangle centred on the origin, counter-clockwise, 8 points per corner."""
    pts = []
    for cx, cy, start in (
        (w / 2 - r, -h / 2 + r, -90),
        (w / 2 - r, h / 2 - r, 0),
        (-w / 2 + r, h / 2 - r, 90),
        (-w / 2 + r, -h / 2 + r, 180),
    ):
        for a in np.radians(np.linspace(start, start + 90, 8)):
            pts.append((cx + r * np.cos(a), cy + r * np.sin(a)))
    return np.array(pts)


def _corner_cut(w: float, h: float, rng: np.random.Generator) -> NDArray[np.float64]:
    """A triangle, legs 52-65 % of the sides, over one random corner of a ``w`` x ``h`` plate.

    Points: the corner itself, then the ends of the cut edge on the horizontal and vertical sides.
    """
    sx, sy = rng.choice([-1.0, 1.0], size=2)
    lx, ly = rng.uniform(0.52, 0.65) * w, rng.uniform(0.52, 0.65) * h
    cx, cy = sx * (w / 2 + 2), sy * (h / 2 + 2)
    return np.array([(cx, cy), (cx - sx * (lx + 2), cy), (cx, cy - sy * (ly + 2))])


def _scratch(w: float, h: float, rng: np.random.Generator) -> tuple[NDArray[np.float64], float]:
    """Groove end points (crossing most of the plate) and thickness in pixels."""
    x_a, x_b = rng.uniform(-0.45, -0.25) * w, rng.uniform(0.25, 0.45) * w
    y_a, y_b = rng.uniform(-0.4, 0.4, size=2) * h
    if rng.random() < 0.5:
        y_a, y_b = sorted((y_a, y_b))
    return np.array([(x_a, y_a), (x_b, y_b)]), float(rng.uniform(6.5, 9.0))


@dataclass(frozen=True)
class _PlateShape:
    """Size and pose of one plate; maps plate coordinates (origin at its centre) onto its sprite canvas."""

    w: float
    h: float
    radius: float
    angle: float
    size: int
    """Side of the square sprite canvas in output pixels, room for any rotation plus the shadow."""

    @classmethod
    def random(cls, rng: np.random.Generator) -> _PlateShape:
        w, h = rng.uniform(80, 100), rng.uniform(62, 82)
        radius, angle = rng.uniform(7, 12), np.radians(rng.uniform(-10, 10))
        return cls(w, h, radius, angle, int(np.ceil(np.hypot(w, h))) + 16)

    def to_canvas(self, pts: NDArray[np.float64]) -> NDArray[np.int32]:
        """Plate points to supersampled canvas pixels."""
        c, s = np.cos(self.angle), np.sin(self.angle)
        rotated = pts @ np.array([[c, s], [-s, c]])
        return cast(NDArray[np.int32], np.round((rotated + self.size / 2) * SUPERSAMPLE).astype(np.int32))


def _render_sprite(rng: np.random.Generator, defect: Defect | None) -> _Sprite:
    """Draw one plate, with its defect, rotated, on its own canvas (supersampled, then reduced)."""
    shape = _PlateShape.random(rng)
    scratch = _scratch(shape.w, shape.h, rng) if defect == "scratch" else None
    cut = _corner_cut(shape.w, shape.h, rng) if defect == "missing_corner" else None
    base = _plate_colour(rng, defect)
    side = shape.size * SUPERSAMPLE
    plate = np.zeros((side, side), np.uint8)
    cv2.fillPoly(plate, [shape.to_canvas(_rounded_rect(shape.w, shape.h, shape.radius))], (255,))
    defect_mask = np.zeros_like(plate)
    if cut is not None:
        cv2.fillPoly(defect_mask, [shape.to_canvas(cut)], (255,))
        defect_mask &= plate
        plate &= ~defect_mask
    elif scratch is not None:
        ends = shape.to_canvas(scratch[0])
        cv2.line(defect_mask, tuple(ends[0]), tuple(ends[1]), (255,), round(scratch[1] * SUPERSAMPLE))
        defect_mask &= plate
    elif defect == "wrong_colour":
        defect_mask = plate.copy()
    colour = _plate_surface(rng, shape, plate, base=base, scratch=scratch, cut=cut)
    alpha = _shrink(plate.astype(np.float32) / 255.0, SUPERSAMPLE)
    shadow = cv2.GaussianBlur(np.roll(alpha, (5, 4), axis=(0, 1)), (0, 0), 3.0).astype(np.float32)
    ys, xs = np.nonzero(alpha > 0.5)
    box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
    return _Sprite(
        colour=_shrink(colour, SUPERSAMPLE),
        alpha=alpha,
        shadow=shadow,
        box=box,
        alpha_columns=alpha.sum(axis=0).astype(np.float64),
        defect_columns=_shrink(defect_mask.astype(np.float32), SUPERSAMPLE).sum(axis=0).astype(np.float64),
    )


def _plate_colour(rng: np.random.Generator, defect: Defect | None) -> NDArray[np.float32]:
    if defect == "wrong_colour":
        base = np.array(_WRONG_COLOURS_BGR[int(rng.integers(len(_WRONG_COLOURS_BGR)))], np.float32)
        return base * np.float32(rng.uniform(0.9, 1.1))
    tint = rng.uniform(-6, 6, size=3).astype(np.float32)
    return np.array(_STEEL_BGR, np.float32) * np.float32(rng.uniform(0.88, 1.1)) + tint


def _plate_surface(
    rng: np.random.Generator,
    shape: _PlateShape,
    plate: Image,
    *,
    base: NDArray[np.float32],
    scratch: tuple[NDArray[np.float64], float] | None,
    cut: NDArray[np.float64] | None,
) -> FloatImage:
    """Shaded, brushed plate with bevelled edges, two mounting holes and the defect's marks.

    A groove is dark with a lit lip; a cut edge is bare bright metal (the belt shows through the cut
    itself, since the plate's coverage excludes it).
    """
    n = plate.shape[0]
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n
    light = 1.12 - 0.25 * (0.6 * xx + 0.4 * yy)
    brushed = cv2.resize(rng.normal(0, 1, (n // 16, n // SUPERSAMPLE)).astype(np.float32), (n, n))
    surface = base[None, None, :] * light[..., None] + 7.0 * brushed[..., None]
    edge = plate.astype(np.float32) - cv2.erode(plate, np.ones((3 * SUPERSAMPLE,) * 2, np.uint8))
    surface *= 1.0 - 0.35 * (edge / 255.0)[..., None]
    for hx in (-0.33 * shape.w, 0.33 * shape.w):
        centre = shape.to_canvas(np.array([[hx, 0.0]]))[0]
        cv2.circle(surface, tuple(centre), 4 * SUPERSAMPLE, (60.0, 60.0, 62.0), -1)
    if scratch is not None:
        ends, thick = shape.to_canvas(scratch[0]), round(scratch[1] * SUPERSAMPLE)
        highlight = ends + np.array([0, thick // 2 + SUPERSAMPLE], np.int32)
        cv2.line(surface, tuple(highlight[0]), tuple(highlight[1]), (225.0, 225.0, 228.0), 2 * SUPERSAMPLE)
        cv2.line(surface, tuple(ends[0]), tuple(ends[1]), (38.0, 36.0, 40.0), thick)
    if cut is not None:
        edge_ends = shape.to_canvas(cut[1:])
        cv2.line(surface, tuple(edge_ends[0]), tuple(edge_ends[1]), (235.0, 235.0, 238.0), 8 * SUPERSAMPLE)
    return cast(FloatImage, surface.astype(np.float32))


def _shrink(img: FloatImage, factor: int) -> FloatImage:
    h, w = img.shape[:2]
    return cast(FloatImage, cv2.resize(img, (w // factor, h // factor), interpolation=cv2.INTER_AREA))


def render_line(
    path: Path, *, seconds: float = 40.0, fps: int = 15, width: int = 640, height: int = 360, seed: int = 0
) -> LineTruth:
    """Write the demo line video to ``path`` (H.264 mp4) and return its ground truth.

    The truth is not written; call ``truth.save(truth_path(path))`` to keep it next to the video.
    """
    scene = LineScene(seconds=seconds, fps=fps, width=width, height=height, seed=seed)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        stream.options = {"crf": "20", "bf": "0", "preset": "fast"}
        for index in range(scene.n_frames):
            frame = av.VideoFrame.from_ndarray(scene.render(index), format="bgr24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return scene.truth()
