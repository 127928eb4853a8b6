"""What runs in the children (``python -m benchmarks.gpu --task NAME SPEC``): one step each."""

from __future__ import annotations

import os
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.common import write_json
from benchmarks.gpu.config import FP16_TOL, FP32_TOL, PROMPT
from benchmarks.gpu.runner import GpuRunner, cpu_threads, diffusers_images, diffusers_pipe
from benchmarks.models import tiny_models
from benchmarks.worker import initial_latents, rss_mb


def task_build(spec: dict) -> None:
    """The benchmark model (SD 1.5 arch, built on ``device``) or the tiny test model."""
    import torch

    torch.set_num_threads(min(8, os.cpu_count() or 1))
    path = Path(spec["path"])
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if spec["kind"] == "sd15":
        from benchmarks.sd15 import build_sd15_arch

        # Default initialisation on the GPU takes seconds where the CPU takes a minute.
        with torch.device(spec["device"]):
            build_sd15_arch(tmp, lambda d: tiny_models().make_clip_tokenizer("sd1", d))
    else:
        tiny_models().build_tiny_sd(tmp, kind="sd1", seed=0)
    os.replace(tmp, path)


def task_refs(spec: dict) -> None:
    """diffusers' images on the correctness latents: fp32 (the reference) and, on a GPU, fp16."""
    cpu_threads(spec["device"])
    lat = np.load(spec["latents"])
    gen = {"num_inference_steps": spec["steps"], "guidance_scale": spec["guidance"]}
    gen.update(height=spec["height"], width=spec["width"])
    out = {}
    for dt in ("fp32", "fp16") if spec["device"] != "cpu" else ("fp32",):
        out[dt] = diffusers_images(diffusers_pipe(spec["model_dir"], dt, spec["device"]), PROMPT, lat, **gen)
    np.savez(spec["out"], **out)


def _time_batch(runner: GpuRunner, latents: np.ndarray, repeats: int, gen: dict) -> tuple[dict, np.ndarray]:
    t = time.perf_counter()
    images, _, _ = runner.generate(PROMPT, latents, **gen)  # warm-up (cuDNN's algorithm search)
    warm = time.perf_counter() - t
    runs = [runner.generate(PROMPT, latents, **gen)[1:] for _ in range(repeats)]
    keys = sorted(set().union(*(r[1] for r in runs)))
    timed = {
        "warmup_s": warm,
        "e2e_s": statistics.median(r[0] for r in runs),
        "e2e_runs_s": [r[0] for r in runs],
        "stages_s": {k: statistics.median(r[1].get(k, 0.0) for r in runs) for k in keys},
    }
    return timed, images


def task_time(spec: dict) -> None:
    """One system: load, warm up, then ``repeats`` timed runs per batch (the suite's worker, on a GPU)."""
    if spec["system"] == "diffusers":
        cpu_threads(spec["device"])
    t0 = time.perf_counter()
    runner = GpuRunner(
        spec["system"], Path(spec["model_dir"]), spec["provider"], spec["device"], spec["dtype"]
    )
    gen = {k: spec[k] for k in ("steps", "guidance", "height", "width")}
    lat = dict(channels=4, height=spec["height"] // spec["factor"], width=spec["width"] // spec["factor"])
    result: dict = {"load_s": time.perf_counter() - t0, "runs": {}}
    if getattr(runner, "attention", None):
        result["attention"] = runner.attention
    if spec["system"] == "sdlite":
        result["providers"] = runner.pipe.providers
    for batch in spec["batches"]:
        timed, images = _time_batch(runner, initial_latents(batch, spec["seed"], **lat), spec["repeats"], gen)
        if batch == spec["batches"][0]:
            np.save(spec["images"], images[:1])
        result["runs"][str(batch)] = timed
        write_json(Path(spec["out"]), result)  # batch by batch: a timeout keeps what was measured
    if spec["system"] == "diffusers" and spec["device"] != "cpu":
        import torch

        result["torch_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    result["peak_rss_mb"] = rss_mb()
    write_json(Path(spec["out"]), result)


def _check_variant(variant: dict, spec: dict, lat: np.ndarray, refs) -> dict:
    from sdlite import Pipeline

    pipe = Pipeline.from_pretrained(variant["dir"], provider=spec["provider"])
    gen = {"num_inference_steps": spec["steps"], "guidance_scale": spec["guidance"]}
    out = pipe(
        [PROMPT] * lat.shape[0],
        height=spec["height"],
        width=spec["width"],
        sampler="unipc",
        latents=lat,
        output_type="np",
        **gen,
    )
    diff = np.abs(np.asarray(out.images, dtype=np.float32) - refs["fp32"])
    tol = FP16_TOL if variant["dtype"] == "fp16" else FP32_TOL
    row = {"providers": pipe.providers, "max_abs_diff_255": float(diff.max() * 255)}
    row.update(mean_abs_diff_255=float(diff.mean() * 255), limit_255=tol * 255, ok=bool(diff.max() <= tol))
    if variant["dtype"] == "fp16" and "fp16" in refs.files:
        # How far diffusers' own fp16 lands from its fp32: the scale of fp16 rounding here.
        row["diffusers_fp16_max_abs_diff_255"] = float(np.abs(refs["fp16"] - refs["fp32"]).max() * 255)
    return row


def task_check(spec: dict) -> None:
    """sdlite on the tiny exports through the provider, against diffusers' fp32 image."""
    lat, refs = np.load(spec["latents"]), np.load(spec["refs"])
    rows = []
    for variant in spec["variants"]:
        row = {"model": "tiny-sd1", "dtype": variant["dtype"], "provider": spec["provider"]}
        try:
            row.update(_check_variant(variant, spec, lat, refs))
        except Exception as e:  # one variant failing must not hide the other's figure
            row.update(ok=False, error=f"{type(e).__name__}: {str(e)[-600:]}")
        rows.append(row)
    write_json(Path(spec["out"]), {"rows": rows})


TASKS = {"build": task_build, "refs": task_refs, "time": task_time, "check": task_check}
