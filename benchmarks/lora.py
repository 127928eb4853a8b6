"""What LoRAs cost (issue #19, acceptance 3): switching sets, steps with and without one, memory,
and diffusers' load + set_adapters + generate beside it.  Writes benchmarks/results/lora.{json,md}.

    python -m benchmarks.lora [--quick] [--steps N] [--size PX] [--rounds N] [--out DIR]

Default: SD 1.5's architecture with random weights (``benchmarks.sd15``, exported once by
sdlite's exporter, fp32 CPU, cached under .cache/benchmarks), 512 px; ``--quick``: the tests'
tiny model (seconds).  Two LoRAs are made in the run with peft (rank 8 on the U-Net's attention
and the text encoder's attention, random weights) and saved as safetensors by diffusers.

A 20-step 512 px generation of SD 1.5 takes minutes on this CPU, so none is run: "one 20-step
generation" is text encoder + 20 x the measured step + VAE decode, each measured.  A step is
the wall time between two consecutive step callbacks of a short call (both systems, Euler, one
U-Net call a step, guidance on); the switch is the time a call that changes the set takes over
one that repeats it (sdlite exposes no activation timer: the call is the public interface).
Figures are medians of alternating rounds; ratios are medians of each round's ratio.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from sdlite import Pipeline

from benchmarks import machine, models
from benchmarks.common import write_study
from benchmarks.docs import REPO, RESULTS

WEIGHT = 0.8
RANK = 8
THREADS = 2  # both systems on the machine's two cores
GUIDANCE = 7.5
PROMPT = "a photo of an astronaut riding a horse on the moon"
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
GOALS = {"switch": 0.05, "no_lora": 1.02, "one_lora": 1.10, "memory": 1.5}

Step = Callable[[], dict[str, float]]


def log(msg: str) -> None:
    print(f"[lora {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


def median(values: list[float]) -> float:
    return statistics.median(values)


def intervals(marks: list[float]) -> float | None:
    """The median time between consecutive step callbacks: one step, the call's set-up left out
    (None for a 1-step call)."""
    gaps = [b - a for a, b in zip(marks[:-1], marks[1:], strict=True)]
    return median(gaps) if gaps else None


def exported(quick: bool) -> tuple[Path, Path]:
    """(diffusers folder, sdlite export), cached as the suite caches them (``models.prepare``'s
    keys) but without optimum's export, which this study does not use."""
    from benchmarks.sd15 import build_sd15_arch

    tm = models.tiny_models()
    if quick:
        name, keys = "tiny-sd1", ()
        build = lambda p: tm.build_tiny_sd(p, kind="sd1", seed=0)  # noqa: E731
    else:
        name, keys = "sd15-arch", (Path(models.__file__).with_name("sd15.py"),)
        build = lambda p: build_sd15_arch(p, lambda d: tm.make_clip_tokenizer("sd1", d))  # noqa: E731
    root = models.DEFAULT_CACHE / f"{name}-{models.source_key(REPO / 'tests' / 'tiny_models.py', *keys)}"
    src = tm.cached_build(root, "diffusers", build)
    ours_root = root / f"sdlite-{models.source_key(REPO / 'export')}"
    return src, tm.cached_build(ours_root, "onnx", lambda p: models.export_sdlite(src, p))


# --- the LoRAs ---------------------------------------------------------------------------------


