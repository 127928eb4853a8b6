"""The samplers whose diffusers classes keep the public sample in VP space: ddim, pndm, lcm.

They are written in VE space like every other sampler; the facade converts at the boundary.
diffusers' DDIM and PNDM step from timestep ``t`` to ``t - T // n``, which need not be the next
call's timestep (linspace/trailing spacing); the step then lands on one noise level and the
next call reads the same VP sample at another, which ``vp_reread`` reproduces.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .base import BaseSchedule, NoiseSampler, Plan, SamplerGen, SamplerSpec, to_d
from .registry import register


def _f(x: np.ndarray, value: float) -> np.generic:
    return x.dtype.type(value)


def _train_sigmas(base: BaseSchedule) -> np.ndarray:
    ac = base.alphas_cumprod
    return np.sqrt((1 - ac) / np.maximum(ac, 1e-20))


def _stride_targets(base: BaseSchedule, timesteps: np.ndarray, n: int) -> np.ndarray:
    """The sigma diffusers steps to from each timestep: that of ``t - T // n``, else the final."""
    prev = timesteps - len(base.alphas_cumprod) // n
    train = _train_sigmas(base)
    return np.where(prev >= 0, train[np.maximum(prev, 0)], base.sigmas[-1])


def sample_ddim(
    sigmas: np.ndarray,
    noise_sampler: NoiseSampler,
    sigmas_to: np.ndarray,
    clip: Callable[[np.ndarray], np.ndarray] | None = None,
    eta: float = 0.0,
    use_clipped_model_output: bool = False,
) -> SamplerGen:
    x, denoised = yield None
    for i in range(len(sigmas) - 1):
        sigma, sigma_to = sigmas[i], sigmas_to[i]
        # DDIM's eta-scaled variance is exactly the ancestral split of sigma -> sigma_to.
        sigma_up = eta * (sigma_to**2 * (sigma**2 - sigma_to**2) / sigma**2) ** 0.5 if eta else 0.0
        sigma_down = max(sigma_to**2 - sigma_up**2, 0.0) ** 0.5
        reread = ((1 + sigmas[i + 1] ** 2) / (1 + sigma_to**2)) ** 0.5
        if clip is None:
            # denoised + sigma_down * (x - denoised) / sigma as one weighted sum (no cancellation
            # at a zero-SNR sigma of 1e10), already read at the next call's sigma.
            w = sigma_down / sigma
            x_next = denoised * _f(x, (1 - w) * reread)
            x_next += x * _f(x, w * reread)
        else:
            # diffusers keeps the model's own epsilon even when it clips the data prediction.
            eps = to_d(x, sigma, denoised)
            denoised = clip(denoised)
            if use_clipped_model_output:
                eps = to_d(x, sigma, denoised)
            eps *= _f(x, sigma_down * reread)  # eps is a fresh array from to_d: step in place
            eps += denoised * _f(x, reread)
            x_next = eps
        if sigma_up > 0:
            x_next += noise_sampler(sigma, sigma_to) * _f(x, sigma_up * reread)
        x, denoised = yield x_next


def _ddim_plan(base: BaseSchedule, options: dict) -> Plan:
    t = base.timesteps
    return Plan(timesteps=t, sigmas=base.sigmas, extra={"sigmas_to": _stride_targets(base, t, len(t))})


