"""Time per ``step()`` of every sampler on a (2, 4, 64, 64) float32 latent (SD 1.5 at 512 px with
classifier-free guidance): sdlite's numpy samplers vs diffusers' torch schedulers, same process,
same configs, same model outputs.  Writes benchmarks/results/sampler_speed.{json,md} (not with
--quick).

    python -m benchmarks.samplers_speed [--quick]

Two timings per sampler: with the stochastic samplers' noise handed to both sides (the sampler
alone; the target), and with each side drawing it inside step() (diffusers from torch's
generator, ours from a numpy Generator).  torch runs with one thread: numpy's elementwise kernels
are single-threaded, and the machine is shared.

Target: no sampler's step() slower than diffusers' step() for the same sampler (ratio <= 1.0).
A scheduler step is well under 0.1% of a generation next to the U-Net calls, so beating
diffusers by a wide margin buys nothing end to end; the samplers are written for clarity (one
protocol, the VE sample and the data prediction) as long as they stay at least as fast.

The process first allocates and frees one large array.  glibc's malloc starts out serving
128 KB blocks (one latent) with mmap and trimming its heap as soon as 256 KB lie free at the
top; its first free of a large mmap-ed block raises both thresholds for good.  Until then, a
loop of latent-sized arrays, numpy's or torch's alike, page-faults at random depending on the
order of its allocations (measured here: +-15% on the same code).  A pipeline's process is past
that point after its first VAE decode, so the benchmark times both sides in that state.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

SHAPE = (2, 4, 64, 64)
RESULTS = Path(__file__).resolve().parent / "results"
TARGET_RATIO = 1.0  # ours <= diffusers: see the module docstring


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; results are shared files
    os.replace(tmp, path)


def settle_heap() -> None:
    """Put glibc's malloc in the state a pipeline process is in (see the module docstring)."""
    np.ones(4 << 20, dtype=np.float32)  # 16 MB: mmap-ed, then freed at once


def _model_outputs(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(SHAPE, dtype=np.float32) * np.float32(0.8) for _ in range(n)]


def _time_ours(
    name: str,
    config: dict[str, Any],
    steps: int,
    outs: list[np.ndarray],
    runs: int,
    given_noise: bool = False,
) -> list[float]:
    """``given_noise``: hand step() a pre-drawn array instead of letting it draw from a Generator."""
    from sdlite.samplers import make_scheduler

    sched = make_scheduler(name, config)
    rng = np.random.default_rng(1)
    noise = rng.standard_normal(SHAPE, dtype=np.float32)
    times = []
    for _ in range(runs):
        sched.set_timesteps(steps)
        x = rng.standard_normal(SHAPE, dtype=np.float32) * np.float32(sched.init_noise_sigma)
        spent = 0.0
        for k, t in enumerate(sched.timesteps):
            out = outs[k % len(outs)]
            sched.scale_model_input(x, t)
            t0 = time.perf_counter()
            if given_noise:
                x = sched.step(out, t, x, noise=noise)
            else:
                x = sched.step(out, t, x, generator=rng)
            spent += time.perf_counter() - t0
        times.append(spent / len(sched.timesteps))
    return times


def _time_diffusers(
    name: str,
    config: dict[str, Any],
    steps: int,
    outs: list[np.ndarray],
    runs: int,
    given_noise: bool = False,
) -> list[float]:
    """``given_noise``: diffusers' ``randn_tensor`` hands back one pre-drawn tensor (how the
    parity tests feed it our noise), so only the sampler arithmetic is timed."""
    import contextlib
    import importlib
    import unittest.mock

    import torch

    from tests.samplers.reference import diffusers_class, make_diffusers

    sched = make_diffusers(name, config, {})
    touts = [torch.from_numpy(o) for o in outs]
    gen = torch.Generator().manual_seed(1)
    kwargs = {"generator": gen} if "generator" in inspect.signature(sched.step).parameters else {}
    module = importlib.import_module(diffusers_class(name).__module__)
    fixed = torch.randn(SHAPE, generator=gen)
    patch = (
        unittest.mock.patch.object(module, "randn_tensor", lambda *a, **k: fixed)
        if given_noise and hasattr(module, "randn_tensor")
        else contextlib.nullcontext()
    )
    times = []
    with patch:
        for _ in range(runs):
            sched.set_timesteps(steps)
            x = torch.randn(SHAPE, generator=gen) * sched.init_noise_sigma
            spent = 0.0
            for k, t in enumerate(sched.timesteps):
                out = touts[k % len(touts)]
                sched.scale_model_input(x, t)
                t0 = time.perf_counter()
                x = sched.step(out, t, x, return_dict=False, **kwargs)[0]
                spent += time.perf_counter() - t0
            times.append(spent / len(sched.timesteps))
    return times


