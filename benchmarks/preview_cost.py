"""What live previews cost on the demo model (issue #21: at most 3% of generation time with the
linear map), and how far the map's preview of the final latents is from the VAE's image.  Writes
benchmarks/results/preview_cost.{json,md}.

    python -m benchmarks.preview_cost [--rounds 31] [--out DIR]

The model is a copy of the demo model in a temporary folder, so that the fitted map's
``preview.json`` lands there and the first use fits it: that one-time cost is timed on its own
(``pipe.preview_map``), then the cached map's load in a second pipeline.  Then a 20-step
generation with ``preview=callback, preview_every=1`` (the callback keeps only the step) and the
same generation without previews alternate in each round, the order swapped every round; the
figure judged is the median of the rounds' ratios.  A preview alone (the map and the bilinear
resize, ``pipe.preview_map.image``) is timed apart too.  The error is the preview module's own
figure: the mean absolute difference, in [0, 1], between the preview of the final latents and the
decoded image, for a few prompts and seeds; a mid-grey image's difference is given beside it.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from sdlite import Pipeline, preview
from sdlite.models import demo_path

from benchmarks import machine
from benchmarks.common import rounds_main, write_study
from benchmarks.docs import REPO, RESULTS
from benchmarks.prompts_cost import GUIDANCE, STEPS, THREADS, Timed, alternate, spread

GOAL = 0.03  # previews at most 3% of generation time
PROMPT = "a large red circle on a white background"
ERROR_PROMPTS = ("a red circle", "a blue square on green", "a yellow triangle", "a purple square")
ERROR_SEEDS = (7, 8)
ALONE_REPEATS = 5  # batches of STEPS previews timed alone; the median batch is kept


def demo_copy(folder: Path) -> Path:
    """The demo model copied into ``folder``, without a cached preview map."""
    copy = Path(shutil.copytree(demo_path(), folder / "demo"))
    (copy / preview.PREVIEW_FILE).unlink(missing_ok=True)
    return copy


def warm_map(model: Path) -> tuple[Pipeline, dict[str, Any]]:
    """A pipeline whose preview map is fitted, and what fitting and loading the cache took."""
    pipe = Pipeline.from_pretrained(model, "cpu", num_threads=THREADS)
    t0 = time.perf_counter()
    fitted = pipe.preview_map
    fit_s = time.perf_counter() - t0
    cached = (model / preview.PREVIEW_FILE).is_file()
    again = Pipeline.from_pretrained(model, "cpu", num_threads=THREADS)
    t0 = time.perf_counter()
    loaded = again.preview_map
    load_s = time.perf_counter() - t0
    same = bool(np.array_equal(loaded.weights, fitted.weights) and np.array_equal(loaded.bias, fitted.bias))
    return pipe, {"fit_s": fit_s, "cached": cached, "cached_load_s": load_s, "cache_matches": same}


def generation(pipe: Pipeline, with_previews: bool) -> Timed:
    """One 20-step call, with a preview after every step or none: its total and previews seen."""

    def run() -> dict[str, float]:
        shown: list[int] = []
        kw: dict[str, Any] = {}
        if with_previews:
            kw = {"preview": lambda step, total, image: shown.append(step), "preview_every": 1}
        out = pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=GUIDANCE, seed=0, **kw)
        t = out.timings
        return {"total": t["total"], "outside_sessions": t["outside_sessions"], "previews": len(shown)}

    return run


def alone(pipe: Pipeline) -> float:
    """Seconds of one preview image from latents of the call's size, timed apart (median batch)."""
    size = pipe.default_size
    cells = size // pipe.vae_scale_factor
    latents = np.random.default_rng(0).standard_normal((1, pipe.latent_channels, cells, cells), np.float32)
    batches = []
    for _ in range(ALONE_REPEATS):
        t0 = time.perf_counter()
        for _ in range(STEPS):
            pipe.preview_map.image(latents, size, size)
        batches.append((time.perf_counter() - t0) / STEPS)
    return statistics.median(batches)


