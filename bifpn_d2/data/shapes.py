"""Rendering of the synthetic shapes images and their boxes (see :mod:`.synthetic`).

Each image (``image_size x image_size`` RGB, JPEG quality 95) shows 3 to 10 objects of
:data:`SHAPE_CLASSES` on a textured background (smooth two-colour gradient, low-frequency
colour blotches, faint blurred blobs and thin lines, pixel noise). A class is recognisable
both by its shape and by its colour (a saturated hue family with jitter; the background and
its clutter are nearly grey):

==========  =====================  =========
class       shape                  hue (deg)
==========  =====================  =========
circle      filled ellipse         0 (red)
square      filled rectangle       120 (green)
triangle    filled triangle        220 (blue)
cross       plus sign              55 (yellow)
ring        annulus                300 (magenta)
==========  =====================  =========

Shapes are randomly rotated, with aspect ratio 0.7-1. In the ``default`` :class:`Profile`,
per image, 1-4 objects have a longer side of 8-32 px, 1-4 of 32-110 px and 1-2 of
110-192 px (log-uniform, clipped to ``0.6 * image_size``; some fail to find room), and the
background has up to 5 blurred blobs and 5 lines. For 320 px images that gives about 48 %
small (area ``< 32**2``), 38 % medium and 14 % large (``> 96**2``) instances. Other
profiles (:data:`PROFILES`) change the object-size mix and the clutter: they make the
transfer sets that test a model on data it was not tuned on. Larger objects are drawn
first, and a later one is only placed where every earlier one keeps at least 70 % of its
pixels visible. The renderer returns the map of visible objects, so every annotation is
exact: each mask is the object's visible pixels, its box their tight extent and ``area``
their count (COCO's convention: segmentation area, not box area).
"""

import colorsys
import math
from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["PROFILES", "Profile", "SHAPE_CLASSES", "render_image"]

SHAPE_CLASSES = ("circle", "square", "triangle", "cross", "ring")
_CLASS_HUES_DEG = (0.0, 120.0, 220.0, 55.0, 300.0)



@dataclass(frozen=True)
class Profile:
    """What a generated image holds, apart from its size.

    Attributes:
        side_ranges: per range of the longer side (px, clipped to 0.6 * image_size),
            ``(min side, max side, min count, max count)``: how many objects to try to
            place, drawn uniformly from ``[min count, max count]``; sides log-uniform.
        max_blobs, max_lines: the background's clutter, up to this many blurred blobs and
            faint lines (uniform from 0).
    """

    side_ranges: Tuple[Tuple[int, int, int, int], ...]
    max_blobs: int = 5
    max_lines: int = 5


PROFILES: Dict[str, Profile] = {
    # The built-in train / dev / val splits.
    "default": Profile(((8, 32, 1, 4), (32, 110, 1, 4), (110, 192, 1, 2))),
    # Transfer: fewer small objects, more large ones.
    "large": Profile(((12, 32, 0, 2), (32, 110, 1, 3), (110, 230, 1, 3))),
    # Transfer: more small objects and a busier background.
    "small_cluttered": Profile(
        ((6, 32, 3, 8), (32, 110, 1, 3), (110, 160, 0, 1)), max_blobs=15, max_lines=15
    ),
}
_MAX_OCCLUDED_FRACTION = 0.3
_PLACEMENT_TRIES = 20
_POLYGON_POINTS = 48