def make_loras(diffusers_dir: Path, out: Path, names=("a", "b")) -> dict[str, Path]:
    """One safetensors file per name: peft LoRAs (random weights, a seed each) on the U-Net's and
    text encoder's attention, saved by diffusers (PEFT keys, as a trainer writes them)."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig, get_peft_model_state_dict
    from transformers import CLIPTextModel

    out.mkdir(parents=True, exist_ok=True)
    unet = UNet2DConditionModel.from_pretrained(diffusers_dir, subfolder="unet")
    te = CLIPTextModel.from_pretrained(diffusers_dir, subfolder="text_encoder")
    paths = {}
    for seed, name in enumerate(names, start=1):
        torch.manual_seed(seed)
        layers, meta = {}, {}
        for comp, model, targets in (("unet", unet, UNET_TARGETS), ("text_encoder", te, TE_TARGETS)):
            cfg = LoraConfig(r=RANK, lora_alpha=RANK, target_modules=targets, init_lora_weights=False)
            tag = f"zq{seed}"  # peft picks an adapter's keys by substring: a name no module holds
            model.add_adapter(cfg, adapter_name=tag)
            state = get_peft_model_state_dict(model, adapter_name=tag)
            layers[f"{comp}_lora_layers"] = {k: v.detach().clone() for k, v in state.items()}
            meta[f"{comp}_lora_adapter_metadata"] = model.peft_config[tag].to_dict()
        StableDiffusionPipeline.save_lora_weights(
            str(out), **layers, **meta, weight_name=f"{name}.safetensors"
        )
        paths[name] = out / f"{name}.safetensors"
    del unet, te
    return paths


# --- sdlite ------------------------------------------------------------------------------------


def sd_call(pipe: Pipeline, steps: int, size: int, loras: dict | None, output: str = "latent") -> dict:
    """One call; its timings, the wall time and the step times (between consecutive callbacks)."""
    marks: list[float] = []
    t0 = time.perf_counter()
    out = pipe(
        PROMPT,
        "",
        num_inference_steps=steps,
        guidance_scale=GUIDANCE,
        height=size,
        width=size,
        sampler="euler",
        seed=0,
        output_type=output,
        loras=loras,
        callback=lambda i, n, x: marks.append(time.perf_counter()),
    )
    wall = time.perf_counter() - t0
    return {**out.timings, "wall": wall, "step": intervals(marks)}


def sd_memory(pipe: Pipeline, loras: dict[str, Path], size: int) -> dict[str, Any]:
    """RSS growth of each registration against its file, then of the first call with a set."""
    reg = {}
    for name, path in loras.items():
        before = rss()
        tracemalloc.start()  # RSS alone misses memory the allocator reuses from freed pages
        pipe.load_lora_weights(path, adapter_name=name)
        traced = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        grown, nbytes = rss() - before, path.stat().st_size
        held = max(grown, traced)
        reg[name] = {"file_bytes": nbytes, "rss_bytes": grown, "traced_bytes": traced, "ratio": held / nbytes}
    before = rss()
    sd_call(pipe, 1, size, {"a": WEIGHT})
    return {"registered": reg, "active_set_rss_bytes": rss() - before}


def sd_switch(pipe: Pipeline, rounds: int, size: int) -> dict[str, Any]:
    """Per round: a -> a -> b -> b, one step each; a switch's cost is its call's wall time over
    the call that repeats the same set right after it."""
    added, outside = [], []
    for _ in range(rounds):
        for name in ("a", "b"):
            switch = sd_call(pipe, 1, size, {name: WEIGHT})
            repeat = sd_call(pipe, 1, size, {name: WEIGHT})
            added.append(switch["wall"] - repeat["wall"])
            outside.append(switch["outside_sessions"] - repeat["outside_sessions"])
    return {"switch_s": median(added), "switches": added, "outside_sessions_s": median(outside)}


def rotate(cases: dict[str, Step], rounds: int) -> list[dict[str, dict[str, float]]]:
    """``rounds`` rounds of every case, the order rotated each round so that a drift of the
    machine's load weighs on all alike."""
    names, out = list(cases), []
    for r in range(rounds):
        k = r % len(names)
        out.append({n: cases[n]() for n in names[k:] + names[:k]})
    return out


def ratios(rows: list[dict], num: str, den: str, key: str = "step") -> list[float]:
    return [row[num][key] / row[den][key] for row in rows]