def map_error(pipe: Pipeline) -> dict[str, Any]:
    """The preview of each final latents against its decoded image: mean and max absolute error."""
    prompts = [p for _ in ERROR_SEEDS for p in ERROR_PROMPTS]
    seeds = [s for s in ERROR_SEEDS for _ in ERROR_PROMPTS]
    out = pipe(prompts, num_inference_steps=STEPS, guidance_scale=GUIDANCE, seed=seeds, output_type="np")
    h, w = out.images.shape[1:3]
    rows = []
    for prompt, seed, latents, image in zip(prompts, seeds, out.latents, out.images, strict=True):
        shown = np.asarray(pipe.preview_map.image(latents[None], w, h), np.float32) / 255
        err, grey = np.abs(shown - image), float(np.abs(0.5 - image).mean())
        rows.append({"prompt": prompt, "seed": seed, "mean": float(err.mean()), "max": float(err.max())})
        rows[-1]["grey_mean"] = grey  # a mid-grey image's error: what "no preview at all" scores
    means = [r["mean"] for r in rows]
    return {
        "images": rows,
        "mean": statistics.mean(means),
        "worst_image_mean": max(means),
        "max_pixel": max(r["max"] for r in rows),
        "grey_mean": statistics.mean(r["grey_mean"] for r in rows),
    }


def run(rounds: int = 31) -> dict[str, Any]:
    machine_before = machine.describe(REPO)  # the load average before the work
    with tempfile.TemporaryDirectory(prefix="sdlite-preview-cost-") as tmp:
        pipe, fitting = warm_map(demo_copy(Path(tmp)))
        plain, shown = generation(pipe, False), generation(pipe, True)
        plain(), shown()  # warm-up: the sessions' first runs allocate
        pairs = alternate(shown, plain, rounds)
        one = alone(pipe)
        error = map_error(pipe)
    without = [b["total"] for _, b in pairs]
    overheads = [a["total"] / b["total"] - 1 for a, b in pairs]
    overhead = statistics.median(overheads)
    # The U-Net's time swings most from round to round; outside the sessions, where previews run
    # (cold caches after each U-Net call included), the difference is steadier.
    outside = [(a["outside_sessions"] - b["outside_sessions"]) / b["total"] for a, b in pairs]
    per_preview = [(a["outside_sessions"] - b["outside_sessions"]) / max(a["previews"], 1) for a, b in pairs]
    return {
        "machine": machine_before,
        "model": f"demo (a copy of the embedded model, {pipe.default_size} px)",
        "prompt": PROMPT,
        "sampler": pipe.preset.sampler,
        "steps": STEPS,
        "guidance": GUIDANCE,
        "threads": THREADS,
        "rounds": rounds,
        "previews_per_call": sorted({a["previews"] for a, _ in pairs}),
        "goal": GOAL,
        "goal_met": overhead <= GOAL,
        "fitting": fitting,
        "with_previews_s": spread([a["total"] for a, _ in pairs]),
        "without_previews_s": spread(without),
        "overhead": overhead,
        "overheads": overheads,
        "overhead_quartiles": _quartiles(overheads),
        "outside_overhead": statistics.median(outside),
        "outside_overheads": outside,
        "preview_in_loop_s": statistics.median(per_preview),
        "preview_alone_s": one,
        "alone_share": one * STEPS / statistics.median(without),
        "error": error,
    }


def _quartiles(values: list[float]) -> list[float]:
    """The first and third quartiles: half the rounds lie between them."""
    if len(values) < 2:
        return [values[0], values[0]]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return [q[0], q[2]]


def _ms(x: float) -> str:
    return f"{x * 1000:.1f} ms"


def _us(x: float) -> str:
    return f"{x * 1e6:.0f} µs"


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    n = ", ".join(str(k) for k in doc["previews_per_call"])
    lines = [
        f"The {doc['model']} model on the CPU, {doc['threads']} thread: a {doc['steps']}-step generation "
        f"({doc['sampler']}, guidance {doc['guidance']:g}) with `preview=callback, preview_every=1` ({n} "
        f"previews a call) against the same without previews, alternating, {doc['rounds']} rounds.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, load average {m['loadavg_start'][0]:.2f} at the start "
        f"({m['date_utc']}).",
        "",
    ]
    return "\n".join(lines + _cost_lines(doc) + [_fitting_line(doc["fitting"]), ""] + _error_lines(doc))


