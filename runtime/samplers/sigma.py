"""The k-diffusion-style sigma samplers: euler, euler_a, heun, dpm2, dpm2_a, lms.

Each mirrors one diffusers class (EulerDiscrete, EulerAncestralDiscrete, HeunDiscrete,
KDPM2Discrete, KDPM2AncestralDiscrete, LMSDiscrete); the public sample is in VE space, so the
facade only has to scale the model input.
"""

from __future__ import annotations

import math

import numpy as np

from .base import BaseSchedule, NoiseSampler, Plan, SamplerGen, SamplerSpec, Scratch, get_ancestral_step, to_d
from .registry import register
from .training import log_train_sigmas, sigma_to_t

# Step sizes are plain Python floats throughout: numpy casts a Python float to the array's dtype
# (float16/float32 samples stay so), while a numpy float64 scalar would upcast the whole pass.


def _euler_to(x: np.ndarray, d: np.ndarray, dt: float) -> np.ndarray:
    """x + d * dt in a new array."""
    out = d * dt
    out += x
    return out


def _floats(sigmas: np.ndarray) -> list[tuple[float, float]]:
    """(sigma, sigma_next) of each step as Python floats."""
    s = np.asarray(sigmas, dtype=np.float64).tolist()
    return list(zip(s[:-1], s[1:], strict=True))


