"""How close each sampler gets to a converged image of the demo model, by number of steps.

For each sampler and step count, the RMS distance in latent space between its final latents
and a 200-step DPM++ 2M reference from the same initial noise and prompts (guidance 7.5).
Checks the UniPC paper's claim (UniPC at <= 10 steps is as close to the reference as DDIM at
50) and shows UniPC's two B(h) variants side by side.  Stochastic samplers converge to another
sample of the SDE, not to the ODE's reference, so their distance has a floor: they are
listed apart.

    python -m benchmarks.demo_sampler_study [--quick]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from sdlite import Pipeline
from sdlite.models import demo_path

from benchmarks.common import CHARTS_SKIPPED, atomic_write, pyplot, save_figure

RESULTS = Path(__file__).resolve().parent / "results"
STEPS = (4, 6, 8, 10, 15, 20, 30, 50)
QUICK_STEPS = (4, 10, 20)
PROMPTS = (
    "a red circle on a white background",
    "a blue square on a black background, top left",
    "a small yellow triangle on a gray background",
    "a large purple circle on a black background, bottom right",
)
GUIDANCE = 7.5
# Every sampler starts at t = 999: the model's SD-style config says "leading" spacing, whose
# first step depends on the step count (t = 751 at 4 steps), and then no two step counts solve
# the same ODE from the same start.  DPM++ 2S has no such option and starts at 999 anyway.
SPACING = {"timestep_spacing": "trailing"}
NO_SPACING = {"dpmpp_2s"}
REFERENCE = ("dpmpp_2m", {}, 200)
# label -> (sampler name, options).  Deterministic (ODE) samplers first.
DETERMINISTIC = {
    "ddim": ("ddim", {}),
    "pndm (PLMS)": ("pndm", {}),
    "euler": ("euler", {}),
    "heun": ("heun", {}),
    "dpm2": ("dpm2", {}),
    "lms": ("lms", {}),
    "deis": ("deis", {}),
    "dpmpp_2m": ("dpmpp_2m", {}),
    "dpmpp_2s": ("dpmpp_2s", {}),
    "unipc bh1": ("unipc", {"solver_type": "bh1"}),
    "unipc bh2": ("unipc", {"solver_type": "bh2"}),
    "unipc-3 bh1": ("unipc", {"solver_type": "bh1", "solver_order": 3}),
    "unipc-3 bh2": ("unipc", {"solver_type": "bh2", "solver_order": 3}),
}
STOCHASTIC = {
    "euler_a": ("euler_a", {}),
    "dpm2_a": ("dpm2_a", {}),
    "dpmpp_2m_sde": ("dpmpp_2m_sde", {}),
    "dpmpp_3m_sde": ("dpmpp_3m_sde", {}),
    "lcm": ("lcm", {}),
}


def _final_latents(
    pipe: Pipeline, sampler: str, options: dict, steps: int, noise: np.ndarray, prompts
) -> np.ndarray:
    options = options if sampler in NO_SPACING else {**SPACING, **options}
    out = pipe(
        list(prompts),
        sampler=sampler,
        sampler_options=options or None,
        num_inference_steps=steps,
        guidance_scale=GUIDANCE,
        latents=noise,
        seed=list(range(len(prompts))),  # stochastic samplers draw their step noise from these
        output_type="latent",
    )
    return np.asarray(out.images, dtype=np.float64)


def _rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)))


def run(quick: bool = False) -> dict:
    """Distances for every sampler; writes a chart, a table and the numbers to benchmarks/results/."""
    t0 = time.perf_counter()
    steps = QUICK_STEPS if quick else STEPS
    prompts = PROMPTS[:2] if quick else PROMPTS
    ref_steps = 100 if quick else REFERENCE[2]
    # One thread: on a shared CPU, ORT's default (one per core) spins against other processes.
    pipe = Pipeline.from_pretrained(demo_path(), "cpu", num_threads=1)
    shape = (
        len(prompts),
        pipe.latent_channels,
        pipe.default_size // pipe.vae_scale_factor,
        pipe.default_size // pipe.vae_scale_factor,
    )
    noise = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    ref = _final_latents(pipe, REFERENCE[0], REFERENCE[1], ref_steps, noise, prompts)
    # The reference's own error: a different high-order solver at the same step count.
    check = _final_latents(pipe, "unipc", {"solver_order": 3}, ref_steps, noise, prompts)
    rows = []
    for group, table in (("deterministic", DETERMINISTIC), ("stochastic", STOCHASTIC)):
        for label, (name, options) in table.items():
            row = {"sampler": label, "kind": group}
            for n in steps:
                try:
                    row[str(n)] = _rms(_final_latents(pipe, name, options, n, noise, prompts), ref)
                except ValueError as err:  # e.g. a sampler that refuses a step count
                    row[str(n)] = None
                    row.setdefault("notes", f"{n} steps: {err}")
            rows.append(row)
    by = {r["sampler"]: r for r in rows}
    claim = None
    if "ddim" in by and "50" in by["ddim"]:
        ddim50 = by["ddim"]["50"]
        claim = {}
        for label in ("unipc bh1", "unipc bh2", "unipc-3 bh1", "unipc-3 bh2"):
            ok = [
                n
                for n in steps
                if n <= 10 and by[label].get(str(n)) is not None and by[label][str(n)] <= ddim50
            ]
            claim[label] = min(ok) if ok else None
    result = {
        "reference": f"{REFERENCE[0]} at {ref_steps} steps, guidance {GUIDANCE}, {len(prompts)} prompts",
        "reference_error": _rms(check, ref),
        "latent_rms_of_reference": float(np.sqrt(np.mean(ref**2))),
        "steps": list(steps),
        "rows": rows,
        "unipc_claim": claim,
        "seconds": time.perf_counter() - t0,
    }
    result["markdown"] = _markdown(result)
    if not quick:
        _write(result)
    return result


def _fmt(v) -> str:
    return "—" if v is None else f"{v:.4f}"


def _markdown(r: dict) -> str:
    steps = r["steps"]
    lines = [
        f"RMS distance in latent space to {r['reference']} (same initial noise, every sampler from "
        f"t = 999 with trailing spacing); the reference's own "
        f"error (UniPC-3 at the same steps) is {r['reference_error']:.5f}, the latents' RMS "
        f"{r['latent_rms_of_reference']:.3f}.",
        "",
        "| sampler | kind | " + " | ".join(f"{n} steps" for n in steps) + " |",
        "|---|---|" + "---|" * len(steps),
    ]
    for row in r["rows"]:
        lines.append(
            f"| {row['sampler']} | {row['kind']} | " + " | ".join(_fmt(row.get(str(n))) for n in steps) + " |"
        )
    claim = r.get("unipc_claim")
    if claim is not None:
        ddim50 = next(x for x in r["rows"] if x["sampler"] == "ddim").get("50")
        lines += ["", f"UniPC paper's claim (<= 10 steps as close as DDIM at 50 steps, {_fmt(ddim50)}):"]
        for label, n in claim.items():
            verdict = f"holds from {n} steps" if n else "does not hold at <= 10 steps"
            lines.append(f"- {label}: {verdict}")
    return "\n".join(lines) + "\n"


def _write(r: dict) -> None:
    atomic_write(RESULTS / "demo_sampler_study.md", r["markdown"])
    atomic_write(
        RESULTS / "demo_sampler_study.json",
        json.dumps({k: v for k, v in r.items() if k != "markdown"}, indent=1) + "\n",
    )
    plt = pyplot()
    if plt is None:
        print(CHARTS_SKIPPED)
        return
    fig, ax = plt.subplots(figsize=(8, 5), dpi=80)
    for i, row in enumerate(r["rows"]):
        xs = [n for n in r["steps"] if row.get(str(n)) is not None]
        style = "-" if row["kind"] == "deterministic" else ":"
        marker = "o" if row["sampler"].startswith("unipc") else "."
        ax.plot(xs, [row[str(n)] for n in xs], style, marker=marker, label=row["sampler"], color=f"C{i % 10}")
    ax.axhline(r["reference_error"], color="0.5", lw=0.8, ls="--", label="reference's own error")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(r["steps"], [str(n) for n in r["steps"]])
    ax.set_xlabel("steps")
    ax.set_ylabel("RMS latent distance to the reference")
    ax.set_title(f"Samplers on the demo model: distance to {r['reference']}", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_figure(plt, fig, RESULTS / "demo_sampler_study.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 prompts, 3 step counts, nothing written")
    args = parser.parse_args(argv)
    print(run(args.quick)["markdown"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
