"""Error vs number of steps for every sampler, on data from a Gaussian where the ideal U-Net and the
exact answer are closed-form (tests/samplers/gaussian.py).  Writes
benchmarks/results/sampler_accuracy.{png,json,md}.

    python -m benchmarks.samplers_accuracy [--quick]

Deterministic samplers: RMS distance, in data units, between the sampler's state nearest t = 200
and the exact probability-flow ODE solution from the same start (strong global error; the final
step to sigma = 0 is excluded because its log-SNR span does not shrink with N).  The fitted order
is the log-log slope over N = 20, 40, 80.

Stochastic samplers (ancestral, SDE, LCM, DDIM with eta = 1) follow no single trajectory, so they
are scored on the law of their state nearest t = 200 (weak error): the RMS over dimensions of the
error of its Monte-Carlo mean and standard deviation against the exact ones, which are closed-form
for the reverse SDE of a Gaussian: mean mu + (m0 - mu) u / u0, variance u + (v0 - u0) (u / u0)^2
with u = s^2 + k^2.  The Monte-Carlo floor is drawn on the plot.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import CHARTS_SKIPPED, atomic_write, pyplot, save_figure
from tests.samplers.gaussian import (
    STEPS,
    Gaussian,
    fitted_order,
    global_error,
    run_gaussian,
    train_sigmas,
)

RESULTS = Path(__file__).resolve().parent / "results"

# (label, sampler, options)
DETERMINISTIC = [
    ("ddim", "ddim", {}),
    ("euler", "euler", {}),
    ("heun", "heun", {}),
    ("dpm2", "dpm2", {}),
    ("lms", "lms", {}),
    ("pndm (PLMS)", "pndm", {}),
    ("deis", "deis", {}),
    ("dpmpp_2s", "dpmpp_2s", {}),
    ("dpmpp_2m", "dpmpp_2m", {}),
    ("dpmpp_3m (order 3)", "dpmpp_2m", {"solver_order": 3}),
    ("unipc-2 bh1", "unipc", {"solver_type": "bh1"}),
    ("unipc-2 bh2", "unipc", {"solver_type": "bh2"}),
    ("unipc-3 bh2", "unipc", {"solver_order": 3}),
]
STOCHASTIC = [
    ("euler_a", "euler_a", {}),
    ("dpm2_a", "dpm2_a", {}),
    ("dpmpp_2m_sde", "dpmpp_2m_sde", {}),
    ("dpmpp_3m_sde", "dpmpp_3m_sde", {}),
    ("ddim eta=1", "ddim", {"eta": 1.0}),
    ("lcm", "lcm", {}),
]


def _exact_law(gauss: Gaussian, k0: float, v0: float, k: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std at k of the reverse SDE started from N(0, v0) at k0 (see the module doc)."""
    u0, u = gauss.s**2 + k0 * k0, gauss.s**2 + k * k
    mean = gauss.mu + (0.0 - gauss.mu) * (u / u0)
    var = u + (v0 - u0) * (u / u0) ** 2
    return mean, np.sqrt(var)


def weak_error(name: str, steps: int, gauss: Gaussian, batch: int, options: dict[str, Any]) -> float:
    from sdlite.samplers import make_scheduler

    from tests.samplers.gaussian import STUDY_CONFIG, sigma_at

    landing = run_gaussian(name, steps, gauss, batch=batch, seed=steps, overrides=options)
    sched = make_scheduler(name, STUDY_CONFIG, **options)
    sched.set_timesteps(steps)
    k0 = sigma_at(float(np.asarray(sched.timesteps)[0]), train_sigmas())
    # Initial y = x * sqrt(1 + k0^2) for VP samplers (x ~ N(0, 1)); x itself for VE ones, whose
    # initial std is init_noise_sigma.  Both are N(0, v0):
    v0 = (1 + k0 * k0) if sched.init_noise_sigma == 1.0 else sched.init_noise_sigma**2
    mean, std = _exact_law(gauss, k0, v0, landing.k)
    err = (landing.y.mean(axis=0) - mean) ** 2 + (landing.y.std(axis=0) - std) ** 2
    return float(np.sqrt(err.mean()))