def _cost_lines(doc: dict[str, Any]) -> list[str]:
    met = "met" if doc["goal_met"] else "MISSED"
    w, wo, ups = doc["with_previews_s"], doc["without_previews_s"], doc["overheads"]
    q1, q3 = doc["overhead_quartiles"]
    return [
        f"**Goal (previews at most {doc['goal']:.0%} of generation time): {met}**: {doc['overhead']:+.1%} "
        f"(the median of the rounds' ratios, with previews over without; half the rounds between "
        f"{q1:+.1%} and {q3:+.1%}, all from {min(ups):+.1%} to {max(ups):+.1%}).",
        "",
        *_unsettled(doc),
        "| generation | median | min | max |",
        "|---|---:|---:|---:|",
        f"| without previews | {_ms(wo['median'])} | {_ms(wo['min'])} | {_ms(wo['max'])} |",
        f"| with a preview every step | {_ms(w['median'])} | {_ms(w['min'])} | {_ms(w['max'])} |",
        "",
        f"Steadier figures of the same cost: the time outside the model sessions, where previews run, grew "
        f"by {doc['outside_overhead']:+.1%} of a generation (median over the rounds), "
        f"{_us(doc['preview_in_loop_s'])} a preview, against {_ms(wo['median'] / doc['steps'])} a step "
        f"without previews: a fixed cost per preview, which a model this small makes a large share. A "
        f"preview timed alone, warm (the linear map and the bilinear resize, `pipe.preview_map.image`), "
        f"takes {_us(doc['preview_alone_s'])}; {doc['steps']} of them are {doc['alone_share']:.1%} of a "
        "generation without previews.",
        "",
    ]


def _unsettled(doc: dict[str, Any]) -> list[str]:
    """A warning when half the rounds spread over more than the goal: the median is then noise's."""
    q1, q3 = doc["overhead_quartiles"]
    if q3 - q1 <= doc["goal"]:
        return []
    steady = "met" if doc["outside_overhead"] <= doc["goal"] else "missed"
    return [
        "The rounds' spread is wider than the goal, so this verdict is not settled by this run; the "
        f"steadier figure below says the goal is {steady} ({doc['outside_overhead']:+.1%}).",
        "",
    ]


def _fitting_line(f: dict[str, Any]) -> str:
    where = "cached as preview.json beside the model" if f["cached"] else "not cached: folder not writable"
    differs = "" if f["cache_matches"] else " (but it DIFFERS from the fitted one)"
    return (
        f"One-time cost: fitting the map on first use took {f['fit_s']:.2f} s ({where}); a second "
        f"pipeline loaded the cached map in {_ms(f['cached_load_s'])}{differs}."
    )


def _error_lines(doc: dict[str, Any]) -> list[str]:
    e = doc["error"]
    lines = [
        f"**Preview error** (mean absolute difference in [0, 1] between the preview of the final latents "
        f"and the VAE's image, {doc['steps']} steps): {e['mean']:.3f} on average over {len(e['images'])} "
        f"images, {e['worst_image_mean']:.3f} for the worst image, {e['max_pixel']:.3f} at the worst "
        f"pixel; a mid-grey image's: {e['grey_mean']:.3f}.",
        "",
        "| prompt | seed | mean error | max error | mid-grey's mean error |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in e["images"]:
        lines.append(
            f"| {r['prompt']} | {r['seed']} | {r['mean']:.3f} | {r['max']:.3f} | {r['grey_mean']:.3f} |"
        )
    return lines + [""]


def write(doc: dict[str, Any], out: Path = RESULTS) -> dict[str, Path]:
    """preview_cost.json and preview_cost.md, each written whole or not at all."""
    return write_study(out, "preview_cost", doc, markdown(doc))


def main(argv: list[str] | None = None) -> int:
    return rounds_main(argv, "preview_cost", __doc__.splitlines()[0], run, markdown, write, RESULTS)


if __name__ == "__main__":
    raise SystemExit(main())
