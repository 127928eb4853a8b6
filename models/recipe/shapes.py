"""The procedurally drawn world the demo model learns: one coloured shape on a plain background.

Captions follow ``a [small|large] {colour} {shape} on a {background} background[, {position}]``.
Images are drawn at 4x the final size and downsampled, which gives anti-aliased edges without
any hand-written rasteriser.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
SUPERSAMPLE = 4

COLOURS = {
    "red": (220, 30, 30),
    "orange": (245, 135, 20),
    "yellow": (240, 215, 25),
    "green": (35, 165, 55),
    "blue": (35, 75, 220),
    "purple": (140, 45, 190),
}
BACKGROUNDS = {"white": (245, 245, 245), "black": (12, 12, 12), "gray": (128, 128, 128)}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": (7.0, 10.5), "": (10.5, 15.0), "large": (15.0, 20.0)}  # half-extent in pixels
POSITIONS = {
    "top left": (0.27, 0.27),
    "top right": (0.73, 0.27),
    "bottom left": (0.27, 0.73),
    "bottom right": (0.73, 0.73),
    "center": (0.5, 0.5),
}
# Every word a caption can contain; the tokenizer's vocabulary is exactly this list.
WORDS = (
    ["a", "on", "background", ","]
    + list(COLOURS)
    + list(SHAPES)
    + list(BACKGROUNDS)
    + sorted({w for p in POSITIONS for w in p.split()})
    + [s for s in SIZES if s]
)

# Rotation jitter in degrees.  Kept moderate so that a square still reads as a square and a
# triangle as point-up (at 30 degrees an equilateral triangle points sideways); the test
# measures fill ratio on the minimum-area rectangle, so any rotation would score the same.
MAX_ROTATION = 15.0


def _jitter(rgb: tuple[int, int, int], rng: np.random.Generator, amount: int, tint: bool) -> tuple[int, ...]:
    # Backgrounds only change brightness (a tinted gray would be a colour); objects also tint.
    shift = rng.integers(-amount, amount + 1, size=3 if tint else 1)
    return tuple(int(np.clip(c + d, 0, 255)) for c, d in zip(rgb, np.broadcast_to(shift, 3), strict=True))


def caption(colour: str, shape: str, background: str, size: str = "", position: str = "") -> str:
    """The caption for one scene; empty ``size``/``position`` leave the word out."""
    head = f"a {size} {colour}" if size else f"a {colour}"
    text = f"{head} {shape} on a {background} background"
    return f"{text}, {position}" if position else text


def sample_scene(rng: np.random.Generator) -> dict:
    """Draw the attributes of one scene and which of them the caption mentions."""
    size_word = str(rng.choice(list(SIZES)))
    position = str(rng.choice(list(POSITIONS)))
    return {
        "colour": str(rng.choice(list(COLOURS))),
        "shape": str(rng.choice(SHAPES)),
        "background": str(rng.choice(list(BACKGROUNDS))),
        "size": size_word,
        "position": position,
        # A caption names the size or position only sometimes, so that both forms are learnt.
        "say_size": bool(size_word and rng.random() < 0.7),
        "say_position": bool(rng.random() < 0.5),
        "half": float(rng.uniform(*SIZES[size_word])),
        "rotation": float(rng.uniform(-MAX_ROTATION, MAX_ROTATION)),
        "offset": rng.uniform(-0.06, 0.06, size=2),
        "free_xy": rng.uniform(0.0, 1.0, size=2),
        "rng_seed": int(rng.integers(2**31)),
    }


def _polygon(shape: str, cx: float, cy: float, half: float, rotation: float) -> list[tuple[float, float]]:
    if shape == "square":
        r, angles = half * math.sqrt(2), [45, 135, 225, 315]
    else:  # equilateral triangle, point up, same area-ish scale as the square
        r, angles = half * 1.25, [-90, 30, 150]
    return [
        (cx + r * math.cos(math.radians(a + rotation)), cy + r * math.sin(math.radians(a + rotation)))
        for a in angles
    ]


def _extent(scene: dict) -> float:
    """Half of the object's bounding-box side in pixels, used to keep it inside the canvas."""
    return (
        scene["half"]
        * (1.25 if scene["shape"] == "triangle" else 1.0)
        * (1.0 if scene["shape"] == "circle" else 1.45)
    )


def render(scene: dict) -> tuple[Image.Image, str]:
    """Draw a scene from ``sample_scene`` into a 64x64 RGB image and return it with its caption."""
    rng = np.random.default_rng(scene["rng_seed"])
    ext = _extent(scene)
    if scene["say_position"]:
        fx, fy = np.asarray(POSITIONS[scene["position"]]) + scene["offset"]
    else:
        fx, fy = scene["free_xy"]
    lo, hi = ext + 1.5, SIZE - ext - 1.5
    cx = float(np.clip(lo + fx * (hi - lo) if not scene["say_position"] else fx * SIZE, lo, hi))
    cy = float(np.clip(lo + fy * (hi - lo) if not scene["say_position"] else fy * SIZE, lo, hi))

    k = SUPERSAMPLE
    bg = _jitter(BACKGROUNDS[scene["background"]], rng, 8, tint=False)
    fg = _jitter(COLOURS[scene["colour"]], rng, 14, tint=True)
    img = Image.new("RGB", (SIZE * k, SIZE * k), bg)
    draw = ImageDraw.Draw(img)
    if scene["shape"] == "circle":
        r = scene["half"] * 1.12  # same area as the square of this half-extent
        draw.ellipse([(cx - r) * k, (cy - r) * k, (cx + r) * k, (cy + r) * k], fill=fg)
    else:
        pts = _polygon(scene["shape"], cx, cy, scene["half"], scene["rotation"])
        draw.polygon([(x * k, y * k) for x, y in pts], fill=fg)
    img = img.resize((SIZE, SIZE), Image.Resampling.BOX)
    text = caption(
        scene["colour"],
        scene["shape"],
        scene["background"],
        scene["size"] if scene["say_size"] else "",
        scene["position"] if scene["say_position"] else "",
    )
    return img, text


def draw_dataset(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """``n`` images as uint8 [n, 64, 64, 3] and their captions, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    captions = []
    for i in range(n):
        img, text = render(sample_scene(rng))
        images[i] = np.asarray(img)
        captions.append(text)
    return images, captions