def sd_steps(fresh: Pipeline, loaded: Pipeline, rounds: int, steps: int, size: int) -> dict[str, Any]:
    """Steps of a pipeline that never loaded a LoRA, of one with two registered but none asked
    for (``loras=None``), and of that one with LoRA "a" active."""
    cases = {
        "never_loaded": lambda: sd_call(fresh, steps, size, None),
        "registered_none_active": lambda: sd_call(loaded, steps, size, None),
        "one_active": lambda: sd_call(loaded, steps, size, {"a": WEIGHT}),
    }
    sd_call(fresh, 1, size, None)  # warm-up: first runs allocate (the other pipeline has run)
    rows = rotate(cases, rounds)
    return {
        "step_s": {n: median([r[n]["step"] for r in rows]) for n in cases},
        "text_encoder_s": median([r["never_loaded"]["text_encoder"] for r in rows]),
        "no_lora_ratios": ratios(rows, "registered_none_active", "never_loaded"),
        "one_lora_ratios": ratios(rows, "one_active", "registered_none_active"),
    }


def sdlite_side(folder: Path, loras: dict[str, Path], args: argparse.Namespace) -> dict[str, Any]:
    size, steps, rounds = args.size, args.steps, args.rounds
    loaded = Pipeline.from_pretrained(folder, "cpu", num_threads=THREADS)
    sd_call(loaded, 1, size, None)  # warm-up before the memory is read
    log("sdlite: memory")
    memory = sd_memory(loaded, loras, size)
    log("sdlite: switches")
    sd_call(loaded, 1, size, {"b": WEIGHT})
    switch = sd_switch(loaded, rounds, size)
    vae = sd_call(loaded, 1, size, None, output="pil")["vae"]  # one decode of size px
    fresh = Pipeline.from_pretrained(folder, "cpu", num_threads=THREADS)
    log("sdlite: steps")
    step = sd_steps(fresh, loaded, rounds, steps, size)
    del fresh, loaded
    gen20 = step["text_encoder_s"] + 20 * step["step_s"]["never_loaded"] + vae
    return {
        "memory": memory,
        "switch": switch,
        "steps": step,
        "vae_decode_s": vae,
        "generation_20_s": gen20,
        "switch_ratio": switch["switch_s"] / gen20,
        "no_lora_ratio": median(step["no_lora_ratios"]),
        "one_lora_ratio": median(step["one_lora_ratios"]),
    }


# --- diffusers ---------------------------------------------------------------------------------


def df_call(pipe, steps: int, size: int) -> dict[str, float]:
    import torch

    marks: list[float] = []

    def mark(p, i, t, kwargs):
        marks.append(time.perf_counter())
        return kwargs

    t0 = time.perf_counter()
    pipe(
        PROMPT,
        negative_prompt="",
        num_inference_steps=steps,
        guidance_scale=GUIDANCE,
        height=size,
        width=size,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
        callback_on_step_end=mark,
    )
    wall = time.perf_counter() - t0
    return {"wall": wall, "step": intervals(marks)}


def df_pipeline(folder: Path):
    import diffusers
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    torch.set_num_threads(THREADS)
    # peft reports the first adapter's keys as "missing" while it loads the second: expected
    diffusers.utils.logging.set_verbosity_error()
    pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32, safety_checker=None)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def df_switch(pipe, rounds: int) -> list[float]:
    """set_adapters from one LoRA to the other, each direction once a round (the weights are
    not touched: peft switches which adapters its layers add)."""
    times = []
    for _ in range(max(rounds, 5)):
        for name in ("b", "a"):
            t0 = time.perf_counter()
            pipe.set_adapters([name], [WEIGHT])
            times.append(time.perf_counter() - t0)
    return times


