"""UniPC (UniPCMultistepScheduler): a multistep UniP predictor and, at the next model call, the
UniC corrector that reuses that call's output, so it costs no extra model evaluation.

Same construction as the DPM-Solver family (``integrators.py``): every predictor and corrector is
a linear combination of the sample and the stored outputs whose coefficients depend only on the
sigma schedule, computed in float64 before the first call.
"""

from __future__ import annotations

import functools
import math
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np

from .base import NoiseSampler, SamplerGen, Scratch, to_d
from .integrators import ORDERS, Step, choice, first_step, lambdas, lincomb, register_solver, special_step

UNIPC_SOLVER_TYPES = ("bh1", "bh2")


def _check(solver_order: int, solver_type: str, disable_corrector: Sequence[int]) -> None:
    choice("solver_order", solver_order, ORDERS)
    choice("solver_type", solver_type, UNIPC_SOLVER_TYPES)
    ok = isinstance(disable_corrector, (list, tuple)) and all(
        isinstance(k, (int, np.integer)) and not isinstance(k, bool) for k in disable_corrector
    )
    if not ok:
        raise ValueError(
            f"disable_corrector must be a list of step indices (ints); got {disable_corrector!r}"
        )


def _solve(r: list[list[float]], b: list[float]) -> list[float]:
    """R rho = b for UniPC's 2x2 (closed form: most steps, and cheap) or 3x3 systems."""
    if len(b) == 2:
        det = r[0][0] * r[1][1] - r[0][1] * r[1][0]
        return [(b[0] * r[1][1] - r[0][1] * b[1]) / det, (r[0][0] * b[1] - r[1][0] * b[0]) / det]
    return [float(v) for v in np.linalg.solve(np.array(r), np.array(b))]


def _unipc_step(
    lam: list[float],
    sigmas: np.ndarray,
    s: int,
    order: int,
    predict_x0: bool,
    bh1: bool,
    corrector: bool,
) -> Step:
    """UniP (or UniC with ``corrector``) from sigmas[s] to sigmas[s + 1] with outputs at s, s-1, ...

    Mirrors multistep_uni_p_bh_update / multistep_uni_c_bh_update.  For the corrector the
    weights are over (output at s + 1, at s, at s - 1, ...), for the predictor over (s, s - 1, ...).
    """
    s_s, s_t = float(sigmas[s]), float(sigmas[s + 1])
    # at sigma = 0 diffusers divides by B(h) = -inf (bh1) or by r_k = 0 (orders >= 2): NaN or inf
    special = special_step(predict_x0, s_s, s_t)
    if special:
        return special
    h = lam[s + 1] - lam[s]
    rks = [(lam[s - k] - lam[s]) / h for k in range(1, order)] + [1.0]
    hh = -h if predict_x0 else h
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1.0
    b_h = hh if bh1 else h_phi_1
    b, factorial = [], 1
    for k in range(1, order + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    r = [[rk ** (k - 1) for rk in rks] for k in range(1, order + 1)]
    if corrector:
        rhos = [0.5] if order == 1 else _solve(r, b)
    elif order == 1:
        rhos = []
    else:
        rhos = [0.5] if order == 2 else _solve([row[:-1] for row in r[:-1]], b[:-1])
    # x_t = a x + scale (h_phi_1 m0 + B(h) (sum_k rho_k (m_k - m0) / r_k [+ rho_c (m_t - m0)]))
    a, scale = (s_t / s_s, -1.0) if predict_x0 else (1.0, -s_t)
    weights = [h_phi_1] + [b_h * rho / rk for rho, rk in zip(rhos, rks[:-1], strict=False)]
    weights[0] -= sum(weights[1:])
    if corrector:
        weights = [b_h * rhos[-1], weights[0] - b_h * rhos[-1], *weights[1:]]
    return a, tuple(float(scale * w) for w in weights), 0.0


@functools.lru_cache(maxsize=64)
def _coefficients(
    sigmas: tuple[float, ...],
    solver_order: int,
    bh1: bool,
    predict_x0: bool,
    disable_corrector: tuple[int, ...],
    lower_order_final: bool,
    offset: int,
) -> tuple[list[Step], list[Step | None]]:
    """Every predictor and corrector of a run; cached, as a pipeline repeats the same schedule."""
    n = len(sigmas) - 1
    sig = np.asarray(sigmas)
    lam = lambdas(sig)
    # warm-up counts from this run's first step; disable_corrector holds global step indices
    orders = [min(solver_order, n - i if lower_order_final else solver_order, i + 1) for i in range(n)]
    predictors = [_unipc_step(lam, sig, i, orders[i], predict_x0, bh1, False) for i in range(n)]
    # UniC at step i corrects the previous predictor with the order that predictor used
    correctors: list[Step | None] = [None] + [
        None
        if offset + i - 1 in disable_corrector
        else _unipc_step(lam, sig, i - 1, orders[i - 1], predict_x0, bh1, True)
        for i in range(1, n)
    ]
    return predictors, correctors


def sample_unipc(
    sigmas: np.ndarray,
    noise_sampler: NoiseSampler,
    *,
    solver_order: int = 2,
    solver_type: str = "bh2",
    predict_x0: bool = True,
    disable_corrector: Sequence[int] = (),
    lower_order_final: bool = True,
    step_index: np.ndarray | None = None,
    clip: Callable[[np.ndarray], np.ndarray] | None = None,
) -> SamplerGen:
    """UniPCMultistepScheduler: UniP predictor, then at the next call the UniC corrector.

    ``clip`` (thresholding) applies to the data prediction only: diffusers' UniPC ignores
    ``thresholding`` when it integrates the noise prediction (predict_x0=False).
    """
    _check(solver_order, solver_type, disable_corrector)
    predictors, correctors = _coefficients(
        tuple(float(v) for v in sigmas),
        solver_order,
        solver_type == "bh1",
        predict_x0,
        tuple(int(k) for k in disable_corrector),
        lower_order_final,
        first_step(step_index),
    )
    n = len(predictors)

    outputs: deque[np.ndarray] = deque(maxlen=4)
    tmp = Scratch()
    x, denoised = yield
    last = x
    for i in range(n):
        if not predict_x0:
            outputs.appendleft(to_d(x, float(sigmas[i]), denoised))
        else:
            outputs.appendleft(clip(denoised) if clip is not None else denoised)
        if correctors[i] is not None:
            a, weights, _ = correctors[i]
            x = lincomb([(a, last), *zip(weights, outputs, strict=False)], tmp)
        last = x
        a, weights, _ = predictors[i]
        x, denoised = yield lincomb([(a, x), *zip(weights, outputs, strict=False)], tmp)


register_solver(
    "unipc",
    "UniPC: multistep predictor-corrector, 2nd order by default (UniPCMultistepScheduler)",
    "unipc",
    sample_unipc,
    lambda o: _check(o["solver_order"], o["solver_type"], o["disable_corrector"]),
)
