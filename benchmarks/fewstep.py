"""SD-Turbo-style few-step generation end to end: sdlite (ONNX Runtime) vs diffusers (PyTorch) on
the same random-weight model, 1, 2 and 4 steps, Euler ancestral with ``trailing`` spacing,
guidance 0 (no unconditional pass): what the ``sd-turbo`` preset runs.  Writes
benchmarks/results/fewstep.{json,md,png}.

    python -m benchmarks.fewstep [--quick] [--cache DIR]

The model is the tests' tiny SD-1 model (``benchmarks.models.tiny``: sdlite's own fp32 CPU export
and the diffusers folder it came from), at 64² (its native size: the fixed per-call costs of
each runtime dominate) and 128² (4x the pixels).  Both systems run on one thread with the
same initial latents; each configuration has one
warm-up call, then the median of the timed ones.  A separate call per configuration feeds
diffusers our per-step noise too and records the largest pixel difference, so each row also
says the two produced the same image.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import CHARTS_SKIPPED, atomic_write, pyplot, save_figure

RESULTS = Path(__file__).resolve().parent / "results"
STEPS = (1, 2, 4)
SIZES = (64, 128)
PROMPT = "a photo of an astronaut riding a horse on the moon"
SEED = 1234
EULER_A = "diffusers.schedulers.scheduling_euler_ancestral_discrete"


def _draws(seed: int, shape: tuple[int, ...], n: int) -> list[np.ndarray]:
    """Our pipeline's draws for one image: the initial latents, then one per step."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape, dtype=np.float32)[None] for _ in range(n)]


def _time(fn, runs: int) -> tuple[float, list[float]]:
    fn()  # warm-up: first-call allocations, ORT's kernel selection, torch's lazy init
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def _pipelines(model, threads: int):
    """sdlite on its export with the sd-turbo preset; diffusers with the same sampler settings."""
    import diffusers
    import torch
    from sdlite import Pipeline

    torch.set_num_threads(threads)
    diffusers.utils.logging.set_verbosity_error()
    ours = Pipeline.from_pretrained(model.sdlite_dir, provider="cpu", num_threads=threads, preset="sd-turbo")
    ref = diffusers.StableDiffusionPipeline.from_pretrained(
        model.diffusers_dir, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False
    )
    ref.scheduler = diffusers.EulerAncestralDiscreteScheduler.from_config(
        ref.scheduler.config, timestep_spacing="trailing"
    )
    ref.set_progress_bar_config(disable=True)
    return ours, ref


def _with_our_noise(call_ref, draws: list[np.ndarray]):
    """diffusers' image with its ancestral noise replaced by our per-step draws: the same image."""
    import torch

    module = importlib.import_module(EULER_A)
    original, feed = module.randn_tensor, iter(draws)
    module.randn_tensor = lambda *a, **k: torch.from_numpy(next(feed))
    try:
        return call_ref().images
    finally:
        module.randn_tensor = original


