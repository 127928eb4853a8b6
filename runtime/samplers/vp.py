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

from .base import BaseSchedule, NoiseSampler, Plan, SamplerGen, SamplerSpec, Scratch
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


def _vp_coefficients(prediction_type: str, sigma: float) -> tuple[float, float, float, float]:
    """(ax, am, ex, em): x0 = ax x + am m and eps = ex x + em m for the VP sample x and the
    model output m at VE sigma ``sigma`` (sqrt(abar) = 1 / sqrt(1 + sigma^2))."""
    s0 = 1.0 / math.sqrt(1.0 + sigma**2)
    s1 = sigma * s0
    if prediction_type == "epsilon":
        return 1.0 / s0, -s1 / s0, 0.0, 1.0
    if prediction_type == "v_prediction":
        return s0, -s1, s1, s0
    return 0.0, 1.0, 1.0 / s1, -s0 / s1  # "sample"


def sample_ddim(
    sigmas: np.ndarray,
    noise_sampler: NoiseSampler,
    sigmas_to: np.ndarray,
    prediction_type: str = "epsilon",
    clip: Callable[[np.ndarray], np.ndarray] | None = None,
    eta: float = 0.0,
    use_clipped_model_output: bool = False,
) -> SamplerGen:
    """DDIMScheduler on the VP sample (``receives_model_output``): from the call's noise level to
    that of ``t - T // n`` (``sigmas_to``), prev = sqrt(abar') x0 + sqrt(1 - abar' - std^2) eps +
    std noise, where sqrt(abar') = k = 1 / sqrt(1 + sigma_to^2) and the eta-scaled std is
    exactly k times the ancestral sigma_up of sigma -> sigma_to."""
    tmp = Scratch()
    sig, sig_to = _floats(sigmas), _floats(sigmas_to)
    x, m = yield None
    for i in range(len(sig) - 1):
        sigma, sigma_to = sig[i], sig_to[i]
        sigma_up = eta * (sigma_to**2 * (sigma**2 - sigma_to**2) / sigma**2) ** 0.5 if eta else 0.0
        sigma_down = max(sigma_to**2 - sigma_up**2, 0.0) ** 0.5
        k = 1.0 / math.sqrt(1.0 + sigma_to**2)
        ax, am, ex, em = _vp_coefficients(prediction_type, sigma)
        if clip is None:
            # Unclipped, the step is affine in (x, m): two scaled passes and an add.
            x_next = x * (k * ax + k * sigma_down * ex)
            tmp.add_scaled(x_next, m, k * am + k * sigma_down * em)
        else:
            # diffusers keeps the model's own epsilon even when it clips the data prediction.
            x0 = x * ax
            x0 += m * am
            eps = x * ex
            eps += m * em
            x0 = clip(x0)
            if use_clipped_model_output:  # eps = (x - sqrt(abar) x0) / sqrt(1 - abar)
                s0 = 1.0 / math.sqrt(1.0 + sigma**2)
                eps = x * (1.0 / (sigma * s0))
                eps -= x0 * (1.0 / sigma)
            eps *= k * sigma_down
            eps += x0 * k
            x_next = eps
        if sigma_up > 0:
            tmp.add_scaled(x_next, noise_sampler(sigma, sigma_to), k * sigma_up)
        x, m = yield x_next


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
    """Pseudo numerical methods (PNDMScheduler) on the VP sample (``receives_model_output``):
    Adams-Bashforth on the model output.

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
    as_sample = prediction_type == "sample"  # not in diffusers: its epsilon, (x - s0 x0) / s1
    n_rk = 12 if prk_half else 0
    n_calls = len(sigmas) - 1

    def coefficients(s_from: float, s_to: float) -> tuple[float, float]:
        """(base, output) coefficients on the VP sample: x_next = base_k * base + out_k * sum.

        In VE terms x_next = base + (s_to - s_from) * eps, with eps = sum(coefs * outs) for
        epsilon models and eps = (sum(coefs * v) + s_from * base) / sqrt(1 + s_from^2) for v
        models, base being the VP sample's VE view at s_from.  On the VP sample: the VE view at
        s_from is base * sqrt(1 + s_from^2), the result is read back by 1 / sqrt(1 + s_to^2)."""
        dt, c_from, k = s_to - s_from, math.sqrt(1 + s_from**2), 1.0 / math.sqrt(1 + s_to**2)
        scale = dt / c_from if v_pred else dt
        base_coef = 1 + (dt * s_from / (1 + s_from**2) if v_pred else 0.0)
        return base_coef * c_from * k, scale * k

    # The last four outputs live as rows of one array, the Adams-Bashforth sum being one
    # matrix-vector product instead of four scaled passes and four adds.  Which row each call
    # writes, and the weights per row, depend on the call index only: computed once here, the
    # per-call Python work stays small next to the array passes (a step is ~50 us at 512 px).
    adams_rows: dict[int, tuple[int, np.ndarray, float]] = {}
    slots: list[int] = list(range(3)) if n_rk else []  # the warm-up seeds three rows
    for c in range(n_calls):
        if c < n_rk or (c == 1 and not n_rk):
            continue
        row = slots.pop(0) if len(slots) == 4 else len(slots)
        slots.append(row)
        base_k, out_k = coefficients(float(sigmas[c]), sigma_of(int(timesteps[c]) - stride))
        weights = np.zeros(4)
        for coef, r in zip(_ADAMS_BASHFORTH[len(slots)], reversed(slots), strict=True):
            weights[r] = coef * out_k
        adams_rows[c] = (row, weights, base_k)
    first_row = adams_rows[0][0] if 0 in adams_rows else 0  # where PLMS call 1 finds call 0's output

    tmp = Scratch()
    x, m = yield None
    ring: np.ndarray | None = None
    flat: np.ndarray | None = None
    rk_outs: list[np.ndarray] = []  # the Runge-Kutta warm-up's outputs
    first_x = x
    rk_sum: list[tuple[float, np.ndarray]] = []
    for c in range(n_calls):
        adams = adams_rows.get(c)
        if adams is not None:
            if ring is None:
                ring = np.zeros((4, *x.shape), dtype=x.dtype)
                flat = ring.reshape(4, -1)
                for j, o in enumerate(rk_outs):
                    ring[j] = o
                # The weights in the sample's dtype, once: np.dot would otherwise upcast.
                adams_rows = {k: (r, w.astype(x.dtype), b) for k, (r, w, b) in adams_rows.items()}
                adams = adams_rows[c]
            out = ring[adams[0]]
        else:
            out = np.empty_like(x)
        # kept across calls, so never the caller's array
        if as_sample:
            sigma = float(sigmas[c])
            np.multiply(x, math.sqrt(1 + sigma**2) / sigma, out=out)
            out -= m * (1 / sigma)
        else:
            np.copyto(out, m)
        if adams is not None:
            assert flat is not None
            if c == 0:
                first_x = x
            x_next = np.dot(adams[1], flat).reshape(x.shape)
            tmp.add_scaled(x_next, x, adams[2])
            x, m = yield x_next
            continue
        t = int(timesteps[c])
        if c < n_rk:  # Runge-Kutta warm-up: every stage restarts from the step's first sample
            stage = c % 4
            start = int(timesteps[c - stage])
            if stage == 0:
                rk_outs.append(out)
                first_x = x
                rk_sum = [(1 / 6, out)]
                terms, coefs = [out], [1.0]
            elif stage < 3:
                rk_sum.append((1 / 3, out))
                terms, coefs = [out], [1.0]
            else:
                coefs, terms = [w for w, _ in rk_sum] + [1 / 6], [o for _, o in rk_sum] + [out]
            s_from, s_to = sigma_of(start), sigma_of(t - (0 if c % 2 else prk_half))
        else:  # PLMS call 1: redo call 0's step with the mean of both outputs
            assert ring is not None
            s_from, s_to = sigma_of(t + stride), sigma_of(t)
            terms, coefs = [out, ring[first_row]], [0.5, 0.5]
        base_k, out_k = coefficients(s_from, s_to)
        x_next = first_x * base_k
        for coef, term in zip(coefs, terms, strict=True):
            tmp.add_scaled(x_next, term, coef * out_k)
        x, m = yield x_next


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
    sigmas: np.ndarray,
    noise_sampler: NoiseSampler,
    timesteps: np.ndarray,
    timestep_scaling: float = 10.0,
    prediction_type: str = "epsilon",
    clip: Callable[[np.ndarray], np.ndarray] | None = None,
) -> SamplerGen:
    """Latent consistency sampling (LCMScheduler) on the VP sample (``receives_model_output``):
    denoised = c_skip x + c_out x0 with the boundary-condition scalings, then re-noised to the
    next call's level, sqrt(abar') denoised + sqrt(1 - abar') noise (no noise after the last)."""
    tmp = Scratch()
    sig = _floats(sigmas)
    x, m = yield None
    for i in range(len(sig) - 1):
        sigma = sig[i]
        scaled_t = float(timesteps[i]) * timestep_scaling
        c_skip = 0.25 / (scaled_t**2 + 0.25)  # sigma_data = 0.5
        c_out = scaled_t / (scaled_t**2 + 0.25) ** 0.5
        ax, am, _, _ = _vp_coefficients(prediction_type, sigma)
        last = i == len(sig) - 2
        # Re-noising scales denoised by k = sqrt(abar'); folded into the coefficients.
        k = 1.0 if last else 1.0 / math.sqrt(1.0 + sig[i + 1] ** 2)
        if clip is None:  # affine in (x, m): two scaled passes and an add
            x_next = x * (k * (c_out * ax + c_skip))
            tmp.add_scaled(x_next, m, k * c_out * am)
        else:
            x0 = x * ax
            x0 += m * am
            x_next = clip(x0)
            x_next *= k * c_out
            x_next += x * (k * c_skip)
        if not last:
            tmp.add_scaled(x_next, noise_sampler(sigma, sig[i + 1]), k * sig[i + 1])
        x, m = yield x_next


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
        receives_model_output=True,
    ),
    SamplerSpec(
        "pndm",
        "PLMS / pseudo linear multistep (PNDMScheduler, skip_prk_steps), SD 1.x's default sampler",
        "vp",
        sample_plms,
        defaults={"skip_prk_steps": True},
        plan=_plms_plan,
        family="pndm",
        receives_model_output=True,
    ),
    SamplerSpec(
        "lcm",
        "Latent consistency sampling (LCMScheduler) for LCM-distilled models and LoRAs, 1-8 steps",
        "vp",
        sample_lcm,
        plan=_lcm_plan,
        family="lcm",
        stochastic=True,
        clips_itself=True,
        receives_model_output=True,
    ),
):
    register(_spec)
