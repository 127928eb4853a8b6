"""Shared helpers of the exponential-integrator samplers: DPM-Solver(++) (``dpm_solver.py``),
DEIS (``deis.py``) and UniPC (``unipc.py``).

All of them integrate the probability-flow ODE (or the reverse SDE) exactly in the linear part
and interpolate the model output in lambda = -log(sigma) (k-diffusion's VE space, where
diffusers' ``sigma_t / sigma_s * x`` and ``alpha_t / alpha_s * x`` both become plain
ratios of VE sigmas).  Every step is therefore a fixed linear combination

    x_next = a * x + sum_k w_k * m_k (+ c * noise)

of the current sample and the last few model outputs ``m_k`` (the data prediction, or the
noise prediction for the "noise" variants).  The coefficients depend only on the sigma
schedule, so each sampler computes all of them, in float64, before the first model call and
the loop only does array arithmetic.  The formulas and order-switching rules follow diffusers'
schedulers term by term (that is the parity contract); the comments name diffusers' method each
one mirrors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from .base import BaseSchedule, NoiseSampler, Plan, SamplerSpec, Scratch
from .registry import register

ORDERS = (1, 2, 3)

# One step: (a, weights, noise_coef); x_next = a * x + sum(w * m for the newest outputs first).
Step = tuple[float, tuple[float, ...], float]
Vec3 = tuple[float, float, float]  # weights on the outputs at steps i, i-1, i-2


def choice(option: str, value: Any, allowed: Sequence[Any]) -> Any:
    if value not in allowed:
        raise ValueError(f"{option} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


def lambdas(sigmas: np.ndarray) -> list[float]:
    with np.errstate(divide="ignore"):  # lambda(sigma = 0) = +inf; such steps are special-cased
        return [float(v) for v in -np.log(np.asarray(sigmas, dtype=np.float64))]


def lincomb(terms: Iterable[tuple[float, np.ndarray]], tmp: Scratch) -> np.ndarray:
    """sum(c * a) in the arrays' dtype; zero coefficients are skipped (never 0 * inf) and unit
    ones cost no multiply (each full-array pass counts: a step is a handful of them).  ``tmp``:
    the calling sampler's reused temporary."""
    live = [(c, arr) for c, arr in terms if c != 0.0]
    # start from a scaled term: its product is the fresh output array, no separate copy
    c, arr = live[0]
    if c == 1.0:
        first = next((k for k, (c, _) in enumerate(live) if c != 1.0), 0)
        c, arr = live[first]
        del live[first]
    else:
        del live[0]
    out = arr * c if c != 1.0 else arr.copy()
    for c, arr in live:
        if c == 1.0:
            out += arr
        else:
            tmp.add_scaled(out, arr, c)
    return out


def lin(*terms: tuple[float, Vec3]) -> Vec3:
    """sum(c * v) over coefficient 3-vectors (plain floats: numpy's per-call overhead on
    3-vectors would cost more than a whole step's array work)."""
    x = y = z = 0.0
    for c, v in terms:
        x, y, z = x + c * v[0], y + c * v[1], z + c * v[2]
    return x, y, z


E0, E1, E2 = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)


def special_step(data_prediction: bool, sigma_s: float, sigma_t: float) -> Step | None:
    """Steps the formulas cannot take: onto sigma = 0, or to the same sigma (h = 0)."""
    if sigma_t == 0.0:  # the data prediction itself, x0 = x - sigma * eps
        return (0.0, (1.0,), 0.0) if data_prediction else (1.0, (-sigma_s,), 0.0)
    if sigma_t == sigma_s:
        # Karras/exponential schedules with final_sigmas_type "sigma_min" repeat the last sigma;
        # diffusers' step is then the identity (every term carries a factor expm1(0) = 0)
        return 1.0, (), 0.0
    return None


def first_step(step_index: np.ndarray | None) -> int:
    """Index in the full schedule of this run's first step (> 0 when img2img starts mid-way)."""
    return 0 if step_index is None or len(step_index) == 0 else int(step_index[0])


def noise_term(
    noise_coef: float, noise_sampler: NoiseSampler, sigmas: np.ndarray, i: int
) -> list[tuple[float, np.ndarray]]:
    """Step i's noise as a ``lincomb`` term; none (and no draw) for a deterministic step."""
    if noise_coef == 0.0:
        return []
    return [(noise_coef, noise_sampler(float(sigmas[i]), float(sigmas[i + 1])))]


def register_solver(
    name: str,
    description: str,
    family: str,
    sample: Any,
    check: Callable[[dict[str, Any]], None],
    stochastic: bool | Callable[[dict[str, Any]], bool] = False,
    **defaults: Any,
) -> None:
    """Register a one-call-per-step VP sampler whose options ``check`` validates."""

    def plan(base: BaseSchedule, options: dict[str, Any]) -> Plan:
        # set_timesteps runs this before any model call: bad options fail here, not at step().
        check(options)
        # The global step index travels with the schedule so that the rules diffusers keys on
        # ``step_index`` (orders near the end, disable_corrector) survive an img2img start
        # mid-way, where the generator only sees the remaining sigmas.
        return Plan(base.timesteps, base.sigmas, extra={"step_index": np.arange(len(base.timesteps))})

    register(SamplerSpec(name, description, "vp", sample, defaults, plan, stochastic, family=family))


def multistep_order(solver_order: int, i: int, g: int, n_full: int, last_first: bool, short: bool) -> int:
    """The order diffusers' DPMSolverMultistep/DEIS ``step`` picks at local step i, global step g.

    Lower orders while warming up (counted from this run's first step), on the last step when
    ``last_first`` and on the last two steps of short schedules (``short``: counted on the full
    schedule, as diffusers keys these on ``len(self.timesteps)``).
    """
    if solver_order == 1 or i < 1 or (g == n_full - 1 and (last_first or short)):
        return 1
    if solver_order == 2 or i < 2 or (g == n_full - 2 and short):
        return 2
    return 3
