"""DEIS (DEISMultistepScheduler): multistep exponential integrator in log rho (rho = VE sigma)
on the noise prediction, built like the DPM-Solvers (``integrators.py``)."""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np

from .base import NoiseSampler, SamplerGen, Scratch, to_d
from .integrators import (
    ORDERS,
    Step,
    choice,
    first_step,
    lambdas,
    lincomb,
    multistep_order,
    register_solver,
    special_step,
)


def _deis_step(log_rho: list[float], sigmas: np.ndarray, i: int, order: int) -> Step:
    """DEISMultistepScheduler's log-rho update (noise prediction, rho = VE sigma)."""
    s_s, s_t = float(sigmas[i]), float(sigmas[i + 1])
    special = special_step(False, s_s, s_t)
    if special:
        return special
    if order == 1:
        return 1.0, (-s_t * math.expm1(log_rho[i] - log_rho[i + 1]),), 0.0
    lt, l0, l1 = log_rho[i + 1], log_rho[i], log_rho[i - 1]
    if order == 2:

        def ind2(t: float, b: float, c: float) -> float:  # integral of the Lagrange basis in log rho
            return math.exp(t) * (t - c - 1.0) / (b - c)

        return 1.0, (ind2(lt, l0, l1) - ind2(l0, l0, l1), ind2(lt, l1, l0) - ind2(l0, l1, l0)), 0.0
    l2 = log_rho[i - 2]

    def ind3(t: float, b: float, c: float, d: float) -> float:
        return math.exp(t) * (c * (d - t + 1.0) - d * t + d + t * t - 2.0 * t + 2.0) / ((b - c) * (b - d))

    weights = (
        ind3(lt, l0, l1, l2) - ind3(l0, l0, l1, l2),
        ind3(lt, l1, l2, l0) - ind3(l0, l1, l2, l0),
        ind3(lt, l2, l0, l1) - ind3(l0, l2, l0, l1),
    )
    return 1.0, weights, 0.0


def sample_deis(
    sigmas: np.ndarray,
    noise_sampler: NoiseSampler,
    *,
    solver_order: int = 2,
    lower_order_final: bool = True,
    step_index: np.ndarray | None = None,
) -> SamplerGen:
    """DEISMultistepScheduler (algorithm_type "deis", solver_type "logrho": its only ones)."""
    choice("solver_order", solver_order, ORDERS)
    n, offset = len(sigmas) - 1, first_step(step_index)
    n_full, log_rho = offset + n, [-v for v in lambdas(sigmas)]
    short = lower_order_final and n_full < 15
    steps = [
        _deis_step(log_rho, sigmas, i, multistep_order(solver_order, i, offset + i, n_full, False, short))
        for i in range(n)
    ]
    sig = np.asarray(sigmas, dtype=np.float64).tolist()

    outputs: deque[np.ndarray] = deque(maxlen=3)
    tmp = Scratch()
    x, denoised = yield
    for i, (a, weights, _) in enumerate(steps):
        outputs.appendleft(to_d(x, sig[i], denoised))
        x, denoised = yield lincomb([(a, x), *zip(weights, outputs, strict=False)], tmp)



def _check_deis(options: dict[str, Any]) -> None:
    choice("solver_order", options["solver_order"], ORDERS)



register_solver(
    "deis",
    "DEIS: multistep exponential integrator in log-rho (DEISMultistepScheduler)",
    "deis",
    sample_deis,
    _check_deis,
)