def render_image(
    rng: np.random.Generator, size: int, profile: Profile = PROFILES["default"]
) -> Tuple[np.ndarray, List[Tuple[int, List[int], int]], np.ndarray]:
    """One image.

    Returns:
        ``(size, size, 3)`` uint8 pixels; per object, ``(category_id, [x, y, w, h], area)``
        (px; the box is the tight extent of its visible pixels, ``area`` their count); and
        the ``(size, size)`` int16 map of which object each pixel shows (its index in
        that list; -1 for background).
    """
    canvas = _background(rng, size, profile)
    instance_map = np.full((size, size), -1, dtype=np.int16)  # index of the visible object
    sides = []
    for min_side, max_side, min_count, max_count in profile.side_ranges:
        max_side = min(max_side, int(0.6 * size))
        if max_side > min_side:
            count = int(rng.integers(min_count, max_count + 1))
            sides += list(np.exp(rng.uniform(math.log(min_side), math.log(max_side), count)))
    sides.sort(reverse=True)

    placed: list[tuple[int, int, int, np.ndarray]] = []  # (class index, x0, y0, mask)
    areas = np.zeros(0, dtype=np.int64)  # drawn pixel count per placed object
    visible = np.zeros(0, dtype=np.int64)  # of which still visible
    for side in sides:
        class_index = int(rng.integers(len(SHAPE_CLASSES)))
        mask = _shape_mask(rng, SHAPE_CLASSES[class_index], float(side))
        mask_h, mask_w = mask.shape
        for _ in range(_PLACEMENT_TRIES):
            x0 = int(rng.integers(0, size - mask_w + 1))
            y0 = int(rng.integers(0, size - mask_h + 1))
            window = instance_map[y0 : y0 + mask_h, x0 : x0 + mask_w]
            covered = window[mask]
            hidden = np.bincount(covered[covered >= 0], minlength=len(placed))
            if np.all(visible - hidden >= (1 - _MAX_OCCLUDED_FRACTION) * areas):
                break
        else:
            continue
        window[mask] = len(placed)
        visible = np.append(visible - hidden, mask.sum())
        areas = np.append(areas, mask.sum())
        placed.append((class_index, x0, y0, mask))
        region = canvas[y0 : y0 + mask_h, x0 : x0 + mask_w]
        region[mask] = _object_colours(rng, class_index, mask.shape)[mask]

    objects = []
    for index, (class_index, x0, y0, mask) in enumerate(placed):
        own = instance_map[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]] == index
        rows, cols = np.flatnonzero(own.any(axis=1)), np.flatnonzero(own.any(axis=0))
        x, y = x0 + int(cols[0]), y0 + int(rows[0])
        bbox = [x, y, x0 + int(cols[-1]) + 1 - x, y0 + int(rows[-1]) + 1 - y]
        objects.append((class_index + 1, bbox, int(own.sum())))

    canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * rng.uniform(2.0, 6.0)
    return np.clip(canvas, 0, 255).astype(np.uint8), objects, instance_map


def _background(rng: np.random.Generator, size: int, profile: Profile) -> np.ndarray:
    """``(size, size, 3)`` float32, ~[0, 255]: gradient, blotches, blurred blobs, faint lines."""
    start, end = (np.array(_grey_colour(rng), dtype=np.float32) for _ in range(2))
    angle = rng.uniform(0, 2 * math.pi)
    coords = np.arange(size, dtype=np.float32) / (size - 1)
    ramp = coords[None, :] * math.cos(angle) + coords[:, None] * math.sin(angle)
    ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min())
    gradient = start + (end - start) * ramp[..., None]

    # Clutter as an offset image around 128, built at quarter resolution where smooth.
    grid = np.clip(128 + rng.normal(0, 18, (5, 5, 3)), 0, 255).astype(np.uint8)
    quarter = max(size // 4, 8)
    clutter = Image.fromarray(grid).resize((quarter, quarter), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(clutter)
    for _ in range(int(rng.integers(0, profile.max_blobs + 1))):
        cx, cy = rng.uniform(0, quarter, 2)
        rx, ry = rng.uniform(0.03, 0.15, 2) * quarter
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=_grey_offset(rng, 40))
    clutter = clutter.filter(ImageFilter.GaussianBlur(radius=quarter / 40))
    clutter = clutter.resize((size, size), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(clutter)
    for _ in range(int(rng.integers(0, profile.max_lines + 1))):
        points = [tuple(p) for p in rng.uniform(0, size, (2, 2))]
        draw.line(points, fill=_grey_offset(rng, 35), width=int(rng.integers(1, 4)))
    return gradient + (np.asarray(clutter, dtype=np.float32) - 128)


def _grey_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """A random low-saturation RGB colour (saturation <= 0.2), channels in [0, 255]."""
    rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0, 0.2), rng.uniform(0.25, 0.85))
    return tuple(int(round(255 * c)) for c in rgb)