def _time_draws(n: int) -> tuple[list[float], list[float]]:
    """Seconds per standard-normal latent: numpy's Generator (what our step() draws with) and
    torch.randn, ``n`` of each in alternation."""
    import torch

    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)
    ours, ref = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        rng.standard_normal(SHAPE, dtype=np.float32)
        t1 = time.perf_counter()
        torch.randn(SHAPE, generator=gen)
        ref.append(time.perf_counter() - t1)
        ours.append(t1 - t0)
    return ours, ref


def run(quick: bool = False) -> dict[str, Any]:
    """ms per step() for every sampler, ours and diffusers'; returns the result dict.

    Each run is one whole ``steps``-step loop; its figure is the loop's time in step() divided by
    the number of calls (a two-call sampler's calls differ ~2x in cost, so a median over single
    calls would land on whichever kind is the majority).  The four timings of a sampler are
    taken in alternation, run by run (a round), so that the shared machine's drift lands on all
    alike.  The times reported are medians over rounds; the ratios are medians of each round's
    own ratio, whose two runs are adjacent in time (this machine's speed swings by tens of per
    cent within a minute, and a median of times from different rounds would mix phases).
    """
    import diffusers
    import torch

    from tests.samplers.reference import ALL_SAMPLERS, SD15_PNDM

    torch.set_num_threads(1)
    diffusers.utils.logging.set_verbosity_error()
    settle_heap()
    steps, runs = (10, 1) if quick else (25, 25)
    outs = _model_outputs(8)
    rows: dict[str, Any] = {}
    all_draws: tuple[list[float], list[float]] = ([], [])
    for name in ALL_SAMPLERS:
        # Warm-up run on each side (first-call imports, allocator), then the timed ones.
        _time_ours(name, SD15_PNDM, 3, outs, 1)
        _time_diffusers(name, SD15_PNDM, 3, outs, 1)
        per_run: dict[str, list[float]] = {"ours": [], "ref": [], "given": [], "ref_given": []}
        draw_np: list[float] = []
        draw_torch: list[float] = []
        ours_run = functools.partial(_time_ours, name, SD15_PNDM, steps, outs, 1)
        ref_run = functools.partial(_time_diffusers, name, SD15_PNDM, steps, outs, 1)
        jobs = {
            "ours": ours_run,
            "ref": ref_run,
            "given": functools.partial(ours_run, given_noise=True),
            "ref_given": functools.partial(ref_run, given_noise=True),
        }
        for i in range(runs):
            # The draws are timed within the same rounds: the machine's speed drifts.
            a, b = _time_draws(5)
            draw_np += a
            draw_torch += b
            # Every other round in reverse: what ran just before (the other side's arrays in
            # the caches) then falls on both sides alike.
            for key in jobs if i % 2 == 0 else reversed(jobs):
                per_run[key] += jobs[key]()
        ours, ref, given, ref_given = (statistics.median(v) * 1e3 for v in per_run.values())
        rounds_given = [a / b for a, b in zip(per_run["given"], per_run["ref_given"], strict=True)]
        ratio_given = statistics.median(rounds_given)
        ratio_drawing = statistics.median(a / b for a, b in zip(per_run["ours"], per_run["ref"], strict=True))
        np_ms, torch_ms = statistics.median(draw_np) * 1e3, statistics.median(draw_torch) * 1e3
        all_draws[0].extend(draw_np)
        all_draws[1].extend(draw_torch)
        draws_noise = _draws(name, SD15_PNDM, steps, outs)
        rows[name] = {
            "draws_noise": draws_noise,
            "ours_noise_given_ms": round(given, 4),
            "diffusers_noise_given_ms": round(ref_given, 4),
            "ratio_noise_given": round(ratio_given, 3),
            "meets_target": ratio_given <= TARGET_RATIO,
            "ours_drawing_ms": round(ours, 4),
            "diffusers_drawing_ms": round(ref, 4),
            "ratio_drawing": round(ratio_drawing, 3),
            # each round's ratio, for the spread
            "ratios_noise_given": [round(r, 3) for r in rounds_given],
            # One latent's draw as a share of diffusers' drawing step: where it is over the target
            # ratio, no sampler drawing with that generator inside step() can meet the target.
            "torch_draw_share": round(torch_ms / ref, 3) if draws_noise else None,
            "numpy_draw_share": round(np_ms / ref, 3) if draws_noise else None,
        }
        print(
            f"{name:14s} noise given: ours {given:8.3f} ms  diffusers {ref_given:8.3f} ms  ratio "
            f"{ratio_given:6.3f}  drawing: {ours:8.3f} vs {ref:8.3f} ms, ratio {ratio_drawing:6.3f}",
            flush=True,
        )
    draws = {
        "numpy_ms": round(statistics.median(all_draws[0]) * 1e3, 4),
        "torch_ms": round(statistics.median(all_draws[1]) * 1e3, 4),
    }
    print(f"noise draw: numpy {draws['numpy_ms']:.3f} ms, torch {draws['torch_ms']:.3f} ms", flush=True)
    return {
        "noise_draw": draws,
        "shape": list(SHAPE),
        "dtype": "float32",
        "config": "SD 1.5 scheduler_config",
        "steps_per_run": steps,
        "runs": runs,
        "torch_threads": 1,
        "target_ratio": TARGET_RATIO,
        "quick": quick,
        "samplers": rows,
    }


