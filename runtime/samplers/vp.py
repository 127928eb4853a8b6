"""The samplers whose diffusers classes keep the public sample in VP space: ddim, pndm, lcm.

They are written in VE space like every other sampler; the facade converts at the boundary.
diffusers' DDIM and PNDM step from timestep ``t`` to ``t - T // n``, which need not be the next
call's timestep (linspace/trailing spacing); the step then lands on one noise level and the
next call reads the same VP sample at another: ``_reread`` is the factor between the two views.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .base import BaseSchedule, NoiseSampler, Plan, SamplerGen, SamplerSpec, Scratch, to_d
from .registry import register


def _floats(values: np.ndarray) -> list[float]:
    # Python floats: numpy casts them to the sample's dtype, a numpy float64 would upcast the pass
    return np.asarray(values, dtype=np.float64).tolist()


def _train_sigmas(base: BaseSchedule) -> np.ndarray:
    ac = base.alphas_cumprod
    return np.sqrt((1 - ac) / np.maximum(ac, 1e-20))


def _stride_targets(base: BaseSchedule, timesteps: np.ndarray, n: int) -> np.ndarray:
    """The sigma diffusers steps to from each timestep: that of ``t - T // n``, else the final."""
    prev = timesteps - len(base.alphas_cumprod) // n
    train = _train_sigmas(base)
    return np.where(prev >= 0, train[np.maximum(prev, 0)], base.sigmas[-1])


def _reread(sigma_from: float, sigma_to: float) -> float:
    """x_to / x_from for the VE views of one VP sample at two noise levels."""
    return ((1.0 + sigma_to**2) / (1.0 + sigma_from**2)) ** 0.5


def sample_ddim(
    sigmas: np.ndarray,
    noise_sampler: NoiseSampler,
    sigmas_to: np.ndarray,
    clip: Callable[[np.ndarray], np.ndarray] | None = None,
    eta: float = 0.0,
    use_clipped_model_output: bool = False,
) -> SamplerGen:
    """DDIMScheduler: from the call's sigma to that of ``t - T // n`` (``sigmas_to``),
    x0 + sigma_down eps + sigma_up noise, DDIM's eta-scaled variance being exactly the ancestral
    split of sigma -> sigma_to; the result is read at the next call's sigma."""
    tmp = Scratch()
    sig, sig_to = _floats(sigmas), _floats(sigmas_to)
    x, denoised = yield None
    for i in range(len(sig) - 1):
        sigma, sigma_to = sig[i], sig_to[i]
        sigma_up = eta * (sigma_to**2 * (sigma**2 - sigma_to**2) / sigma**2) ** 0.5 if eta else 0.0
        sigma_down = max(sigma_to**2 - sigma_up**2, 0.0) ** 0.5
        reread = _reread(sigma_to, sig[i + 1])
        if clip is None:
            # denoised + sigma_down * (x - denoised) / sigma as one weighted sum: no cancellation
            # at a zero-SNR sigma of 1e10.
            w = sigma_down / sigma
            x_next = tmp.add_scaled(denoised * ((1.0 - w) * reread), x, w * reread)
        else:
            # diffusers keeps the model's own epsilon even when it clips the data prediction.
            eps = to_d(x, sigma, denoised)
            denoised = clip(denoised)
            if use_clipped_model_output:
                eps = to_d(x, sigma, denoised)
            eps *= sigma_down * reread  # a fresh array from to_d: scaled in place
            x_next = tmp.add_scaled(eps, denoised, reread)
        if sigma_up > 0:
            tmp.add_scaled(x_next, noise_sampler(sigma, sigma_to), sigma_up * reread)
        x, denoised = yield x_next


def _ddim_plan(base: BaseSchedule, options: dict) -> Plan:
    t = base.timesteps
    return Plan(timesteps=t, sigmas=base.sigmas, extra={"sigmas_to": _stride_targets(base, t, len(t))})


def _plms_output(x: np.ndarray, denoised: np.ndarray, sigma: float, v_pred: bool) -> np.ndarray:
    """The model output PNDM combines: epsilon (a "sample" model's too), or v for v models."""
    eps = to_d(x, sigma, denoised)
    if not v_pred:
        return eps
    c = math.sqrt(1.0 + sigma**2)  # v = sqrt(1 + s^2) eps - s x / sqrt(1 + s^2)
    eps *= c
    eps -= x * (sigma / c)
    return eps


def _rk_terms(stage: int, out: np.ndarray, rk_sum: list[tuple[float, np.ndarray]]) -> tuple[list, list]:
    """(outputs, weights) of Runge-Kutta-4 stage ``stage``: stages 0-2 step with their own output,
    the last with 1/6, 1/3, 1/3, 1/6 of all four, which ``rk_sum`` (the step's) collects."""
    if stage == 0:
        rk_sum[:] = [(1 / 6, out)]
    elif stage < 3:
        rk_sum.append((1 / 3, out))
    else:
        return [o for _, o in rk_sum] + [out], [w for w, _ in rk_sum] + [1 / 6]
    return [out], [1.0]


