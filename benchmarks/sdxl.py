"""SDXL-architecture rows: sdlite (our fp32 CPU export) vs diffusers' StableDiffusionXLPipeline
(PyTorch, fp32), same random weights, prompt, latents, sampler and steps, end to end at 512².

    python -m benchmarks.sdxl [--quick]

The real SDXL U-Net (2.6 B parameters, 10 GB in fp32; 5x the widths, so roughly 25x the compute)
does not fit a benchmark run of minutes on the 2-core CPU here, so the model is SDXL-*shaped* and
scaled down; see ``CONFIG_NOTE``.
Everything that makes SDXL a different pipeline is kept: two CLIP text encoders (the second with
projection, penultimate hidden states concatenated), the ``text_time`` added conditioning
(pooled embeddings + 6 time ids), the three-level U-Net without attention in the top level and
with deeper transformers further down, linear projections, SDXL's VAE (SD's architecture,
scaling factor 0.13025, ``force_upcast``) and SDXL's scheduler config (Euler, ``leading``).

Timings: each system generates one 128² image to warm up, then ``runs`` images at the measured
size; the median is reported (default: three 512² images, 3 steps, guidance 5; about a minute
here once the model is built; the first run also builds and exports it: ~6 min, ~5 of them in
ONNX Runtime's fusion pass over the U-Net, whose 70 transformer blocks are SDXL's).
Both use every core (ORT's default intra-op threads; torch's default threads).  The pixel
difference between the two images is reported too: the same computation, not just the same speed.
Writes benchmarks/results/sdxl.{json,md,png}.  The model is built and exported once into the
git-ignored .cache/benchmarks/.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import CHARTS_SKIPPED, atomic_write, pyplot, save_figure

RESULTS = Path(__file__).resolve().parent / "results"
PROMPT, NEGATIVE = "a photo of an astronaut riding a horse on the moon", "blurry, lowres"
GUIDANCE, SEED = 5.0, 0

CONFIG_NOTE = (
    "SDXL's layout at a fifth of its width: U-Net block widths 64/128/256 (SDXL: 320/640/1280) with "
    "SDXL's transformer depths 1/2/10 per level (the top level's unused, as in SDXL), head dim 64, "
    "text encoders 256-wide x 12 layers and 384-wide x 16 layers with projection 384 "
    "(SDXL: 768 x 12 and 1280 x 32), time-id embedding 64 (SDXL: 256), VAE widths 32/64/128/128 "
    "(SDXL: 128/256/512/512; scaling 0.13025, force_upcast). The full-size U-Net alone is 10 GB "
    "of fp32 weights."
)

# unet/config.json of stable-diffusion-xl-base-1.0, with the widths and depths above scaled down.
UNET_CONFIG: dict[str, Any] = {
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 64,
    "attention_head_dim": [1, 2, 4],
    "block_out_channels": [64, 128, 256],
    "cross_attention_dim": 256 + 384,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "in_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 6 * 64 + 384,
    "sample_size": 128,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True,
}
# vae/config.json of stable-diffusion-xl-base-1.0, a quarter of its width.
VAE_CONFIG: dict[str, Any] = {
    "block_out_channels": [32, 64, 128, 128],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "force_upcast": True,
}
_TEXT_COMMON: dict[str, Any] = {
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "vocab_size": 49408,
}
TEXT_CONFIG: dict[str, Any] = {
    **_TEXT_COMMON,
    "hidden_act": "quick_gelu",
    "hidden_size": 256,
    "intermediate_size": 1024,
    "num_attention_heads": 4,
    "num_hidden_layers": 12,
    "projection_dim": 256,
    "pad_token_id": 49407,
}
TEXT_2_CONFIG: dict[str, Any] = {
    **_TEXT_COMMON,
    "hidden_act": "gelu",
    "hidden_size": 384,
    "intermediate_size": 1536,
    "num_attention_heads": 6,
    "num_hidden_layers": 16,
    "projection_dim": 384,
    "pad_token_id": 0,
}
# scheduler/scheduler_config.json of stable-diffusion-xl-base-1.0.
SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}


def build_sdxl_arch(path: str | os.PathLike, make_tokenizer, seed: int = 0) -> Path:
    """Save the random-weight SDXL-shaped ``StableDiffusionXLPipeline`` folder at ``path``.

    ``make_tokenizer(kind, workdir)`` returns transformers' CLIPTokenizer over the real CLIP files
    ("sd1": pads with <|endoftext|>, SDXL's first tokenizer; "sd2": pads with "!", its second).
    """
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    path = Path(path)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    vae = AutoencoderKL(**VAE_CONFIG)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**TEXT_2_CONFIG))
    with tempfile.TemporaryDirectory() as tmp:
        pipe = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=make_tokenizer("sd1", Path(tmp) / "t1"),
            tokenizer_2=make_tokenizer("sd2", Path(tmp) / "t2"),
            unet=unet,
            scheduler=EulerDiscreteScheduler.from_config(SCHEDULER_CONFIG),
            force_zeros_for_empty_prompt=True,
            add_watermarker=False,
        )
        pipe.save_pretrained(path, safe_serialization=True)
    return path


def prepare(cache_dir: Path, log=print) -> tuple[Path, Path]:
    """(diffusers folder, sdlite export), built once and keyed by the code that makes them."""
    from benchmarks import models

    tm = models.tiny_models()
    # Keyed by the configs (not this file: editing the report code must not rebuild the model).
    configs = json.dumps(
        [UNET_CONFIG, VAE_CONFIG, TEXT_CONFIG, TEXT_2_CONFIG, SCHEDULER_CONFIG], sort_keys=True
    )
    arch = hashlib.sha256(configs.encode()).hexdigest()[:8]
    root = cache_dir / f"sdxl-arch-{models.source_key(models.REPO / 'tests' / 'tiny_models.py')}-{arch}"
    log("[sdxl] diffusers folder")
    src = tm.cached_build(root, "diffusers", lambda p: build_sdxl_arch(p, tm.make_clip_tokenizer))
    log("[sdxl] sdlite export (fp32, cpu)")
    ours = tm.cached_build(
        root / f"sdlite-{models.source_key(models.REPO / 'export')}",
        "onnx",
        lambda p: models.export_sdlite(src, p),
    )
    return src, ours


WARMUP_SIZE = 128


def _timed(fn, runs: int) -> tuple[list[float], Any]:
    """``fn(WARMUP_SIZE)`` once (first-call allocations, ORT's kernel choice, torch's caches: a
    small image does it for a fraction of the cost), then ``fn(None)`` ``runs`` times."""
    fn(WARMUP_SIZE)
    times, out = [], None
    for _ in range(runs):
        t = time.perf_counter()
        out = fn(None)
        times.append(time.perf_counter() - t)
    return times, out


def measure(src: Path, ours_dir: Path, size: int, steps: int, runs: int, log=print) -> dict[str, Any]:
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from sdlite import Pipeline

    def inputs(warmup: int | None) -> tuple[np.ndarray, dict[str, Any]]:
        px = warmup or size
        latents = np.random.default_rng(SEED).standard_normal((1, 4, px // 8, px // 8), dtype=np.float32)
        args = dict(negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=GUIDANCE)
        return latents, dict(args, height=px, width=px)

    log(f"[sdxl] sdlite {size}², {steps} steps, {runs} run(s)")
    pipe = Pipeline.from_pretrained(ours_dir, "cpu")

    def run_ours(warmup):
        latents, args = inputs(warmup)
        return pipe(PROMPT, sampler="euler", latents=latents, output_type="np", **args)

    ours_times, ours_out = _timed(run_ours, runs)
    pipe = None  # free its sessions' memory before diffusers loads
    log(f"[sdxl] diffusers {size}², {steps} steps, {runs} run(s)")
    ref = StableDiffusionXLPipeline.from_pretrained(src, torch_dtype=torch.float32)
    ref.scheduler = EulerDiscreteScheduler.from_config(ref.scheduler.config)
    ref.set_progress_bar_config(disable=True)

    def run_ref(warmup):
        latents, args = inputs(warmup)
        with torch.inference_mode():
            return ref(PROMPT, latents=torch.from_numpy(latents), output_type="np", **args).images

    ref_times, ref_images = _timed(run_ref, runs)
    diff = np.abs(ours_out.images.astype(np.float64) - ref_images) * 255
    return {
        "size": size,
        "steps": steps,
        "guidance": GUIDANCE,
        "sampler": "euler (EulerDiscreteScheduler)",
        "runs": runs,
        "sdlite_s": statistics.median(ours_times),
        "diffusers_s": statistics.median(ref_times),
        "sdlite_all_s": ours_times,
        "diffusers_all_s": ref_times,
        "sdlite_stages_s": {k: round(v, 4) for k, v in ours_out.timings.items()},
        "max_abs_diff_255": float(diff.max()),
        "mean_abs_diff_255": float(diff.mean()),
    }


def _params(src: Path) -> dict[str, float]:
    from safetensors import safe_open

    out = {}
    for part in ("unet", "text_encoder", "text_encoder_2", "vae"):
        n = 0
        for f in (src / part).glob("*.safetensors"):
            with safe_open(str(f), "np") as st:
                n += sum(int(np.prod(st.get_slice(k).get_shape())) for k in st.keys())  # noqa: SIM118
        out[part] = n / 1e6
    return out


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    lines = [
        "SDXL architecture (random weights), sdlite vs diffusers' StableDiffusionXLPipeline, fp32 on "
        f"the CPU ({m.get('cpu', '?')}, {m.get('cores', '?')} cores), same latents, Euler, guidance "
        f"{GUIDANCE:g}, one prompt + negative prompt.",
        "",
        CONFIG_NOTE,
        "Parameters (millions): "
        + ", ".join(f"{k} {v:.0f}" for k, v in doc["parameters_m"].items())
        + " (SDXL: unet 2567, text_encoder 123, text_encoder_2 695, vae 84).",
        "",
        "| size | steps | sdlite s | diffusers s | sdlite ÷ diffusers | sdlite U-Net s | max diff /255 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["rows"]:
        lines.append(
            f"| {r['size']}² | {r['steps']} | {r['sdlite_s']:.2f} | {r['diffusers_s']:.2f} "
            f"| {r['sdlite_s'] / r['diffusers_s']:.2f}× | {r['sdlite_stages_s']['unet']:.2f} "
            f"| {r['max_abs_diff_255']:.3f} |"
        )
    runs = doc["rows"][0]["runs"]
    lines += ["", f"Median of {runs} run(s) after a {WARMUP_SIZE}² warm-up each.", "", "![chart](sdxl.png)"]
    return "\n".join(lines) + "\n"


def chart(doc: dict[str, Any], path: Path) -> Path | None:
    """sdlite's and diffusers' seconds per image as bars; None (nothing written) without matplotlib."""
    plt = pyplot()
    if plt is None:
        return None

    rows = doc["rows"]
    labels = [f"{r['size']}², {r['steps']} steps" for r in rows]
    ys = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(7, 0.9 * len(rows) + 1.4), dpi=100)
    ax.barh(ys - 0.2, [r["sdlite_s"] for r in rows], 0.4, label="sdlite (ONNX Runtime)", color="#2e7d32")
    ax.barh(ys + 0.2, [r["diffusers_s"] for r in rows], 0.4, label="diffusers (PyTorch)", color="#777777")
    ax.set_yticks(ys, labels)
    ax.invert_yaxis()
    ax.set_xlabel("seconds per image, end to end (lower is better)")
    ax.set_title("SDXL architecture (scaled down, random weights), fp32 CPU", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(plt, fig, path)


def main(argv: list[str] | None = None) -> int:
    from benchmarks import machine, models

    parser = argparse.ArgumentParser(prog="python -m benchmarks.sdxl", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="256² only, 2 steps, 1 run (a smoke test)")
    parser.add_argument("--cache", type=Path, default=models.DEFAULT_CACHE, help="build cache folder")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args(argv)

    def log(msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)

    src, ours = prepare(args.cache.resolve(), log)
    plan = [(256, 2, 1)] if args.quick else [(512, 3, 3)]
    doc = {
        "benchmark": "sdxl",
        "mode": "quick" if args.quick else "default",
        "machine": machine.describe(models.REPO),
        "config_note": CONFIG_NOTE,
        "unet_config": UNET_CONFIG,
        "parameters_m": _params(src),
        "rows": [measure(src, ours, size, steps, runs, log) for size, steps, runs in plan],
    }
    stem = "sdxl-quick" if args.quick else "sdxl"
    atomic_write(args.out / f"{stem}.json", json.dumps(doc, indent=1) + "\n")
    md = markdown(doc).replace("sdxl.png", f"{stem}.png")
    if chart(doc, args.out / f"{stem}.png") is None:
        md = md.replace(f"![chart]({stem}.png)", CHARTS_SKIPPED)
    atomic_write(args.out / f"{stem}.md", md)
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