def run(quick: bool = False) -> dict[str, Any]:
    """Errors per sampler and N, fitted orders; returns the result dict (no files written)."""
    gauss = Gaussian.make(dims=16, seed=0)
    det_steps = list(STEPS) if quick else [10, 20, 40, 80, 160]
    sto_steps = [10, 20, 40] if quick else [10, 20, 40, 80]
    batch = 4000 if quick else 40000
    out: dict[str, Any] = {"deterministic": {}, "stochastic": {}, "gaussian_dims": len(gauss.mu)}
    for label, name, opts in DETERMINISTIC:
        errors = [global_error(run_gaussian(name, n, gauss, overrides=opts)) for n in det_steps]
        fit = [errors[det_steps.index(n)] for n in STEPS]
        out["deterministic"][label] = {
            "sampler": name,
            "options": opts,
            "steps": det_steps,
            "errors": errors,
            "order_20_40_80": round(fitted_order(STEPS, fit), 3),
        }
        print(f"{label:20s} order {fitted_order(STEPS, fit):5.2f}  errors {errors}", flush=True)
    for label, name, opts in STOCHASTIC:
        steps = [n for n in sto_steps if name != "lcm" or n <= 50]
        errors = [weak_error(name, n, gauss, batch, opts) for n in steps]
        out["stochastic"][label] = {"sampler": name, "options": opts, "steps": steps, "errors": errors}
        print(f"{label:20s} weak errors {errors}", flush=True)
    # Monte-Carlo floor: the RMS error of a sample mean and std of `batch` exact draws.
    std = float(np.sqrt(np.mean(gauss.s**2 + 0.6**2)))
    out["monte_carlo_floor"] = std * np.sqrt(1.0 / batch + 0.5 / batch)
    out["batch"] = batch
    out["quick"] = quick
    return out


def plot(result: dict[str, Any], path: Path) -> Path | None:
    """Error against steps, one line per sampler; None (nothing written) without matplotlib."""
    plt = pyplot()
    if plt is None:
        return None

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.5))
    colors = plt.cm.tab20(np.linspace(0, 1, 20))
    markers = "osD^v<>ph*XP"
    for i, (label, row) in enumerate(result["deterministic"].items()):
        ax1.loglog(
            row["steps"],
            row["errors"],
            marker=markers[i % len(markers)],
            color=colors[(2 * i) % 20 if i < 10 else (2 * i + 1) % 20],
            label=f"{label} (p={row['order_20_40_80']:.2f})",
        )
    n = np.array([10, 160])
    for p, c in ((1, 1e-1), (2, 4e-2), (3, 2e-2)):
        ax1.loglog(n, c * (n / 10.0) ** -p, "k:", lw=0.8)
        ax1.annotate(f"N^-{p}", (n[1], c * 16.0**-p), fontsize=8)
    ax1.set_title("ODE samplers: global error at t~200 vs exact flow (p: order over N=20..80)")
    ax1.set_xlabel("steps N")
    ax1.set_ylabel("RMS error (data units)")
    ax1.legend(fontsize=7)
    for i, (label, row) in enumerate(result["stochastic"].items()):
        # ddim eta=1 is the same update as euler_a (DDPM ancestral): dashed so both show.
        style = "--" if "eta" in label else "-"
        ax2.loglog(row["steps"], row["errors"], style, marker=markers[i], label=label)
    ax2.axhline(result["monte_carlo_floor"], color="grey", ls="--", lw=0.8, label="Monte-Carlo floor")
    ax2.set_title("Stochastic samplers: weak error of the law at t~200")
    ax2.set_xlabel("steps N")
    ax2.set_ylabel("RMS error of mean and std")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(plt, fig, path, dpi=90)


def markdown(result: dict[str, Any]) -> str:
    det = result["deterministic"]
    steps = next(iter(det.values()))["steps"]
    lines = [
        "Global error at the state nearest t = 200 vs the exact probability-flow solution "
        f"(Gaussian data, {result['gaussian_dims']} dims); order fitted over N = 20, 40, 80.",
        "",
        "| sampler | " + " | ".join(f"N={n}" for n in steps) + " | order |",
        "|---|" + "---:|" * (len(steps) + 1),
    ]
    for label, row in det.items():
        errs = " | ".join(f"{e:.2e}" for e in row["errors"])
        lines.append(f"| {label} | {errs} | {row['order_20_40_80']:.2f} |")
    lines += [
        "",
        f"Stochastic samplers: weak error (mean and std of {result['batch']} samples; Monte-Carlo "
        f"floor {result['monte_carlo_floor']:.1e}).",
        "",
    ]
    for label, row in result["stochastic"].items():
        pts = ", ".join(f"N={n}: {e:.2e}" for n, e in zip(row["steps"], row["errors"], strict=True))
        lines.append(f"- {label}: {pts}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer N and samples (smoke test)")
    args = parser.parse_args(argv)
    result = run(quick=args.quick)
    write(result)
    print(markdown(result))


def write(result: dict) -> None:
    """benchmarks/results/sampler_accuracy.{png,json,md} (also called by the suite)."""
    if plot(result, RESULTS / "sampler_accuracy.png") is None:
        print(CHARTS_SKIPPED)
    atomic_write(RESULTS / "sampler_accuracy.json", json.dumps(result, indent=2) + "\n")
    atomic_write(RESULTS / "sampler_accuracy.md", markdown(result))


if __name__ == "__main__":
    main()