def diffusers_side(folder: Path, loras: dict[str, Path], args: argparse.Namespace) -> dict[str, Any]:
    """load_lora_weights + set_adapters + generate, same steps, size and rounds as sdlite."""
    import torch

    size, steps, rounds = args.size, args.steps, args.rounds
    with torch.inference_mode():
        pipe = df_pipeline(folder)
        df_call(pipe, 1, size)  # warm-up
        base = [df_call(pipe, steps, size)["step"] for _ in range(rounds)]
        log("diffusers: loads, switches, steps")
        loads = {}
        for name, path in loras.items():
            before, t0 = rss(), time.perf_counter()
            pipe.load_lora_weights(str(path), adapter_name=name)
            loads[name] = {"load_s": time.perf_counter() - t0, "rss_bytes": rss() - before}
        pipe.set_adapters(["a"], [WEIGHT])
        switch = df_switch(pipe, rounds)

        def active() -> dict[str, float]:
            pipe.set_adapters(["a"], [WEIGHT])
            return df_call(pipe, steps, size)

        def disabled() -> dict[str, float]:
            pipe.disable_lora()
            try:
                return df_call(pipe, steps, size)
            finally:
                pipe.enable_lora()

        cases = {"lora_disabled": disabled, "one_active": active}
        rows = rotate(cases, rounds)
    return {
        "never_loaded_step_s": median(base),
        "step_s": {n: median([r[n]["step"] for r in rows]) for n in cases},
        "one_lora_ratios": ratios(rows, "one_active", "lora_disabled"),
        "one_lora_ratio": median(ratios(rows, "one_active", "lora_disabled")),
        "one_lora_vs_never_loaded": median([r["one_active"]["step"] for r in rows]) / median(base),
        "loads": loads,
        "switch_s": median(switch),
        "switch_ratio": median(switch) / (20 * median(base)),
    }


# --- the run -----------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    machine_before = machine.describe(REPO)
    t0 = time.perf_counter()
    src, onnx = exported(args.quick)
    prepare_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="sdlite-lora-bench-") as tmp:
        log(f"model ready ({prepare_s:.0f} s); making the LoRAs")
        loras = make_loras(src, Path(tmp))
        files = {n: p.stat().st_size for n, p in loras.items()}
        ours = sdlite_side(onnx, loras, args)
        gc.collect()
        theirs = diffusers_side(src, loras, args)
    mem = ours["memory"]["registered"]
    figures = {
        "switch": ours["switch_ratio"],
        "no_lora": ours["no_lora_ratio"],
        "one_lora": ours["one_lora_ratio"],
        "memory": max(r["ratio"] for r in mem.values()),
    }
    return {
        "machine": machine_before,
        "model": "tiny SD-1 (the tests')" if args.quick else "SD 1.5 architecture, random weights",
        "export_or_cache_s": prepare_s,
        "quick": args.quick,
        "size": args.size,
        "steps": args.steps,
        "rounds": args.rounds,
        "threads": THREADS,
        "guidance": GUIDANCE,
        "lora": dict(rank=RANK, weight=WEIGHT, unet=UNET_TARGETS, text_encoder=TE_TARGETS, file_bytes=files),
        "goals": GOALS,
        "figures": figures,
        "met": {k: figures[k] <= GOALS[k] for k in GOALS},
        "sdlite": ours,
        "diffusers": theirs,
    }


def _s(x: float) -> str:
    return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.2f} s"


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def _verdict(doc: dict, key: str) -> str:
    return "met" if doc["met"][key] else "MISSED"