def _draws(name: str, config: dict[str, Any], steps: int, outs: list[np.ndarray]) -> bool:
    """Whether our ``name`` draws noise in this config: its Generator's state moves."""
    from sdlite.samplers import make_scheduler

    sched = make_scheduler(name, config)
    rng = np.random.default_rng(0)
    sched.set_timesteps(steps)
    before = rng.bit_generator.state
    x = np.zeros(SHAPE, dtype=np.float32)
    for k, t in enumerate(sched.timesteps):
        x = sched.step(outs[k % len(outs)], t, x, generator=rng)
    return rng.bit_generator.state != before


def markdown(result: dict[str, Any]) -> str:
    target = result["target_ratio"]
    draws = result["noise_draw"]
    lines = [
        f"Time per `step()` on a {tuple(result['shape'])} {result['dtype']} latent: each run is one "
        f"{result['steps_per_run']}-step loop, its time in step() over its number of calls. The four "
        f"timings of a sampler are taken in alternation, {result['runs']} rounds "
        f"({result['config']}; torch with {result['torch_threads']} thread); times are medians over "
        "rounds, ratios the median of each round's ratio (its two runs adjacent in time; the range "
        "over rounds is shown beside it). Process heap settled as after a pipeline's first image "
        f"(see `benchmarks/samplers_speed.py`). Target: ours <= {target}x diffusers.",
        "",
        "*Noise given* (the target): both sides get the same pre-drawn array for a stochastic step "
        "(sdlite `step(noise=...)`; diffusers' `randn_tensor` returns it, as in the parity tests), so "
        "the sampler is timed, not a random-number generator. This is also how the pipeline runs "
        "them: each image's noise comes from its own seed. *Drawing*: each side draws inside "
        "step() (diffusers from a torch generator, sdlite from a numpy Generator).",
        "",
        "| sampler | diffusers (ms) | sdlite (ms) | ratio | rounds | target | diffusers, drawing (ms) "
        "| sdlite, drawing (ms) | ratio |",
        "|---|---:|---:|---:|---:|:---:|---:|---:|---:|",
    ]
    for name, row in result["samplers"].items():
        mark = "yes" if row["meets_target"] else "**no**"
        spread = row.get("ratios_noise_given") or [row["ratio_noise_given"]]
        lines.append(
            f"| {name} | {row['diffusers_noise_given_ms']:.3f} | {row['ours_noise_given_ms']:.3f} "
            f"| {row['ratio_noise_given']:.3f} | {min(spread):.2f}-{max(spread):.2f} | {mark} "
            f"| {row['diffusers_drawing_ms']:.3f} "
            f"| {row['ours_drawing_ms']:.3f} | {row['ratio_drawing']:.2f} |"
        )
    drawing = {n: r for n, r in result["samplers"].items() if r.get("torch_draw_share") is not None}

    def over(key: str) -> str:
        return ", ".join(f"{n} {r[key]:.2f}x" for n, r in drawing.items() if r[key] > target) or "none"

    lines += [
        "",
        f"One standard-normal latent of this shape costs {draws['numpy_ms']:.3f} ms with numpy's "
        f"`Generator.standard_normal` and {draws['torch_ms']:.3f} ms with `torch.randn` (median over "
        "the run, timed in the same rounds as the samplers); "
        "with the draw inside step(), a stochastic step costs at least its draw. As a share of "
        "diffusers' own drawing step, numpy's draw alone is over the target for: "
        f"{over('numpy_draw_share')}; torch's draw alone for: {over('torch_draw_share')}. "
        "The runtime's only generator is numpy's, so the target is taken on the sampler, with the "
        "noise given.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="fewer steps and runs (smoke test, nothing written)"
    )
    args = parser.parse_args(argv)
    result = run(quick=args.quick)
    print(markdown(result))
    if not args.quick:  # a smoke test's figures are not results
        write(result)


def write(result: dict[str, Any]) -> None:
    """benchmarks/results/sampler_speed.{json,md} (also called by the suite)."""
    _write_atomic(RESULTS / "sampler_speed.json", json.dumps(result, indent=2) + "\n")
    _write_atomic(RESULTS / "sampler_speed.md", markdown(result))


if __name__ == "__main__":
    main()