def sample_euler(
    sigmas: np.ndarray,
    noise_sampler: NoiseSampler,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
    num_steps: int | None = None,
) -> SamplerGen:
    # diffusers divides the churn by the length of the whole schedule, not of the slice run here.
    n = num_steps or len(sigmas) - 1
    steps = []
    for sigma, sigma_next in _floats(sigmas):
        gamma = min(s_churn / n, 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (gamma + 1)
        churn = s_noise * (sigma_hat**2 - sigma**2) ** 0.5 if gamma > 0 else None
        steps.append((sigma, sigma_next, churn, sigma_next - sigma_hat))
    x, denoised = yield None
    for sigma, sigma_next, churn, dt in steps:
        d = to_d(x, sigma, denoised)
        if churn is not None:
            # As diffusers: the churn noise is added after the model call, and the derivative
            # the model gave at sigma is reused at sigma_hat.
            x = x + noise_sampler(sigma, sigma_next) * churn
        x, denoised = yield _euler_to(x, d, dt)


def _euler_plan(base: BaseSchedule, options: dict) -> Plan:
    return Plan(base.timesteps, base.sigmas, extra={"num_steps": len(base.timesteps)})


def sample_euler_ancestral(sigmas: np.ndarray, noise_sampler: NoiseSampler, eta: float = 1.0) -> SamplerGen:
    steps = [(s, s_next, *get_ancestral_step(s, s_next, eta)) for s, s_next in _floats(sigmas)]
    tmp = Scratch()
    x, denoised = yield None
    for sigma, sigma_next, sigma_down, sigma_up in steps:
        x = _euler_to(x, to_d(x, sigma, denoised), sigma_down - sigma)
        if sigma_up > 0:
            tmp.add_scaled(x, noise_sampler(sigma, sigma_next), sigma_up)
        x, denoised = yield x


def sample_heun(sigmas: np.ndarray, noise_sampler: NoiseSampler) -> SamplerGen:
    # x + dt (d + d_2) / 2 written as mid + h d_2 with mid = x + h d and h = dt / 2, the
    # predictor x + dt d being mid + h d.
    tmp = Scratch()
    x, denoised = yield None
    for sigma, sigma_next in _floats(sigmas):
        d = to_d(x, sigma, denoised)
        if sigma_next == 0:  # the last step is Euler: no model call at sigma = 0
            x, denoised = yield _euler_to(x, d, sigma_next - sigma)
            continue
        h = 0.5 * (sigma_next - sigma)
        mid = _euler_to(x, d, h)  # kept for the corrector: never handed out before it
        x, denoised = yield _euler_to(mid, d, h)
        x, denoised = yield tmp.add_scaled(mid, to_d(x, sigma_next, denoised), h)


def _heun_plan(base: BaseSchedule, options: dict) -> Plan:
    # Every sigma but the first and the final zero is visited twice: once as the end of a
    # step's Euler predictor, once as the start of the next step.
    t, s = base.timesteps, base.sigmas
    return Plan(
        timesteps=np.concatenate([t[:1], np.repeat(t[1:], 2)]),
        sigmas=np.concatenate([s[:1], np.repeat(s[1:-1], 2), s[-1:]]),
        step_calls=2 * np.arange(len(t)),
    )


def _interleave(first: np.ndarray, mids: np.ndarray) -> np.ndarray:
    """[first[0], mids[0], first[1], mids[1], ...]: len(mids) == len(first) - 1."""
    out = np.empty(len(first) + len(mids), dtype=np.result_type(first, mids))
    out[0::2], out[1::2] = first, mids
    return out


def _midpoints(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # Geometric means, rounded to float32 as diffusers' sigmas_interpol are.
    with np.errstate(divide="ignore"):
        return np.exp((np.log(a) + np.log(b)) / 2).astype(np.float32).astype(np.float64)


def _midpoint(a: float, b: float) -> float:
    return float(np.float32(math.exp((math.log(a) + math.log(b)) / 2)))


def _dpm2_steps(sigmas: np.ndarray, eta: float) -> list[tuple[float, float, float, float, float]]:
    """Per step (sigma, sigma_next, sigma_down, sigma_up, sigma_mid), computed before the first
    call: per-call scalar math would be a fifth of a step at 512 px."""
    steps = []
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        down, up = get_ancestral_step(sigma, sigma_next, eta)
        steps.append((sigma, sigma_next, down, up, _midpoint(sigma, down) if down else 0.0))
    return steps


def sample_dpm_2(sigmas: np.ndarray, noise_sampler: NoiseSampler) -> SamplerGen:
    steps = _dpm2_steps(sigmas, 0.0)
    x, denoised = yield None
    for sigma, sigma_next, _, _, sigma_mid in steps:
        d = to_d(x, sigma, denoised)
        if sigma_next == 0:  # last step: Euler, no model call at sigma = 0
            x, denoised = yield _euler_to(x, d, sigma_next - sigma)
            continue
        x_start = x
        x, denoised = yield _euler_to(x, d, sigma_mid - sigma)
        x, denoised = yield _euler_to(x_start, to_d(x, sigma_mid, denoised), sigma_next - sigma)


def sample_dpm_2_ancestral(sigmas: np.ndarray, noise_sampler: NoiseSampler, eta: float = 1.0) -> SamplerGen:
    steps = _dpm2_steps(sigmas, eta)
    tmp = Scratch()
    x, denoised = yield None
    for sigma, sigma_next, sigma_down, sigma_up, sigma_mid in steps:
        d = to_d(x, sigma, denoised)
        if sigma_down == 0:  # last step: Euler, no model call at sigma = 0
            x, denoised = yield _euler_to(x, d, sigma_down - sigma)
            continue
        x_start = x
        x, denoised = yield _euler_to(x, d, sigma_mid - sigma)
        x = _euler_to(x_start, to_d(x, sigma_mid, denoised), sigma_down - sigma)
        if sigma_up > 0:
            tmp.add_scaled(x, noise_sampler(sigma, sigma_next), sigma_up)
        x, denoised = yield x


def _two_call_plan(base: BaseSchedule, mids: np.ndarray) -> Plan:
    """Calls [s0, mid0, s1, mid1, ..., s_{n-1}] then the final sigma: the last step is Euler."""
    t, s = base.timesteps, base.sigmas
    n = len(t)
    log_sigmas = log_train_sigmas(base.alphas_cumprod)
    t_mid = sigma_to_t(mids, log_sigmas)
    return Plan(
        timesteps=_interleave(t, t_mid),
        sigmas=np.append(_interleave(s[:n], mids), s[n]),
        step_calls=2 * np.arange(n),
    )


def _dpm2_plan(base: BaseSchedule, options: dict) -> Plan:
    s, n = base.sigmas, len(base.timesteps)
    return _two_call_plan(base, _midpoints(s[: n - 1], s[1:n]))


def _dpm2_ancestral_plan(base: BaseSchedule, options: dict) -> Plan:
    s, n = base.sigmas, len(base.timesteps)
    s_from, s_to = s[: n - 1], s[1:n]
    sigma_up = np.sqrt(s_to**2 * (s_from**2 - s_to**2) / s_from**2)
    sigma_down = np.sqrt(s_to**2 - sigma_up**2)
    return _two_call_plan(base, _midpoints(s_from, sigma_down))


_GL_X, _GL_W = (v.tolist() for v in np.polynomial.legendre.leggauss(4))  # exact for cubics


def lms_coefficients(sigmas: np.ndarray, i: int, order: int) -> list[float]:
    """Integrals over [sigma_i, sigma_{i+1}] of the Lagrange basis on sigma_i, sigma_{i-1}, ...

    diffusers integrates with scipy's quad; 4-point Gauss-Legendre is exact for these
    polynomials (degree <= 3).  Plain floats: this runs every step.
    """
    a, b = float(sigmas[i]), float(sigmas[i + 1])
    half, mid = (b - a) / 2, (a + b) / 2
    taus = [half * g + mid for g in _GL_X]
    nodes = [float(sigmas[i - k]) for k in range(order)]
    coeffs = []
    for j in range(order):
        total = 0.0
        for tau, w in zip(taus, _GL_W, strict=True):
            basis = 1.0
            for k in range(order):
                if k != j:
                    basis *= (tau - nodes[k]) / (nodes[j] - nodes[k])
            total += w * basis
        coeffs.append(half * total)
    return coeffs


def sample_lms(
    sigmas: np.ndarray,
    noise_sampler: NoiseSampler,
    order: int = 4,
    step_index: np.ndarray | None = None,
    all_sigmas: np.ndarray | None = None,
) -> SamplerGen:
    """Linear multistep on sigma.  ``step_index``/``all_sigmas`` (from the plan) reproduce
    diffusers' start mid-schedule (img2img): it takes the order from the absolute step index,
    so its first step integrates a higher-order Lagrange basis over the earlier sigmas and keeps
    only the newest derivative's weight."""
    tmp = Scratch()
    x, denoised = yield None
    ds: list[np.ndarray] = []
    for i in range(len(sigmas) - 1):
        ds.append(to_d(x, float(sigmas[i]), denoised))
        if len(ds) > order:
            ds.pop(0)
        if step_index is not None and all_sigmas is not None:
            k = int(step_index[i])
            coeffs = lms_coefficients(all_sigmas, k, min(k + 1, order))
        else:
            coeffs = lms_coefficients(sigmas, i, min(i + 1, order))
        step = None
        for c, d_j in zip(coeffs, reversed(ds), strict=False):
            if step is None:
                step = d_j * c
            else:
                tmp.add_scaled(step, d_j, c)
        step += x
        x, denoised = yield step


def _lms_plan(base: BaseSchedule, options: dict) -> Plan:
    n = len(base.timesteps)
    return Plan(base.timesteps, base.sigmas, extra={"step_index": np.arange(n), "all_sigmas": base.sigmas})


for _spec in (
    SamplerSpec(
        "euler",
        "Euler (EulerDiscreteScheduler); optional churn via s_churn/s_tmin/s_tmax/s_noise",
        "ve",
        sample_euler,
        defaults={"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": math.inf, "s_noise": 1.0},
        plan=_euler_plan,
        family="euler",
        stochastic=lambda o: o["s_churn"] > 0,
    ),
    SamplerSpec(
        "euler_a",
        "Euler ancestral (EulerAncestralDiscreteScheduler): fresh noise every step",
        "ve",
        sample_euler_ancestral,
        family="euler_a",
        stochastic=True,
    ),
    SamplerSpec(
        "heun",
        "Heun's 2nd-order method (HeunDiscreteScheduler): two model calls per step",
        "ve",
        sample_heun,
        plan=_heun_plan,
        family="heun",
        order=2,
    ),
    SamplerSpec(
        "dpm2",
        "DPM-Solver-2 / k-diffusion DPM2 (KDPM2DiscreteScheduler): midpoint in log sigma",
        "ve",
        sample_dpm_2,
        plan=_dpm2_plan,
        family="kdpm2",
        order=2,
    ),
    SamplerSpec(
        "dpm2_a",
        "DPM2 ancestral (KDPM2AncestralDiscreteScheduler)",
        "ve",
        sample_dpm_2_ancestral,
        plan=_dpm2_ancestral_plan,
        family="kdpm2_a",
        order=2,
        stochastic=True,
    ),
    SamplerSpec(
        "lms",
        "Linear multistep on sigma (LMSDiscreteScheduler), order 4 by default",
        "ve",
        sample_lms,
        defaults={"order": 4},
        plan=_lms_plan,
        family="lms",
    ),
):
    register(_spec)