def markdown(doc: dict[str, Any]) -> str:
    m, ours, theirs, f, g = doc["machine"], doc["sdlite"], doc["diffusers"], doc["figures"], doc["goals"]
    st, sw = ours["steps"]["step_s"], ours["switch"]
    size = f"{doc['size']}²"
    lines = [
        f"{doc['model']} (sdlite export, fp32) on the CPU, {doc['threads']} threads, {size}, "
        f"Euler, guidance {doc['guidance']:g}; two LoRAs made in the run with peft (rank "
        f"{doc['lora']['rank']}, U-Net and text encoder attention), weight {doc['lora']['weight']:g}. "
        f"Steps: {doc['steps']}-step calls, {doc['rounds']} rotating rounds, medians.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, load average {m['loadavg_start'][0]:.2f} at the start "
        f"({m['date_utc']}).",
        "",
        f"One 20-step {size} generation is not run: it is text encoder "
        f"({_s(ours['steps']['text_encoder_s'])}) + 20 × step ({_s(st['never_loaded'])}) + VAE decode "
        f"({_s(ours['vae_decode_s'])}) = **{_s(ours['generation_20_s'])}**, each measured.",
        "",
        "| goal | measured | target | verdict |",
        "|---|---:|---:|---|",
        f"| switching LoRA set, over one 20-step generation | {_s(sw['switch_s'])} = {f['switch']:.1%} "
        f"| ≤ {g['switch']:.0%} | {_verdict(doc, 'switch')} |",
        f"| step, no LoRA active (two registered), over a pipeline that never loaded one "
        f"| {f['no_lora']:.3f}× | ≤ {g['no_lora']:.2f}× | {_verdict(doc, 'no_lora')} |",
        f"| step, one LoRA active, over no LoRA active | {f['one_lora']:.3f}× | ≤ {g['one_lora']:.2f}× "
        f"| {_verdict(doc, 'one_lora')} |",
        "| memory per registered LoRA (the larger of RSS growth and bytes kept), over its file "
        f"| {f['memory']:.2f}× | ≤ {g['memory']:.1f}× "
        f"| {_verdict(doc, 'memory')} |",
        "",
        "| | sdlite | diffusers |",
        "|---|---:|---:|",
        f"| step, never loaded a LoRA | {_s(st['never_loaded'])} | {_s(theirs['never_loaded_step_s'])} |",
        f"| step, LoRAs loaded, none active | {_s(st['registered_none_active'])} "
        f"| {_s(theirs['step_s']['lora_disabled'])} (`disable_lora()`) |",
        f"| step, one LoRA active | {_s(st['one_active'])} | {_s(theirs['step_s']['one_active'])} |",
        f"| one active over none | {f['one_lora']:.3f}× | {theirs['one_lora_ratio']:.3f}× |",
        f"| switch to another set | {_s(sw['switch_s'])} (merge + new sessions) "
        f"| {_s(theirs['switch_s'])} (`set_adapters`) |",
    ]
    for name, r in ours["memory"]["registered"].items():
        d = theirs["loads"][name]
        lines.append(
            f"| loading LoRA {name!r} ({_mib(r['file_bytes'])} file): RSS growth (sdlite: "
            f"and bytes allocated and kept) | {_mib(r['rss_bytes'])} ({_mib(r['traced_bytes'])}) "
            f"| {_mib(d['rss_bytes'])} ({_s(d['load_s'])}) |"
        )
    lines += [
        f"| RSS growth, first call with a set (the merged copy) "
        f"| {_mib(ours['memory']['active_set_rss_bytes'])} "
        "| – (no copy: peft adds B·A at run time) |",
        "",
        'Why "no LoRA active" is measured against a pipeline that never loaded a LoRA: sdlite needs no '
        'export change for LoRAs, so a folder "exported without LoRA support" is the same folder; '
        "what LoRA support could cost a base call is the registered LoRAs and the kept merged set, "
        "and `loras=None` runs the file's own session. The switch is the wall time of a 1-step call that "
        f"changes the set over the call that repeats it (median of {len(sw['switches'])}; sessions' "
        f"time outside the models: {_s(sw['outside_sessions_s'])}). diffusers' switch ratio is over "
        f"20 × its step alone: {theirs['switch_ratio']:.2%}; its never-loaded steps are measured before "
        "its loads, the other two rows alternate.",
    ]
    return "\n".join(lines) + "\n"


def write(doc: dict[str, Any], out: Path = RESULTS) -> dict[str, Path]:
    """lora.json and lora.md, each written whole or not at all."""
    return write_study(out, "lora", doc, markdown(doc))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lora", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tests' tiny model (seconds)")
    parser.add_argument("--steps", type=int, default=3, help="steps of each timed call (default 3)")
    parser.add_argument("--size", type=int, default=None, help="image side in px (default 512; quick 64)")
    parser.add_argument("--rounds", type=int, default=3, help="rotating rounds (default 3)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args(argv)
    args.size = args.size or (64 if args.quick else 512)
    if not 2 <= args.steps <= 50:
        parser.error("--steps must be in [2, 50] (a step is timed between two callbacks)")
    if not 1 <= args.rounds <= 100:
        parser.error("--rounds must be in [1, 100]")
    if args.size % 64 or not 64 <= args.size <= 2048:
        parser.error("--size must be a multiple of 64 in [64, 2048]")
    doc = run(args)
    paths = write(doc, args.out)
    print(markdown(doc))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