def _plms_move(
    start: tuple[np.ndarray, float],
    terms: list[np.ndarray],
    coefs: list[float] | tuple[float, ...],
    levels: tuple[float, float, float],
    v_pred: bool,
    tmp: Scratch,
) -> np.ndarray:
    """PNDM's ``_get_prev_sample`` from the VE sample ``start = (x, its sigma)`` with the
    combined output sum(coefs * terms), over ``levels = (s_from, s_to, s_next)``.

    x_to = base + (s_to - s_from) eps with base the VE view at s_from, eps the combined output
    for epsilon models and v / sqrt(1 + s_from^2) + s_from base / (1 + s_from^2) for v models (v
    turned into epsilon only after combining, as diffusers does); then read at s_next.
    """
    (x, sigma), (s_from, s_to, s_next) = start, levels
    dt, k = s_to - s_from, _reread(s_to, s_next)
    base_k = k * _reread(sigma, s_from)
    scale = dt * k
    if v_pred:
        base_k *= 1.0 + dt * s_from / (1.0 + s_from**2)
        scale /= math.sqrt(1.0 + s_from**2)
    x_next = x * base_k
    for coef, term in zip(coefs, terms, strict=True):
        tmp.add_scaled(x_next, term, coef * scale)
    return x_next


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
    outputs seed the 4-step combination.
    """

    def sigma_of(t: int) -> float:
        return float(train_sigmas[t]) if t >= 0 else final_sigma

    v_pred, n_rk, sig = prediction_type == "v_prediction", 12 if prk_half else 0, _floats(sigmas)
    tmp = Scratch()
    outs: list[np.ndarray] = []
    rk_sum: list[tuple[float, np.ndarray]] = []
    x, denoised = yield None
    first = (x, sig[0])  # where the current Runge-Kutta step (or PLMS's first step) started
    for c in range(len(sig) - 1):
        t, sigma = int(timesteps[c]), sig[c]
        out = _plms_output(x, denoised, sigma, v_pred)
        if c < n_rk:  # Runge-Kutta warm-up: every stage restarts from the step's first sample
            stage = c % 4
            if stage == 0:
                outs.append(out)
                first = (x, sigma)
            terms, coefs = _rk_terms(stage, out, rk_sum)
            s_from, start = sigma_of(int(timesteps[c - stage])), first
            s_to = sigma_of(t if c % 2 else t - prk_half)
        elif c == 1 and not n_rk:  # PLMS call 1: redo call 0's step with the mean of both outputs
            s_from, s_to, start = sigma_of(t + stride), sigma_of(t), first
            terms, coefs = [out, outs[-1]], [0.5, 0.5]
        else:
            outs = outs[-3:] + [out]
            if c == 0:
                first = (x, sigma)
            s_from, s_to, start = sigma, sigma_of(t - stride), (x, sigma)
            terms, coefs = outs[::-1], _ADAMS_BASHFORTH[len(outs)]
        x, denoised = yield _plms_move(start, terms, coefs, (s_from, s_to, sig[c + 1]), v_pred, tmp)


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
        "prk_half": prk_half,
    }
    return Plan(timesteps=base.timesteps, sigmas=base.sigmas, extra=extra)


def sample_lcm(
    sigmas: np.ndarray, noise_sampler: NoiseSampler, timesteps: np.ndarray, timestep_scaling: float = 10.0
) -> SamplerGen:
    """Latent consistency sampling (LCMScheduler): denoise with the boundary-condition scalings,
    then re-noise to the next call's level with fresh noise (none after the last call)."""
    tmp = Scratch()
    sig = _floats(sigmas)
    x, denoised = yield None
    for i in range(len(sig) - 1):
        sigma = sig[i]
        scaled_t = float(timesteps[i]) * timestep_scaling
        c_skip = 0.25 / (scaled_t**2 + 0.25)  # sigma_data = 0.5
        c_out = scaled_t / (scaled_t**2 + 0.25) ** 0.5
        # c_skip multiplies diffusers' VP sample, x / sqrt(1 + sigma^2) in VE terms.
        x = tmp.add_scaled(denoised * c_out, x, c_skip / math.sqrt(1.0 + sigma**2))
        if i < len(sig) - 2:
            tmp.add_scaled(x, noise_sampler(sigma, sig[i + 1]), sig[i + 1])
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
        stochastic=lambda o: o["eta"] > 0,
    ),
    SamplerSpec(
        "pndm",
        "PLMS / pseudo linear multistep (PNDMScheduler, skip_prk_steps), SD 1.x's default sampler",
        "vp",
        sample_plms,
        defaults={"skip_prk_steps": True},
        plan=_plms_plan,
        family="pndm",
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
