"""DPM-Solver(++) multistep and singlestep (DPMSolverMultistepScheduler, DPMSolverSinglestepScheduler).

Each step is a fixed linear combination of the sample and the last few outputs (the data
prediction, or the noise prediction for the "dpmsolver" variants), with coefficients computed in
float64 from the sigma schedule before the first call (see ``integrators.py``).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np

from .base import NoiseSampler, SamplerGen, Scratch, to_d
from .integrators import (
    E0,
    E1,
    E2,
    ORDERS,
    Step,
    choice,
    first_step,
    lambdas,
    lin,
    lincomb,
    multistep_order,
    noise_term,
    register_solver,
    special_step,
)

DPM_ALGORITHMS = ("dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver")
DPM_SOLVER_TYPES = ("midpoint", "heun")


def _dpm_phis(algorithm_type: str, sigma_s: float, sigma_t: float, h: float) -> tuple[float, ...]:
    """(a, scale, c0, c1_midpoint, c1_heun, c2, noise) of one DPM-Solver step over log-SNR ``h``.

    x_t = a * x + scale * (c0 * D0 + c1 * D1 + c2 * D2) + noise * z, with D0, D1, D2 the
    output, its first and second divided differences (diffusers' ``*_order_update`` methods).
    """
    if algorithm_type == "dpmsolver++":
        em = math.expm1(-h)
        return sigma_t / sigma_s, 1.0, -em, -0.5 * em, em / h + 1.0, 0.5 - (em + h) / h**2, 0.0
    if algorithm_type == "sde-dpmsolver++":
        e = -math.expm1(-2.0 * h)
        # diffusers' third-order SDE term is (e - 2h) / (2h)^2 - 0.5, an O(1) weight on D2 where
        # the ODE (and k-diffusion's sample_dpmpp_3m_sde) has 0.5 - (2h - e) / (2h)^2 = O(h):
        # kept, since diffusers is the reference, but it costs 3M SDE its third order.
        c2 = (e - 2.0 * h) / (2.0 * h) ** 2 - 0.5
        a = sigma_t / sigma_s * math.exp(-h)
        return a, 1.0, e, 0.5 * e, 1.0 - e / (2.0 * h), c2, sigma_t * math.sqrt(e)
    ep = math.expm1(h)
    if algorithm_type == "dpmsolver":
        return 1.0, -sigma_t, ep, 0.5 * ep, ep / h - 1.0, (ep - h) / h**2 - 0.5, 0.0
    # sde-dpmsolver: diffusers has no third-order formula (rejected in _check_dpm_options)
    noise = sigma_t * math.sqrt(math.expm1(2.0 * h))
    return 1.0, -sigma_t, 2.0 * ep, ep, 2.0 * (ep / h - 1.0), math.nan, noise


def _dpm_multistep_step(
    lam: list[float], sigmas: np.ndarray, i: int, order: int, algorithm_type: str, solver_type: str
) -> Step:
    """DPMSolverMultistepScheduler's first/second/third order update from sigmas[i] to sigmas[i+1]."""
    s_s, s_t = float(sigmas[i]), float(sigmas[i + 1])
    special = special_step(algorithm_type.endswith("++"), s_s, s_t)
    if special:
        return special
    h = lam[i + 1] - lam[i]
    a, scale, c0, c1m, c1h, c2, noise = _dpm_phis(algorithm_type, s_s, s_t, h)
    if order == 1:
        return a, lin((scale * c0, E0)), noise
    r0 = (lam[i] - lam[i - 1]) / h
    d1_0 = lin((1.0 / r0, E0), (-1.0 / r0, E1))
    if order == 2:
        c1 = c1m if solver_type == "midpoint" else c1h
        return a, lin((scale * c0, E0), (scale * c1, d1_0)), noise
    r1 = (lam[i - 1] - lam[i - 2]) / h
    d1_1 = lin((1.0 / r1, E1), (-1.0 / r1, E2))
    q = r0 / (r0 + r1)
    d1 = lin((1.0 + q, d1_0), (-q, d1_1))  # d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    d2 = lin((1.0 / (r0 + r1), d1_0), (-1.0 / (r0 + r1), d1_1))
    return a, lin((scale * c0, E0), (scale * c1h, d1), (scale * c2, d2)), noise


def _check_dpm_options(solver_order: int, algorithm_type: str, solver_type: str, singlestep: bool) -> None:
    # The facade validates configs up front (schedule.validate_config); this guards direct calls.
    choice("solver_order", solver_order, ORDERS)
    allowed = tuple(a for a in DPM_ALGORITHMS if not (singlestep and a == "sde-dpmsolver"))
    choice("algorithm_type", algorithm_type, allowed)
    choice("solver_type", solver_type, DPM_SOLVER_TYPES)
    if algorithm_type == "sde-dpmsolver" and solver_order == 3:  # diffusers has no such formula
        raise ValueError("solver_order must be one of 1, 2 with algorithm_type 'sde-dpmsolver'; got 3")



def sample_dpm_solver_multistep(
    sigmas: np.ndarray,
    noise_sampler: NoiseSampler,
    *,
    solver_order: int = 2,
    algorithm_type: str = "dpmsolver++",
    solver_type: str = "midpoint",
    lower_order_final: bool = True,
    euler_at_final: bool = False,
    step_index: np.ndarray | None = None,
) -> SamplerGen:
    """DPMSolverMultistepScheduler: DPM-Solver++ 1/2/3M (ODE or SDE), or the noise-prediction DPM-Solver."""
    _check_dpm_options(solver_order, algorithm_type, solver_type, singlestep=False)
    n, offset = len(sigmas) - 1, first_step(step_index)
    n_full, lam = offset + n, lambdas(sigmas)
    last_first = euler_at_final or sigmas[-1] == 0
    short = lower_order_final and n_full < 15
    steps = [
        _dpm_multistep_step(
            lam,
            sigmas,
            i,
            multistep_order(solver_order, i, offset + i, n_full, last_first, short),
            algorithm_type,
            solver_type,
        )
        for i in range(n)
    ]
    data, sig = algorithm_type.endswith("++"), np.asarray(sigmas, dtype=np.float64).tolist()

    outputs: deque[np.ndarray] = deque(maxlen=3)
    tmp = Scratch()
    x, denoised = yield
    for i, (a, weights, noise_coef) in enumerate(steps):
        outputs.appendleft(denoised if data else to_d(x, sig[i], denoised))
        noise = noise_term(noise_coef, noise_sampler, sigmas, i)
        x, denoised = yield lincomb([(a, x), *zip(weights, outputs, strict=False), *noise], tmp)


def singlestep_orders(steps: int, solver_order: int, lower_order_final: bool, final_zero: bool) -> list[int]:
    """DPMSolverSinglestepScheduler.get_order_list, after set_timesteps' lower_order_final fix-ups."""
    if steps % solver_order != 0 or final_zero:
        lower_order_final = True
    k = solver_order
    if k == 1:
        orders = [1] * steps
    elif not lower_order_final:
        orders = list(range(1, k + 1)) * (steps // k)
    elif k == 2:
        orders = [1, 2] * (steps // 2 - 1) + [1, 1] if steps % 2 == 0 else [1, 2] * (steps // 2) + [1]
    elif steps % 3 == 0:
        orders = [1, 2, 3] * (steps // 3 - 1) + [1, 2] + [1]
    elif steps % 3 == 1:
        orders = [1, 2, 3] * (steps // 3) + [1]
    else:
        orders = [1, 2, 3] * (steps // 3) + [1, 2]
    if final_zero:
        orders[-1] = 1
    return orders


def _dpm_singlestep_step(
    lam: list[float], sigmas: np.ndarray, i: int, order: int, algorithm_type: str, solver_type: str
) -> Step:
    """DPMSolverSinglestepScheduler's update from sigmas[i - order + 1] (the block's start) to sigmas[i+1]."""
    b = i - order + 1
    s_s, s_t = float(sigmas[b]), float(sigmas[i + 1])
    special = special_step(algorithm_type.endswith("++"), s_s, s_t)
    if special:
        return special
    h = lam[i + 1] - lam[b]
    a, scale, c0, c1m, c1h, c2, noise = _dpm_phis(algorithm_type, s_s, s_t, h)
    if order == 1:
        return a, lin((scale * c0, E0)), noise
    r0 = (lam[i] - lam[b]) / h
    if order == 2:  # D0 is the block's first output (at i - 1), D1 = (m_i - m_{i-1}) / r0
        c1 = c1m if solver_type == "midpoint" else c1h
        return a, lin((scale * c0, E1), (scale * c1 / r0, E0), (-scale * c1 / r0, E1)), noise
    r1 = (lam[i - 1] - lam[b]) / h
    d1_0 = lin((1.0 / r1, E1), (-1.0 / r1, E2))
    d1_1 = lin((1.0 / r0, E0), (-1.0 / r0, E2))
    if solver_type == "midpoint":
        return a, lin((scale * c0, E2), (scale * c1h, d1_1)), noise
    d1 = lin((r0 / (r0 - r1), d1_0), (-r1 / (r0 - r1), d1_1))
    d2 = lin((2.0 / (r0 - r1), d1_1), (-2.0 / (r0 - r1), d1_0))
    return a, lin((scale * c0, E2), (scale * c1h, d1), (scale * c2, d2)), noise


def sample_dpm_solver_singlestep(
    sigmas: np.ndarray,
    noise_sampler: NoiseSampler,
    *,
    solver_order: int = 2,
    algorithm_type: str = "dpmsolver++",
    solver_type: str = "midpoint",
    lower_order_final: bool = False,
    step_index: np.ndarray | None = None,
) -> SamplerGen:
    """DPMSolverSinglestepScheduler: DPM-Solver++ 2S/3S with the schedule's points as intermediate stages."""
    _check_dpm_options(solver_order, algorithm_type, solver_type, singlestep=True)
    n, offset = len(sigmas) - 1, first_step(step_index)
    lam = lambdas(sigmas)
    orders = singlestep_orders(offset + n, solver_order, lower_order_final, sigmas[-1] == 0)[offset:]
    # diffusers lowers an order that would reach back before this run's first output (img2img)
    orders = [min(o, i + 1) for i, o in enumerate(orders)]
    data, sig = algorithm_type.endswith("++"), np.asarray(sigmas, dtype=np.float64).tolist()
    steps = [
        _dpm_singlestep_step(lam, sigmas, i, o, algorithm_type, solver_type) for i, o in enumerate(orders)
    ]

    outputs: deque[np.ndarray] = deque(maxlen=3)
    tmp = Scratch()
    x, denoised = yield
    base = x
    for i, (order, (a, weights, noise_coef)) in enumerate(zip(orders, steps, strict=False)):
        outputs.appendleft(denoised if data else to_d(x, sig[i], denoised))
        if order == 1:  # a block starts here; its higher-order steps restart from this sample
            base = x
        terms = [
            (a, base),
            *zip(weights, outputs, strict=False),
            *noise_term(noise_coef, noise_sampler, sigmas, i),
        ]
        x, denoised = yield lincomb(terms, tmp)



def _sde(options: dict[str, Any]) -> bool:
    """The SDE variants draw fresh noise every step (a config may choose one for the class name)."""
    return str(options["algorithm_type"]).startswith("sde")


def _check_multistep(options: dict[str, Any]) -> None:
    _check_dpm_options(options["solver_order"], options["algorithm_type"], options["solver_type"], False)


def _check_singlestep(options: dict[str, Any]) -> None:
    _check_dpm_options(options["solver_order"], options["algorithm_type"], options["solver_type"], True)



register_solver(
    "dpmpp_2m",
    "DPM++ 2M: second-order multistep DPM-Solver++ (DPMSolverMultistepScheduler)",
    "dpm_multistep",
    sample_dpm_solver_multistep,
    _check_multistep,
    stochastic=_sde,
)
register_solver(
    "dpmpp_2m_sde",
    "DPM++ 2M SDE: second-order multistep SDE DPM-Solver++ (stochastic)",
    "dpm_multistep",
    sample_dpm_solver_multistep,
    _check_multistep,
    stochastic=_sde,
    algorithm_type="sde-dpmsolver++",
)
register_solver(
    "dpmpp_3m_sde",
    "DPM++ 3M SDE: third-order multistep SDE DPM-Solver++ (stochastic)",
    "dpm_multistep",
    sample_dpm_solver_multistep,
    _check_multistep,
    stochastic=_sde,
    algorithm_type="sde-dpmsolver++",
    solver_order=3,
)
register_solver(
    "dpmpp_2s",
    "DPM++ 2S: second-order singlestep DPM-Solver++ (DPMSolverSinglestepScheduler)",
    "dpm_singlestep",
    sample_dpm_solver_singlestep,
    _check_singlestep,
    stochastic=_sde,
)