def _row(ours, ref, size: int, steps: int, factor: int, runs: int) -> dict[str, Any]:
    import torch

    draws = _draws(SEED, (4, size // factor, size // factor), 1 + steps)

    def call_ours():
        # Steps, sampler and guidance 0 come from the sd-turbo preset.
        return ours(PROMPT, num_inference_steps=steps, height=size, width=size, seed=SEED, output_type="np")

    def call_ref():
        with torch.no_grad():
            gen = {"num_inference_steps": steps, "guidance_scale": 0.0, "height": size, "width": size}
            return ref(PROMPT, latents=torch.from_numpy(draws[0]), output_type="np", **gen)

    unet_s: list[float] = []
    ours_s, ours_runs = _time(lambda: unet_s.append(call_ours().timings["unet"]), runs)
    ref_s, ref_runs = _time(call_ref, runs)
    diff = float(np.abs(call_ours().images - _with_our_noise(call_ref, draws[1:])).max() * 255)
    return {
        "size": size,
        "steps": steps,
        "sdlite_s": round(ours_s, 4),
        "diffusers_s": round(ref_s, 4),
        "speedup": round(ref_s / ours_s, 2),
        "sdlite_unet_s": round(statistics.median(unet_s[1:]), 4),
        "sdlite_runs_s": [round(t, 4) for t in ours_runs],
        "diffusers_runs_s": [round(t, 4) for t in ref_runs],
        "max_pixel_diff_255": float(f"{diff:.3g}"),
    }


def run(quick: bool = False, cache_dir: Path | None = None, log=print) -> dict[str, Any]:
    from benchmarks import machine, models

    # One thread each: the fairest split on a shared machine (an oversubscribed multi-threaded
    # torch or ORT spends its time waiting for cores), and both systems scale alike with more.
    threads = 1
    model = models.tiny(cache_dir or models.DEFAULT_CACHE, log=log)
    ours, ref = _pipelines(model, threads)
    runs = 3 if quick else 5
    rows = []
    for size in SIZES:
        for steps in STEPS:
            rows.append(_row(ours, ref, size, steps, model.latent_factor, runs))
            r = rows[-1]
            log(
                f"[fewstep] {size}² {steps} step(s): sdlite {r['sdlite_s'] * 1e3:.1f} ms, diffusers "
                f"{r['diffusers_s'] * 1e3:.1f} ms ({r['speedup']:.2f}x), "
                f"max diff {r['max_pixel_diff_255']}/255"
            )
    return {
        "what": "end-to-end text-to-image, batch 1, euler_a trailing, guidance 0 (the sd-turbo preset)",
        "model": f"{model.name} (random weights; sdlite runs its {model.sdlite_export} export, fp32)",
        "threads": threads,
        "runs": runs,
        "quick": quick,
        "machine": machine.describe(Path(__file__).resolve().parent.parent),
        "rows": rows,
    }


def markdown(result: dict[str, Any], chart: str | None = None) -> str:
    lines = [
        f"SD-Turbo-style generation, {result['what']}; {result['model']}; {result['threads']} thread(s) "
        f"for both; median of {result['runs']} runs after a warm-up.",
        "",
        "| size | steps | diffusers (ms) | sdlite (ms) | speedup | sdlite U-Net (ms) | max diff (/255) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['size']}² | {r['steps']} | {r['diffusers_s'] * 1e3:.1f} | {r['sdlite_s'] * 1e3:.1f} | "
            f"{r['speedup']:.2f}x | {r['sdlite_unet_s'] * 1e3:.1f} | {r['max_pixel_diff_255']:.2g} |"
        )
    lines += [
        "",
        "max diff: the same call with diffusers given our per-step noise as well (same image expected,",
        "<= 2/255).",
    ]
    if chart:
        lines += ["", f"![few-step timings]({chart})"]
    return "\n".join(lines) + "\n"


def chart(result: dict[str, Any], path: Path) -> Path | None:
    """The timings as bars; None (nothing written) without matplotlib."""
    plt = pyplot()
    if plt is None:
        return None

    sizes = sorted({r["size"] for r in result["rows"]})
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 3.6))
    for ax, size in zip(np.atleast_1d(axes), sizes, strict=True):
        rows = [r for r in result["rows"] if r["size"] == size]
        x = np.arange(len(rows))
        ax.bar(x - 0.2, [r["diffusers_s"] * 1e3 for r in rows], 0.4, label="diffusers (PyTorch)")
        ax.bar(x + 0.2, [r["sdlite_s"] * 1e3 for r in rows], 0.4, label="sdlite (ONNX Runtime)")
        ax.set_xticks(x, [f"{r['steps']} step{'s' if r['steps'] > 1 else ''}" for r in rows])
        ax.set_ylabel("ms per image")
        ax.set_title(f"{size}x{size}, euler_a trailing, guidance 0")
        ax.legend()
    fig.tight_layout()
    return save_figure(plt, fig, path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.fewstep", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="3 timed runs instead of 7")
    parser.add_argument(
        "--cache", type=Path, default=None, help="model build cache (default .cache/benchmarks)"
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="results folder (default benchmarks/results)"
    )
    args = parser.parse_args(argv)
    result = run(quick=args.quick, cache_dir=args.cache)
    png = chart(result, args.out / "fewstep.png")
    atomic_write(args.out / "fewstep.json", json.dumps(result, indent=2) + "\n")
    atomic_write(args.out / "fewstep.md", markdown(result, png.name if png else None))
    if png is None:
        print(CHARTS_SKIPPED)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
