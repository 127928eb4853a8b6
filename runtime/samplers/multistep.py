"""Exponential-integrator samplers: DPM-Solver(++) multistep and singlestep, and DEIS (UniPC,
built from the same helpers, is in ``unipc.py``).

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

import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from .base import BaseSchedule, NoiseSampler, Plan, SamplerGen, SamplerSpec, Scratch
from .registry import register

ORDERS = (1, 2, 3)
DPM_ALGORITHMS = ("dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver")
DPM_SOLVER_TYPES = ("midpoint", "heun")

# One step: (a, weights, noise_coef); x_next = a * x + sum(w * m for the newest outputs first).
Step = tuple[float, tuple[float, ...], float]
Vec3 = tuple[float, float, float]  # weights on the outputs at steps i, i-1, i-2


def _choice(option: str, value: Any, allowed: Sequence[Any]) -> Any:
    if value not in allowed:
        raise ValueError(f"{option} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


def _lambdas(sigmas: np.ndarray) -> list[float]:
    with np.errstate(divide="ignore"):  # lambda(sigma = 0) = +inf; such steps are special-cased
        return [float(v) for v in -np.log(np.asarray(sigmas, dtype=np.float64))]


def _lincomb(terms: Iterable[tuple[float, np.ndarray]], tmp: Scratch) -> np.ndarray:
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


def _lin(*terms: tuple[float, Vec3]) -> Vec3:
    """sum(c * v) over coefficient 3-vectors (plain floats: numpy's per-call overhead on
    3-vectors would cost more than a whole step's array work)."""
    x = y = z = 0.0
    for c, v in terms:
        x, y, z = x + c * v[0], y + c * v[1], z + c * v[2]
    return x, y, z


E0, E1, E2 = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)


def _special_step(data_prediction: bool, sigma_s: float, sigma_t: float) -> Step | None:
    """Steps the formulas cannot take: onto sigma = 0, or to the same sigma (h = 0)."""
    if sigma_t == 0.0:  # the data prediction itself, x0 = x - sigma * eps
        return (0.0, (1.0,), 0.0) if data_prediction else (1.0, (-sigma_s,), 0.0)
    if sigma_t == sigma_s:
        # Karras/exponential schedules with final_sigmas_type "sigma_min" repeat the last sigma;
        # diffusers' step is then the identity (every term carries a factor expm1(0) = 0)
        return 1.0, (), 0.0
    return None


def _offset(step_index: np.ndarray | None) -> int:
    """Index in the full schedule of this run's first step (> 0 when img2img starts mid-way)."""
    return 0 if step_index is None or len(step_index) == 0 else int(step_index[0])


def _eps(x: np.ndarray, denoised: np.ndarray, sigma: float) -> np.ndarray:
    return (x - denoised) / x.dtype.type(sigma)


def vp_factors(sigmas: np.ndarray) -> list[float]:
    """c = sqrt(1 + sigma^2) of each entry: the VE view of a VP sample is c * x."""
    return np.sqrt(1.0 + np.asarray(sigmas, dtype=np.float64) ** 2).tolist()


def vp_step(step: Step, cs: list[float], i: int, base: int, data: bool) -> Step:
    """``step`` (on VE views: from the sample at call ``base`` with the outputs of calls i, i-1,
    ...) for a ``vp_scaled`` generator, whose samples are VP (x_ve = c x) and whose data outputs
    are sqrt(abar) x0 = x0 / c, the result being read back at sigma_{i+1}.  Noise-prediction
    outputs (``data`` False) are the same in both views."""
    a, weights, noise = step
    inv = 1.0 / cs[i + 1]
    scaled = tuple(w * (cs[i - j] if data else 1.0) * inv for j, w in enumerate(weights))
    return a * cs[base] * inv, scaled, noise * inv


def _eps_vp(x: np.ndarray, scaled: np.ndarray, sigma: float, c: float) -> np.ndarray:
    """The noise prediction (x_ve - x0) / sigma from a VP sample and sqrt(abar) x0."""
    out = x - scaled
    out *= c / sigma
    return out


def _noise(
    noise_coef: float, noise_sampler: NoiseSampler, sigmas: np.ndarray, i: int
) -> list[tuple[float, np.ndarray]]:
    if noise_coef == 0.0:
        return []
    return [(noise_coef, noise_sampler(float(sigmas[i]), float(sigmas[i + 1])))]


