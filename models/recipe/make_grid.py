"""Render the README's grid: the shipped demo model on a dozen fixed prompts, fixed seeds.

    python models/recipe/make_grid.py [--out docs/demo_grid.png]

Nothing is hand-picked: seed ``i`` for prompt ``i``, the runtime's sampler at 20 steps.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from PIL import Image, ImageDraw
from sdlite import Pipeline
from sdlite.models import demo_path

PROMPTS = (
    "a red circle on a white background",
    "a blue square on a black background",
    "a yellow triangle on a gray background",
    "a green circle on a black background, top left",
    "a large purple square on a white background",
    "a small orange triangle on a black background",
    "a blue triangle on a white background, bottom right",
    "a red square on a gray background, center",
    "a small yellow circle on a white background, top right",
    "a large green triangle on a gray background",
    "a purple circle on a gray background, bottom left",
    "an orange square on a white background",
)
SCALE = 2  # 64 px images shown at 128 px
COLUMNS = 6
LABEL_H = 30


def make_grid(out: Path, sampler: str = "dpmpp_2m", steps: int = 20, guidance: float = 7.5) -> Path:
    pipe = Pipeline.from_pretrained(demo_path(), "cpu")
    images = pipe(
        list(PROMPTS),
        seed=list(range(len(PROMPTS))),
        sampler=sampler,
        num_inference_steps=steps,
        guidance_scale=guidance,
    ).images
    cell = 64 * SCALE
    rows = (len(images) + COLUMNS - 1) // COLUMNS
    grid = Image.new("RGB", (COLUMNS * cell, rows * (cell + LABEL_H)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (img, prompt) in enumerate(zip(images, PROMPTS, strict=True)):
        x, y = (i % COLUMNS) * cell, (i // COLUMNS) * (cell + LABEL_H)
        grid.paste(img.resize((cell, cell), Image.Resampling.NEAREST), (x, y))
        # Two short lines under each image: the prompt without its fixed words.
        words = prompt.removeprefix("a ").removeprefix("an ").replace(" background", "").split(", ")
        draw.text((x + 3, y + cell + 2), words[0][:24], fill="black")
        draw.text((x + 3, y + cell + 15), (words[1] if len(words) > 1 else "")[:24], fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.png")
    grid.convert("P", palette=Image.Palette.ADAPTIVE, colors=128).save(tmp, optimize=True)
    os.replace(tmp, out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parents[2] / "docs" / "demo_grid.png"
    )
    args = parser.parse_args()
    path = make_grid(args.out)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
