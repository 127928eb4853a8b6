"""What `sdlite export --quantize int8` costs in pixels: the same prompts and seeds rendered by an
fp32 CPU export and by its int8 twin, max and mean absolute difference per pixel (/255).

``python -m benchmarks.int8_quality DIFFUSERS_DIR [DIFFUSERS_DIR ...]`` (default: the tiny test
model, built into the benchmarks cache; for the demo model pass the folder that
``models/recipe/train.py`` saves, .cache/demo-diffusers). Writes benchmarks/results/int8_quality.{json,md}.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
PROMPTS = ["a red circle on a white background", "a small blue triangle on a black background"]
SEEDS = [0, 1, 2]


def _render(model: Path, steps: int) -> np.ndarray:
    from sdlite import Pipeline

    pipe = Pipeline.from_pretrained(model, "cpu")
    outs = [
        pipe(p, num_inference_steps=steps, sampler="dpmpp_2m", seed=s, output_type="np").images
        for p in PROMPTS
        for s in SEEDS
    ]
    return np.concatenate(outs) * 255.0


def measure(source: Path, steps: int = 20) -> dict:
    from sdlite.export import export_model

    with tempfile.TemporaryDirectory(prefix="sdlite-int8-") as tmp:
        fp32, int8 = Path(tmp) / "fp32", Path(tmp) / "int8"
        export_model(source, fp32, dtype="fp32", target="cpu", progress=False)
        export_model(source, int8, dtype="fp32", target="cpu", quantize="int8", progress=False)
        diff = np.abs(_render(fp32, steps) - _render(int8, steps))
        size = {
            k: sum(f.stat().st_size for f in (Path(tmp) / k / "unet").glob("model.onnx*"))
            for k in ("fp32", "int8")
        }  # noqa: E501
    return {
        "model": str(source),
        "images": len(PROMPTS) * len(SEEDS),
        "steps": steps,
        "max_abs_255": float(diff.max()),
        "mean_abs_255": float(diff.mean()),
        "unet_mb_fp32": size["fp32"] / 2**20,
        "unet_mb_int8": size["int8"] / 2**20,
    }


def _label(model: str) -> str:
    # The benchmark cache names the folder "diffusers" inside a per-model folder.
    p = Path(model)
    return p.parent.name if p.name == "diffusers" else p.name


def markdown(rows: list[dict]) -> str:
    lines = [
        "int8 dynamic quantization (text encoder + U-Net) against the fp32 export of the same model, "
        f"DPM++ 2M, 20 steps, guidance 7.5, {len(PROMPTS)} prompts x {len(SEEDS)} seeds.",
        "",
        "| model | max abs diff /255 | mean abs diff /255 | U-Net MB fp32 | U-Net MB int8 |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {_label(r['model'])} | {r['max_abs_255']:.1f} | {r['mean_abs_255']:.2f} "
            f"| {r['unet_mb_fp32']:.2f} | {r['unet_mb_int8']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv:
        sources = [Path(a) for a in argv]
    else:
        from benchmarks.models import tiny

        sources = [tiny().diffusers_dir]
    rows = [measure(s) for s in sources]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "int8_quality.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    (RESULTS / "int8_quality.md").write_text(markdown(rows), encoding="utf-8")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