def _grey_offset(rng: np.random.Generator, max_offset: float) -> tuple[int, int, int]:
    """``128 +`` a random brightness offset in ``[-max_offset, max_offset]``, tinted by +-6 per channel."""
    rgb = 128 + rng.uniform(-max_offset, max_offset) + rng.uniform(-6, 6, 3)
    return tuple(int(round(c)) for c in rgb)


def _object_colours(rng: np.random.Generator, class_index: int, shape: tuple[int, int]) -> np.ndarray:
    """``(*shape, 3)`` float32: the class's hue (+-12 deg) with a +-12 % linear shading ramp."""
    hue = (_CLASS_HUES_DEG[class_index] + rng.uniform(-12, 12)) / 360 % 1.0
    saturation, value = rng.uniform(0.6, 1.0, 2)
    rgb = np.array(colorsys.hsv_to_rgb(hue, saturation, value), dtype=np.float32)
    gy, gx = rng.uniform(-0.12, 0.12, 2)
    ys = np.linspace(-1, 1, shape[0], dtype=np.float32)[:, None]
    xs = np.linspace(-1, 1, shape[1], dtype=np.float32)[None, :]
    shading = 1 + gy * ys + gx * xs
    return 255 * rgb * shading[..., None]


def _shape_mask(rng: np.random.Generator, class_name: str, side: float) -> np.ndarray:
    """Boolean ``(h, w)`` mask of a randomly rotated shape whose longer side is ``side`` px."""
    aspect = rng.uniform(0.7, 1.0)
    if rng.random() < 0.5:
        half_w, half_h = side / 2, side * aspect / 2
    else:
        half_w, half_h = side * aspect / 2, side / 2
    theta = np.linspace(0, 2 * math.pi, _POLYGON_POINTS, endpoint=False)
    circle = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    hole = None
    if class_name in ("circle", "ring"):
        outline = circle
        if class_name == "ring":
            inner = min(rng.uniform(0.45, 0.65), 1 - 2 / min(half_w, half_h))  # wall >= 2 px
            hole = circle * inner
    elif class_name == "square":
        outline = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
    elif class_name == "triangle":
        outline = np.array([[0, -1], [1, 1], [-1, 1]], dtype=np.float64)
    elif class_name == "cross":
        a = max(rng.uniform(0.28, 0.4), 1 / min(half_w, half_h))  # arm half-width, >= 1 px
        # fmt: off
        outline = np.array([[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a],
                            [a, 1], [-a, 1], [-a, a], [-1, a], [-1, -a], [-a, -a]])
        # fmt: on
    else:
        raise ValueError(f"Unknown shape {class_name!r}")

    angle = rng.uniform(0, 2 * math.pi)
    cos, sin = math.cos(angle), math.sin(angle)

    def to_pixels(unit_points: np.ndarray) -> np.ndarray:
        """``(n, 2)`` points in the unit box -> scaled and rotated pixel offsets."""
        x, y = unit_points[:, 0] * half_w, unit_points[:, 1] * half_h
        return np.stack([x * cos - y * sin, x * sin + y * cos], axis=1)

    outline = to_pixels(outline)
    origin = np.floor(outline.min(axis=0))
    width, height = (np.ceil(outline.max(axis=0)) - origin + 1).astype(int)
    mask = Image.new("L", (int(width), int(height)), 0)
    draw = ImageDraw.Draw(mask)
    draw.polygon([tuple(p) for p in outline - origin], fill=1)
    if hole is not None:
        draw.polygon([tuple(p) for p in to_pixels(hole) - origin], fill=0)
    return np.asarray(mask, dtype=bool)