def sample_plms(
    sigmas: np.ndarray,
    noise_sampler: NoiseSampler,
    timesteps: np.ndarray,
    stride: int,
    train_sigmas: np.ndarray,
    final_sigma: float,
    prediction_type: str = "epsilon",
    prk_half: int = 0,
) -> SamplerGen:
    """Pseudo numerical methods (PNDMScheduler): Adams-Bashforth on the model output.

    With ``skip_prk_steps`` (PLMS, ``prk_half == 0``): call 0 takes a DDIM step from t to
    t - stride; call 1 (at the next timestep, repeated in the schedule) redoes that step from
    the first sample with the mean of both outputs; later calls use the 2-, 3- and 4-step
    Adams-Bashforth combinations of the stored outputs.  Otherwise the first 12 calls are three
    Runge-Kutta-4 steps of DDIM form over t -> t - prk_half -> t - 2 prk_half, whose first
    outputs seed the 4-step combination.  As in diffusers, the raw outputs (epsilon or v) are
    combined and a combined v is turned into epsilon only afterwards, with the step's sample.
    """

    def sigma_of(t: int) -> float:
        return float(train_sigmas[t]) if t >= 0 else final_sigma

    v_pred = prediction_type == "v_prediction"
    n_rk = 12 if prk_half else 0
    # Receives the derivative d = (x - denoised) / sigma, an epsilon model's own output.
    x, d = yield None
    outs: list[np.ndarray] = []
    first_x, first_sigma = x, sigmas[0]
    rk_sum: list[tuple[float, np.ndarray]] = []
    for c in range(len(sigmas) - 1):
        t, sigma = int(timesteps[c]), sigmas[c]
        if v_pred:  # the model's v: sqrt(1 + s^2) d - s x / sqrt(1 + s^2)
            out = d * _f(x, math.sqrt(1 + sigma**2))
            out -= x * _f(x, sigma / math.sqrt(1 + sigma**2))
        else:
            out = d.copy()  # kept across calls: not the caller's array
        if c < n_rk:  # Runge-Kutta warm-up: every stage restarts from the step's first sample
            stage = c % 4
            start = int(timesteps[c - stage])
            if stage == 0:
                outs.append(out)
                first_x, first_sigma = x, sigma
                rk_sum = [(1 / 6, out)]
                terms, coefs = [out], [1.0]
            elif stage < 3:
                rk_sum.append((1 / 3, out))
                terms, coefs = [out], [1.0]
            else:
                coefs, terms = [w for w, _ in rk_sum] + [1 / 6], [o for _, o in rk_sum] + [out]
            s_from, s_to = sigma_of(start), sigma_of(t - (0 if c % 2 else prk_half))
            base, base_scale = first_x, ((1 + s_from**2) / (1 + first_sigma**2)) ** 0.5
        elif c == 1 and not n_rk:
            s_from, s_to = sigma_of(t + stride), sigma_of(t)
            base, base_scale = first_x, ((1 + s_from**2) / (1 + first_sigma**2)) ** 0.5
            terms, coefs = [out, outs[-1]], [0.5, 0.5]
        else:
            outs = outs[-3:] + [out]
            if c == 0:
                first_x, first_sigma = x, sigma
            s_from, s_to = sigma, sigma_of(t - stride)
            base, base_scale = x, 1.0
            terms, coefs = outs[::-1], _ADAMS_BASHFORTH[len(outs)]
        # x_next = base + (s_to - s_from) * eps, with eps = sum(coefs * outs) for epsilon models
        # and eps = (sum(coefs * v) + s_from * base) / sqrt(1 + s_from^2) for v models; then
        # read at the next call's sigma.  All scalars are folded so each array is touched once.
        dt, reread = s_to - s_from, ((1 + sigmas[c + 1] ** 2) / (1 + s_to**2)) ** 0.5
        scale = dt / math.sqrt(1 + s_from**2) if v_pred else dt
        base_coef = 1 + (dt * s_from / (1 + s_from**2) if v_pred else 0.0)
        x = base * _f(x, base_coef * base_scale * reread)
        for coef, term in zip(coefs, terms, strict=True):
            x += term * _f(x, coef * scale * reread)
        x, d = yield x


_ADAMS_BASHFORTH = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


def _plms_plan(base: BaseSchedule, options: dict) -> Plan:
    n_train = len(base.alphas_cumprod)
    if options.get("skip_prk_steps", True):
        n = max(len(base.timesteps) - 1, 1)  # PLMS makes one extra call (none for a single step)
        prk_half = 0
    else:
        n = len(base.timesteps) - 9  # 12 Runge-Kutta calls replace the first 3 steps
        prk_half = n_train // n // 2
    extra = {
        "timesteps": base.timesteps,
        "stride": n_train // n,
        "train_sigmas": _train_sigmas(base),
        "final_sigma": float(base.sigmas[-1]),
        "prediction_type": options["prediction_type"],
        "prk_half": prk_half,
    }
    return Plan(timesteps=base.timesteps, sigmas=base.sigmas, extra=extra)


def sample_lcm(
    sigmas: np.ndarray, noise_sampler: NoiseSampler, timesteps: np.ndarray, timestep_scaling: float = 10.0
) -> SamplerGen:
    """Latent consistency sampling (LCMScheduler): denoise with the boundary-condition scalings,
    then re-noise to the next timestep with fresh noise (none after the last call)."""
    x, denoised = yield None
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i]
        scaled_t = float(timesteps[i]) * timestep_scaling
        c_skip = 0.25 / (scaled_t**2 + 0.25)  # sigma_data = 0.5
        c_out = scaled_t / (scaled_t**2 + 0.25) ** 0.5
        # c_skip multiplies diffusers' VP sample, x / sqrt(1 + sigma^2) in VE terms.
        x = denoised * _f(x, c_out) + x * _f(x, c_skip / math.sqrt(1 + sigma**2))
        if i < len(sigmas) - 2:
            x = x + noise_sampler(sigma, sigmas[i + 1]) * _f(x, sigmas[i + 1])
        x, denoised = yield x


def _lcm_plan(base: BaseSchedule, options: dict) -> Plan:
    sig = base.sigmas.copy()
    sig[-1] = 0.0
    return Plan(timesteps=base.timesteps, sigmas=sig, extra={"timesteps": base.timesteps})


for _spec in (
    SamplerSpec(
        "ddim",
        "DDIM (DDIMScheduler): deterministic at eta=0, eta=1 adds DDPM-like noise",
        "vp",
        sample_ddim,
        defaults={"eta": 0.0, "use_clipped_model_output": False},
        plan=_ddim_plan,
        family="ddim",
        stochastic=True,
        clips_itself=True,
    ),
    SamplerSpec(
        "pndm",
        "PLMS / pseudo linear multistep (PNDMScheduler, skip_prk_steps), SD 1.x's default sampler",
        "vp",
        sample_plms,
        defaults={"skip_prk_steps": True},
        plan=_plms_plan,
        family="pndm",
        receives_derivative=True,
    ),
    SamplerSpec(
        "lcm",
        "Latent consistency sampling (LCMScheduler) for LCM-distilled models and LoRAs, 1-8 steps",
        "vp",
        sample_lcm,
        plan=_lcm_plan,
        family="lcm",
        stochastic=True,
    ),
):
    register(_spec)