def _spec(
    name: str,
    description: str,
    family: str,
    sample: Any,
    check: Callable[[dict[str, Any]], None],
    stochastic: bool = False,
    clips_itself: bool = False,
    vp_scaled: bool = False,
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

    spec = SamplerSpec(
        name,
        description,
        "vp",
        sample,
        defaults,
        plan,
        stochastic,
        family=family,
        clips_itself=clips_itself,
        vp_scaled=vp_scaled,
    )
    register(spec)


# --------------------------------------------------------------------------- DPM-Solver family


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
    special = _special_step(algorithm_type.endswith("++"), s_s, s_t)
    if special:
        return special
    h = lam[i + 1] - lam[i]
    a, scale, c0, c1m, c1h, c2, noise = _dpm_phis(algorithm_type, s_s, s_t, h)
    if order == 1:
        return a, _lin((scale * c0, E0)), noise
    r0 = (lam[i] - lam[i - 1]) / h
    d1_0 = _lin((1.0 / r0, E0), (-1.0 / r0, E1))
    if order == 2:
        c1 = c1m if solver_type == "midpoint" else c1h
        return a, _lin((scale * c0, E0), (scale * c1, d1_0)), noise
    r1 = (lam[i - 1] - lam[i - 2]) / h
    d1_1 = _lin((1.0 / r1, E1), (-1.0 / r1, E2))
    q = r0 / (r0 + r1)
    d1 = _lin((1.0 + q, d1_0), (-q, d1_1))  # d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    d2 = _lin((1.0 / (r0 + r1), d1_0), (-1.0 / (r0 + r1), d1_1))
    return a, _lin((scale * c0, E0), (scale * c1h, d1), (scale * c2, d2)), noise


def _check_dpm_options(solver_order: int, algorithm_type: str, solver_type: str, singlestep: bool) -> None:
    # The facade validates configs up front (schedule.validate_config); this guards direct calls.
    _choice("solver_order", solver_order, ORDERS)
    allowed = tuple(a for a in DPM_ALGORITHMS if not (singlestep and a == "sde-dpmsolver"))
    _choice("algorithm_type", algorithm_type, allowed)
    _choice("solver_type", solver_type, DPM_SOLVER_TYPES)
    if algorithm_type == "sde-dpmsolver" and solver_order == 3:  # diffusers has no such formula
        raise ValueError("solver_order must be one of 1, 2 with algorithm_type 'sde-dpmsolver'; got 3")


def _multistep_order(solver_order: int, i: int, g: int, n_full: int, last_first: bool, short: bool) -> int:
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
    n, offset = len(sigmas) - 1, _offset(step_index)
    n_full, lam = offset + n, _lambdas(sigmas)
    last_first = euler_at_final or sigmas[-1] == 0
    short = lower_order_final and n_full < 15
    steps = [
        _dpm_multistep_step(
            lam,
            sigmas,
            i,
            _multistep_order(solver_order, i, offset + i, n_full, last_first, short),
            algorithm_type,
            solver_type,
        )
        for i in range(n)
    ]
    data = algorithm_type.endswith("++")
    cs, sig = vp_factors(sigmas), np.asarray(sigmas, dtype=np.float64).tolist()
    steps = [vp_step(step, cs, i, i, data) for i, step in enumerate(steps)]

    outputs: deque[np.ndarray] = deque(maxlen=3)
    tmp = Scratch()
    x, denoised = yield
    for i, (a, weights, noise_coef) in enumerate(steps):
        outputs.appendleft(denoised if data else _eps_vp(x, denoised, sig[i], cs[i]))
        terms = [(a, x), *zip(weights, outputs, strict=False), *_noise(noise_coef, noise_sampler, sigmas, i)]
        x, denoised = yield _lincomb(terms, tmp)


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
    special = _special_step(algorithm_type.endswith("++"), s_s, s_t)
    if special:
        return special
    h = lam[i + 1] - lam[b]
    a, scale, c0, c1m, c1h, c2, noise = _dpm_phis(algorithm_type, s_s, s_t, h)
    if order == 1:
        return a, _lin((scale * c0, E0)), noise
    r0 = (lam[i] - lam[b]) / h
    if order == 2:  # D0 is the block's first output (at i - 1), D1 = (m_i - m_{i-1}) / r0
        c1 = c1m if solver_type == "midpoint" else c1h
        return a, _lin((scale * c0, E1), (scale * c1 / r0, E0), (-scale * c1 / r0, E1)), noise
    r1 = (lam[i - 1] - lam[b]) / h
    d1_0 = _lin((1.0 / r1, E1), (-1.0 / r1, E2))
    d1_1 = _lin((1.0 / r0, E0), (-1.0 / r0, E2))
    if solver_type == "midpoint":
        return a, _lin((scale * c0, E2), (scale * c1h, d1_1)), noise
    d1 = _lin((r0 / (r0 - r1), d1_0), (-r1 / (r0 - r1), d1_1))
    d2 = _lin((2.0 / (r0 - r1), d1_1), (-2.0 / (r0 - r1), d1_0))
    return a, _lin((scale * c0, E2), (scale * c1h, d1), (scale * c2, d2)), noise


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
    n, offset = len(sigmas) - 1, _offset(step_index)
    lam = _lambdas(sigmas)
    orders = singlestep_orders(offset + n, solver_order, lower_order_final, sigmas[-1] == 0)[offset:]
    # diffusers lowers an order that would reach back before this run's first output (img2img)
    orders = [min(o, i + 1) for i, o in enumerate(orders)]
    data = algorithm_type.endswith("++")
    cs, sig = vp_factors(sigmas), np.asarray(sigmas, dtype=np.float64).tolist()
    steps = [
        vp_step(_dpm_singlestep_step(lam, sigmas, i, o, algorithm_type, solver_type), cs, i, i - o + 1, data)
        for i, o in enumerate(orders)
    ]

    outputs: deque[np.ndarray] = deque(maxlen=3)
    tmp = Scratch()
    x, denoised = yield
    base = x
    for i, (order, (a, weights, noise_coef)) in enumerate(zip(orders, steps, strict=False)):
        outputs.appendleft(denoised if data else _eps_vp(x, denoised, sig[i], cs[i]))
        if order == 1:  # a block starts here; its higher-order steps restart from this sample
            base = x
        terms = [
            (a, base),
            *zip(weights, outputs, strict=False),
            *_noise(noise_coef, noise_sampler, sigmas, i),
        ]
        x, denoised = yield _lincomb(terms, tmp)


# ---------------------------------------------------------------------------------------- DEIS


def _deis_step(log_rho: list[float], sigmas: np.ndarray, i: int, order: int) -> Step:
    """DEISMultistepScheduler's log-rho update (noise prediction, rho = VE sigma)."""
    s_s, s_t = float(sigmas[i]), float(sigmas[i + 1])
    special = _special_step(False, s_s, s_t)
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
    _choice("solver_order", solver_order, ORDERS)
    n, offset = len(sigmas) - 1, _offset(step_index)
    n_full, log_rho = offset + n, [-v for v in _lambdas(sigmas)]
    short = lower_order_final and n_full < 15
    steps = [
        _deis_step(log_rho, sigmas, i, _multistep_order(solver_order, i, offset + i, n_full, False, short))
        for i in range(n)
    ]
    cs, sig = vp_factors(sigmas), np.asarray(sigmas, dtype=np.float64).tolist()
    steps = [vp_step(step, cs, i, i, False) for i, step in enumerate(steps)]

    outputs: deque[np.ndarray] = deque(maxlen=3)
    tmp = Scratch()
    x, denoised = yield
    for i, (a, weights, _) in enumerate(steps):
        outputs.appendleft(_eps_vp(x, denoised, sig[i], cs[i]))
        x, denoised = yield _lincomb([(a, x), *zip(weights, outputs, strict=False)], tmp)


# ------------------------------------------------------------------------------------ registry


def _check_multistep(options: dict[str, Any]) -> None:
    _check_dpm_options(options["solver_order"], options["algorithm_type"], options["solver_type"], False)


def _check_singlestep(options: dict[str, Any]) -> None:
    _check_dpm_options(options["solver_order"], options["algorithm_type"], options["solver_type"], True)


def _check_deis(options: dict[str, Any]) -> None:
    _choice("solver_order", options["solver_order"], ORDERS)


_spec(
    "dpmpp_2m",
    "DPM++ 2M: second-order multistep DPM-Solver++ (DPMSolverMultistepScheduler)",
    "dpm_multistep",
    sample_dpm_solver_multistep,
    _check_multistep,
    vp_scaled=True,
)
_spec(
    "dpmpp_2m_sde",
    "DPM++ 2M SDE: second-order multistep SDE DPM-Solver++ (stochastic)",
    "dpm_multistep",
    sample_dpm_solver_multistep,
    _check_multistep,
    vp_scaled=True,
    stochastic=True,
    algorithm_type="sde-dpmsolver++",
)
_spec(
    "dpmpp_3m_sde",
    "DPM++ 3M SDE: third-order multistep SDE DPM-Solver++ (stochastic)",
    "dpm_multistep",
    sample_dpm_solver_multistep,
    _check_multistep,
    vp_scaled=True,
    stochastic=True,
    algorithm_type="sde-dpmsolver++",
    solver_order=3,
)
_spec(
    "dpmpp_2s",
    "DPM++ 2S: second-order singlestep DPM-Solver++ (DPMSolverSinglestepScheduler)",
    "dpm_singlestep",
    sample_dpm_solver_singlestep,
    _check_singlestep,
    vp_scaled=True,
)
_spec(
    "deis",
    "DEIS: multistep exponential integrator in log-rho (DEISMultistepScheduler)",
    "deis",
    sample_deis,
    _check_deis,
    vp_scaled=True,
)
