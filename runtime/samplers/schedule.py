"""Noise schedules, exactly as diffusers computes them for each scheduler class ("family").

diffusers' scheduler classes share most of their schedule code but differ in details that change
the numbers: how ``timestep_spacing`` is turned into timesteps (DPM-Solver/UniPC/DEIS space
``n + 1`` points and drop the last, DDIM/PNDM/LCM round to integers, the sigma samplers keep
float32 fractions), whether Karras timesteps are rounded, what the final sigma is.  Each family
below reproduces one class.

Public API (used by the facade and by the sampler modules)::

    FAMILIES                      # family name -> diffusers class name
    family_defaults(family)       # that class's ``__init__`` defaults (the config keys it reads)
    validate_config(cfg, family)  # ValueError naming the option and the allowed values
    make_base_schedule(cfg, n, family) -> BaseSchedule
    alphas_cumprod(cfg), log_train_sigmas(ac), sigma_to_t(sigmas, log_sigmas)
    karras_sigmas / exponential_sigmas / beta_sigmas(sigma_min, sigma_max, n)

``cfg`` is a complete option dict (``family_defaults(family)`` updated with the user's config).
Numbers follow diffusers to the float32 rounding it applies: betas and alphas_cumprod are float32
(1 - alphas_cumprod[0] ~ 1e-4 carries a ~1e-3 relative rounding error that moves sigma_min),
``log_sigmas`` for ``sigma_to_t`` are float32 logs, and the sigma/multistep families round their
sigmas to float32, the values diffusers steps with.  ``pndm`` lists every model call as a step
(PLMS repeats its second timestep; with ``skip_prk_steps=False`` the 12 Runge-Kutta calls
come first).
The multistep families are ``dpm_multistep`` (DPMSolverMultistepScheduler), ``dpm_singlestep``,
``unipc`` and ``deis``; their ``BaseSchedule.sigmas`` end with the final sigma diffusers uses
(zero, ``sigma_min`` or, for DEIS/UniPC with Karras-type sigmas, a repeat of the last sigma).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .base import BaseSchedule

FAMILIES: dict[str, str] = {
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "kdpm2": "KDPM2DiscreteScheduler",
    "kdpm2_a": "KDPM2AncestralDiscreteScheduler",
    "lms": "LMSDiscreteScheduler",
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "lcm": "LCMScheduler",
    "dpm_multistep": "DPMSolverMultistepScheduler",
    "dpm_singlestep": "DPMSolverSinglestepScheduler",
    "unipc": "UniPCMultistepScheduler",
    "deis": "DEISMultistepScheduler",
}

_BETAS = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear"}
_BETAS |= {"trained_betas": None, "prediction_type": "epsilon"}
_SD_BETAS = _BETAS | {"beta_start": 0.00085, "beta_end": 0.012}
_SPACING = {"timestep_spacing": "linspace", "steps_offset": 0}
_SIGMA_KINDS = {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False}
_THRESH = {"thresholding": False, "dynamic_thresholding_ratio": 0.995, "sample_max_value": 1.0}
_FLOW = {"use_flow_sigmas": False, "flow_shift": 1.0, "use_dynamic_shifting": False}
_FLOW |= {"time_shift_type": "exponential"}
_ZSNR = {"rescale_betas_zero_snr": False}

# The __init__ defaults of each diffusers class (diffusers 0.39): the config keys it reads.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "euler": _BETAS
    | _SPACING
    | _SIGMA_KINDS
    | _ZSNR
    | {
        "interpolation_type": "linear",
        "sigma_min": None,
        "sigma_max": None,
        "timestep_type": "discrete",
        "final_sigmas_type": "zero",
    },
    "euler_a": _BETAS | _SPACING | _ZSNR,
    "heun": _SD_BETAS | _SPACING | _SIGMA_KINDS | {"clip_sample": False, "clip_sample_range": 1.0},
    "kdpm2": _SD_BETAS | _SPACING | _SIGMA_KINDS,
    "kdpm2_a": _SD_BETAS | _SPACING | _SIGMA_KINDS,
    "lms": _BETAS | _SPACING | _SIGMA_KINDS,
    "ddim": _BETAS
    | _THRESH
    | _ZSNR
    | {
        "clip_sample": True,
        "clip_sample_range": 1.0,
        "set_alpha_to_one": True,
        "steps_offset": 0,
        "timestep_spacing": "leading",
    },
    "pndm": _BETAS
    | {"skip_prk_steps": False, "set_alpha_to_one": False, "timestep_spacing": "leading", "steps_offset": 0},
    "lcm": _BETAS
    | _THRESH
    | _ZSNR
    | {
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "original_inference_steps": 50,
        "clip_sample": False,
        "clip_sample_range": 1.0,
        "set_alpha_to_one": True,
        "steps_offset": 0,
        "timestep_spacing": "leading",
        "timestep_scaling": 10.0,
    },
    "dpm_multistep": _BETAS
    | _SPACING
    | _SIGMA_KINDS
    | _THRESH
    | _FLOW
    | _ZSNR
    | {
        "solver_order": 2,
        "algorithm_type": "dpmsolver++",
        "solver_type": "midpoint",
        "lower_order_final": True,
        "euler_at_final": False,
        "use_lu_lambdas": False,
        "final_sigmas_type": "zero",
        "lambda_min_clipped": -math.inf,
        "variance_type": None,
    },
    "dpm_singlestep": _BETAS
    | _SIGMA_KINDS
    | _THRESH
    | _FLOW
    | {
        "solver_order": 2,
        "algorithm_type": "dpmsolver++",
        "solver_type": "midpoint",
        "lower_order_final": False,
        "final_sigmas_type": "zero",
        "lambda_min_clipped": -math.inf,
        "variance_type": None,
    },
    "unipc": _BETAS
    | _SPACING
    | _SIGMA_KINDS
    | _THRESH
    | _FLOW
    | _ZSNR
    | {
        "solver_order": 2,
        "predict_x0": True,
        "solver_type": "bh2",
        "lower_order_final": True,
        "disable_corrector": [],
        "solver_p": None,
        "final_sigmas_type": "zero",
        "sigma_min": None,
        "sigma_max": None,
        "shift_terminal": None,
    },
    "deis": _BETAS
    | _SPACING
    | _SIGMA_KINDS
    | _THRESH
    | _FLOW
    | {"solver_order": 2, "algorithm_type": "deis", "solver_type": "logrho", "lower_order_final": True},
}

# Families whose diffusers class floors the last alphas_cumprod at 2**-24 under zero-SNR rescaling.
_ZSNR_FLOOR = {"euler", "euler_a", "dpm_multistep", "unipc"}
# VP families that keep alphas_cumprod[-1] = 0: the facade's VE view needs a finite sigma there.
# 1e-20 gives sigma = 1e10, still far inside float32, and the data prediction no longer sees it.
_VE_FLOOR = 1e-20

_CHOICES: dict[str, tuple[Any, ...]] = {
    "beta_schedule": ("linear", "scaled_linear", "squaredcos_cap_v2"),
    "prediction_type": ("epsilon", "v_prediction", "sample"),
    "timestep_spacing": ("linspace", "leading", "trailing"),
    "final_sigmas_type": ("zero", "sigma_min"),
    "interpolation_type": ("linear", "log_linear"),
    "timestep_type": ("discrete", "continuous"),
}
# Choices of the multistep families' own options (diffusers' constructors accept these).
_FAMILY_CHOICES: dict[str, dict[str, tuple[Any, ...]]] = {
    "dpm_multistep": {
        "solver_order": (1, 2, 3),
        "algorithm_type": ("dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver"),
        "solver_type": ("midpoint", "heun"),
    },
    "dpm_singlestep": {
        "solver_order": (1, 2, 3),
        "algorithm_type": ("dpmsolver++", "sde-dpmsolver++", "dpmsolver"),
        "solver_type": ("midpoint", "heun"),
    },
    "unipc": {"solver_order": (1, 2, 3), "solver_type": ("bh1", "bh2")},
    "deis": {"solver_order": (1, 2, 3), "algorithm_type": ("deis",), "solver_type": ("logrho",)},
}
# Options that diffusers has but this runtime does not implement: allowed only at these values.
_UNSUPPORTED: dict[str, Any] = {
    "use_flow_sigmas": False,
    "use_dynamic_shifting": False,
    "variance_type": None,
    "solver_p": None,
    "shift_terminal": None,
}


def family_defaults(family: str) -> dict[str, Any]:
    """The config keys diffusers' class for ``family`` reads, with its defaults (a fresh dict)."""
    return {k: (list(v) if isinstance(v, list) else v) for k, v in _DEFAULTS[family].items()}


def validate_config(cfg: dict[str, Any], family: str) -> None:
    """Raise ValueError naming the first bad option and the values it may take."""
    for key, allowed in _CHOICES.items():
        if key in cfg and cfg[key] not in allowed:
            raise ValueError(f"{key}={cfg[key]!r} is not supported; allowed: {', '.join(map(repr, allowed))}")
    for key, allowed in _FAMILY_CHOICES.get(family, {}).items():
        if key in cfg and (cfg[key] not in allowed or isinstance(cfg[key], bool)):
            raise ValueError(f"{key}={cfg[key]!r} is not supported; allowed: {', '.join(map(repr, allowed))}")
    for key, value in _UNSUPPORTED.items():
        if key in cfg and cfg[key] != value and cfg[key] not in (None, False):
            raise ValueError(f"{key}={cfg[key]!r} is not supported by sdlite's samplers; allowed: {value!r}")
    n_train = cfg["num_train_timesteps"]
    if not isinstance(n_train, (int, np.integer)) or isinstance(n_train, bool) or n_train < 2:
        raise ValueError(f"num_train_timesteps={n_train!r} must be an integer >= 2")
    kinds = [k for k in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas") if cfg.get(k)]
    if len(kinds) > 1:
        raise ValueError(
            f"only one of use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas may be set: {kinds}"
        )
    if cfg.get("trained_betas") is not None and len(cfg["trained_betas"]) != n_train:
        raise ValueError(f"trained_betas must have num_train_timesteps={n_train} entries")
    if family == "lcm" and not 1 <= cfg["original_inference_steps"] <= n_train:
        raise ValueError(
            f"original_inference_steps must be in 1..{n_train}, got {cfg['original_inference_steps']}"
        )
    if "steps_offset" in cfg and not isinstance(cfg["steps_offset"], (int, np.integer)):
        raise ValueError(f"steps_offset={cfg['steps_offset']!r} must be an integer")


# --- betas and alphas ------------------------------------------------------------------------


def _cosine_betas(n: int, max_beta: float = 0.999) -> np.ndarray:
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)])


def _cumprod32(a: np.ndarray) -> np.ndarray:
    # torch's float32 cumprod accumulates in float64 and rounds each entry to float32.
    return np.cumprod(a.astype(np.float64)).astype(np.float32)


def _rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    # Lin et al. 2023, Algorithm 1: shift and scale sqrt(abar) so that its last value is 0.
    # Done in float32 like diffusers: the schedule has to match it to the last bit that matters.
    abar_sqrt = np.sqrt(_cumprod32(np.float32(1) - betas))
    first, last = abar_sqrt[0], abar_sqrt[-1]
    abar_sqrt = (abar_sqrt - last) * (first / (first - last))
    abar = abar_sqrt**2
    alphas = np.concatenate([abar[:1], abar[1:] / abar[:-1]])
    return (np.float32(1) - alphas).astype(np.float32)


def betas(cfg: dict[str, Any]) -> np.ndarray:
    """float32 betas, as diffusers builds them."""
    n = cfg["num_train_timesteps"]
    if cfg.get("trained_betas") is not None:
        b = np.asarray(cfg["trained_betas"], dtype=np.float32)
    elif cfg["beta_schedule"] == "linear":
        b = np.linspace(cfg["beta_start"], cfg["beta_end"], n, dtype=np.float32)
    elif cfg["beta_schedule"] == "scaled_linear":
        b = np.linspace(cfg["beta_start"] ** 0.5, cfg["beta_end"] ** 0.5, n, dtype=np.float32) ** 2
    else:
        b = _cosine_betas(n).astype(np.float32)
    if cfg.get("rescale_betas_zero_snr"):
        b = _rescale_zero_terminal_snr(b)
    return b


def alphas_cumprod(cfg: dict[str, Any], family: str = "euler") -> np.ndarray:
    """Cumulative alphas of the training schedule, as float64 copies of diffusers' float32 ones.

    diffusers keeps them in float32; 1 - alphas_cumprod[0] (~1e-4) then carries a relative
    rounding error of ~1e-3 that shows in sigma_min and every schedule built on it, so the
    float32 rounding is part of the schedule.
    """
    ac = _cumprod32(np.float32(1) - betas(cfg))
    if cfg.get("rescale_betas_zero_snr") and family in _ZSNR_FLOOR:
        ac[-1] = 2.0**-24
    return ac.astype(np.float64)


def _sigmas_from_ac(ac: np.ndarray) -> np.ndarray:
    # diffusers computes these in float32 from the float32 alphas_cumprod.
    ac32 = ac.astype(np.float32)
    with np.errstate(divide="ignore"):
        sig = np.sqrt((np.float32(1) - ac32) / np.maximum(ac32, np.float32(_VE_FLOOR)))
    return sig.astype(np.float64)


# --- sigma schedules -------------------------------------------------------------------------


def log_train_sigmas(ac: np.ndarray) -> np.ndarray:
    """log of the training sigmas, taken in float32 as diffusers does (``np.log`` of a float32
    array): the rounding moves ``sigma_to_t`` by ~1e-7, enough to flip an int64 truncation."""
    return np.log(_sigmas_from_ac(ac).astype(np.float32)).astype(np.float64)


def sigma_to_t(sigma: np.ndarray | float, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional training timestep of each sigma, by linear interpolation in log sigma."""
    sigma = np.asarray(sigma, dtype=np.float64)
    log_sigma = np.log(np.maximum(sigma, 1e-10)).reshape(-1)
    dists = log_sigma[None, :] - log_sigmas[:, None]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=len(log_sigmas) - 2)
    lo, hi = log_sigmas[low], log_sigmas[low + 1]
    w = np.clip((lo - log_sigma) / (lo - hi), 0, 1)
    return ((1 - w) * low + w * (low + 1)).reshape(sigma.shape)


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    ramp = np.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def exponential_sigmas(sigma_min: float, sigma_max: float, n: int) -> np.ndarray:
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n))


def _betacf(a: float, b: float, x: np.ndarray) -> np.ndarray:
    # Lentz's continued fraction for the incomplete beta function (Numerical Recipes 6.4).
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = np.ones_like(x)
    d = 1.0 - qab * x / qap
    d = 1.0 / np.where(np.abs(d) < tiny, tiny, d)
    h = d.copy()
    for m in range(1, 300):
        m2 = 2 * m
        for aa in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ):
            d = 1.0 + aa * d
            d = 1.0 / np.where(np.abs(d) < tiny, tiny, d)
            c = 1.0 + aa / c
            c = np.where(np.abs(c) < tiny, tiny, c)
            h = h * d * c
        if np.all(np.abs(d * c - 1.0) < 4e-16):  # float64 resolution
            break
    return h


def _betainc(a: float, b: float, x: np.ndarray) -> np.ndarray:
    """Regularized incomplete beta I_x(a, b) for x in [0, 1]."""
    x = np.clip(x, 0.0, 1.0)
    inner = (x > 0) & (x < 1)
    xs = np.where(inner, x, 0.5)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * np.log(xs) + b * np.log1p(-xs)
    front = np.exp(log_front)
    # The continued fraction converges fast only below (a+1)/(a+b+2); use the symmetry
    # I_x(a, b) = 1 - I_{1-x}(b, a) above it, evaluating each branch only where it is used.
    direct = xs < (a + 1) / (a + b + 2)
    val = np.empty_like(xs)
    val[direct] = front[direct] * _betacf(a, b, xs[direct]) / a
    val[~direct] = 1.0 - front[~direct] * _betacf(b, a, 1.0 - xs[~direct]) / b
    return np.where(inner, val, x)


def _beta_ppf(q: np.ndarray, a: float, b: float) -> np.ndarray:
    # scipy.stats.beta.ppf without scipy: bisection on the monotone CDF to float64 resolution.
    lo, hi = np.zeros_like(q), np.ones_like(q)
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        below = _betainc(a, b, mid) < q
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return np.where(q <= 0, 0.0, np.where(q >= 1, 1.0, 0.5 * (lo + hi)))


def beta_sigmas(
    sigma_min: float, sigma_max: float, n: int, alpha: float = 0.6, beta: float = 0.6
) -> np.ndarray:
    """The "Beta Sampling is All You Need" schedule (diffusers' ``use_beta_sigmas``)."""
    ppf = _beta_ppf(1 - np.linspace(0, 1, n), alpha, beta)
    return sigma_min + ppf * (sigma_max - sigma_min)


def _convert(cfg: dict[str, Any], in_max: float, in_min: float, n: int) -> np.ndarray | None:
    """Karras / exponential / beta sigmas, or None for the default interpolated schedule."""
    # Only classes with sigma_min/sigma_max config keys (Euler, UniPC) let them override.
    smin = cfg.get("sigma_min") if cfg.get("sigma_min") is not None else in_min
    smax = cfg.get("sigma_max") if cfg.get("sigma_max") is not None else in_max
    if cfg.get("use_karras_sigmas"):
        return karras_sigmas(smin, smax, n)
    if cfg.get("use_exponential_sigmas"):
        return exponential_sigmas(smin, smax, n)
    if cfg.get("use_beta_sigmas"):
        return beta_sigmas(smin, smax, n)
    return None


# --- timestep spacing ------------------------------------------------------------------------


def _spacing_sigma_family(cfg: dict[str, Any], n: int) -> np.ndarray:
    # Euler, Heun, KDPM2, LMS: float32 timesteps, fractional for linspace.
    N, kind = cfg["num_train_timesteps"], cfg["timestep_spacing"]
    if kind == "linspace":
        t = np.linspace(0, N - 1, n, dtype=np.float32)[::-1]
    elif kind == "leading":
        t = (np.arange(0, n) * (N // n)).round()[::-1].astype(np.float32) + cfg["steps_offset"]
    else:
        t = np.arange(N, 0, -N / n).round().astype(np.float32) - 1
    return t.astype(np.float64)


def _spacing_vp_single(cfg: dict[str, Any], n: int) -> np.ndarray:
    # DDIM: integer timesteps, n points.
    N, kind = cfg["num_train_timesteps"], cfg["timestep_spacing"]
    if kind == "linspace":
        return np.linspace(0, N - 1, n).round()[::-1].astype(np.int64)
    if kind == "leading":
        return (np.arange(0, n) * (N // n)).round()[::-1].astype(np.int64) + cfg["steps_offset"]
    return np.round(np.arange(N, 0, -N / n)).astype(np.int64) - 1


def _spacing_multistep(cfg: dict[str, Any], n: int, last: int) -> np.ndarray:
    # DPM-Solver / UniPC / DEIS: n + 1 points with the last dropped.
    N, kind = cfg["num_train_timesteps"], cfg["timestep_spacing"]
    if kind == "linspace":
        return np.linspace(0, last - 1, n + 1).round()[::-1][:-1].astype(np.int64)
    if kind == "leading":
        return (np.arange(0, n + 1) * (last // (n + 1))).round()[::-1][:-1].astype(np.int64) + cfg[
            "steps_offset"
        ]
    return np.arange(last, 0, -N / n).round().astype(np.int64) - 1


def _lambda_clipped_last(cfg: dict[str, Any], ac: np.ndarray) -> int:
    # diffusers: searchsorted(flip(lambda_t), lambda_min_clipped) on float32 lambdas.
    lam = (np.log(np.sqrt(ac)) - np.log(np.sqrt(1 - ac))).astype(np.float32)
    idx = int(np.searchsorted(lam[::-1], np.float32(cfg["lambda_min_clipped"]), side="left"))
    return idx


# --- per-family schedules --------------------------------------------------------------------


def _sigma_family(cfg: dict[str, Any], n: int, family: str, ac: np.ndarray) -> BaseSchedule:
    train_sigmas = _sigmas_from_ac(ac)
    log_sigmas = log_train_sigmas(ac)
    t = _spacing_sigma_family(cfg, n)
    if cfg.get("interpolation_type", "linear") == "log_linear":
        # diffusers ignores the timesteps here and spaces n + 1 sigmas evenly in log sigma;
        # only the first n + 1 of its n + 2 entries are ever used.
        sig = np.exp(np.linspace(log_sigmas[-1], log_sigmas[0], n + 1))
        return BaseSchedule(timesteps=t, sigmas=sig, alphas_cumprod=ac)
    sig = np.interp(t, np.arange(len(train_sigmas)), train_sigmas)
    conv = _convert(cfg, sig[0], sig[-1], n)
    if conv is not None:
        sig = conv
        t = sigma_to_t(sig, log_sigmas)
        if family in ("kdpm2", "kdpm2_a") and cfg.get("use_karras_sigmas"):
            t = t.round()
    last = train_sigmas[0] if cfg.get("final_sigmas_type") == "sigma_min" else 0.0
    if cfg.get("timestep_type") == "continuous" and cfg["prediction_type"] == "v_prediction":
        t = 0.25 * np.log(sig.astype(np.float32).astype(np.float64))
    return BaseSchedule(timesteps=t, sigmas=np.append(sig, last), alphas_cumprod=ac)


def _final_alpha(cfg: dict[str, Any], ac: np.ndarray) -> float:
    return 1.0 if cfg.get("set_alpha_to_one") else float(ac[0])


def _ddim(cfg: dict[str, Any], n: int, ac: np.ndarray) -> BaseSchedule:
    t = _spacing_vp_single(cfg, n)
    sig = _sigmas_from_ac(ac)
    final = _final_alpha(cfg, ac)
    return BaseSchedule(
        timesteps=t, sigmas=np.append(sig[t], math.sqrt((1 - final) / final)), alphas_cumprod=ac
    )


def _pndm_timesteps(cfg: dict[str, Any], n: int) -> np.ndarray:
    """PNDM's ascending ``_timesteps`` (before its PLMS duplication)."""
    N, kind = cfg["num_train_timesteps"], cfg["timestep_spacing"]
    if kind == "linspace":
        return np.linspace(0, N - 1, n).round().astype(np.int64)
    if kind == "leading":
        return (np.arange(0, n) * (N // n)).round().astype(np.int64) + cfg["steps_offset"]
    return np.round(np.arange(N, 0, -N / n))[::-1].astype(np.int64) - 1


def _pndm(cfg: dict[str, Any], n: int, ac: np.ndarray) -> BaseSchedule:
    asc = _pndm_timesteps(cfg, n)
    if cfg.get("skip_prk_steps", True):
        # PLMS: n + 1 model calls; the second call repeats the second timestep and corrects the
        # first step (a 2nd-order start), so every call is a "step" here.
        t = np.concatenate([asc[:-1], asc[-2:-1], asc[-1:]])[::-1]
    else:
        # Runge-Kutta warm-up over the 4 largest timesteps (4 calls each for 3 steps), then PLMS.
        if n < 4:
            raise ValueError(
                f"steps must be >= 4 with skip_prk_steps=False (PNDM's Runge-Kutta warm-up), got {n}"
            )
        half = cfg["num_train_timesteps"] // n // 2
        prk = np.asarray(asc[-4:]).repeat(2) + np.tile(np.array([0, half]), 4)
        t = np.concatenate([prk[:-1].repeat(2)[1:-1][::-1], asc[:-3][::-1]])
    t = t.astype(np.int64)
    sig = _sigmas_from_ac(ac)
    final = _final_alpha(cfg, ac)
    return BaseSchedule(
        timesteps=t, sigmas=np.append(sig[t], math.sqrt((1 - final) / final)), alphas_cumprod=ac
    )


def lcm_timesteps(cfg: dict[str, Any], n: int) -> np.ndarray:
    N, orig = cfg["num_train_timesteps"], cfg["original_inference_steps"]
    if n > orig:
        raise ValueError(f"steps={n} cannot exceed original_inference_steps={orig} for lcm")
    origin = (np.arange(1, orig + 1) * (N // orig) - 1)[::-1]
    idx = np.floor(np.linspace(0, len(origin), num=n, endpoint=False)).astype(np.int64)
    return origin[idx].astype(np.int64)


def _lcm(cfg: dict[str, Any], n: int, ac: np.ndarray) -> BaseSchedule:
    t = lcm_timesteps(cfg, n)
    sig = _sigmas_from_ac(ac)
    return BaseSchedule(timesteps=t, sigmas=np.append(sig[t], 0.0), alphas_cumprod=ac)


def _multistep(cfg: dict[str, Any], n: int, family: str, ac: np.ndarray) -> BaseSchedule:
    N = cfg["num_train_timesteps"]
    train_sigmas = _sigmas_from_ac(ac)
    log_sigmas = log_train_sigmas(ac)
    if family == "dpm_singlestep":
        clipped = _lambda_clipped_last(cfg, ac)
        t = np.linspace(0, N - 1 - clipped, n + 1).round()[::-1][:-1].astype(np.int64)
    elif family == "dpm_multistep":
        t = _spacing_multistep(cfg, n, N - _lambda_clipped_last(cfg, ac))
    else:
        t = _spacing_multistep(cfg, n, N)
    sigma_min_last = train_sigmas[0]
    conv = _convert(cfg, train_sigmas[-1], train_sigmas[0], n)
    if family == "dpm_multistep" and cfg.get("use_lu_lambdas"):
        # "Lu lambdas" are evenly spaced log sigmas over the training range.
        conv = np.exp(np.linspace(log_sigmas[-1], log_sigmas[0], n))
    if conv is not None:
        sig = conv
        tf = sigma_to_t(sig, log_sigmas)
        karras_like = cfg.get("use_karras_sigmas") or cfg.get("use_lu_lambdas")
        if karras_like and (family != "dpm_multistep" or cfg["beta_schedule"] != "squaredcos_cap_v2"):
            tf = tf.round()
        t = tf.astype(np.int64)  # diffusers casts to int64: truncation
        if family in ("unipc", "deis"):
            sigma_min_last = sig[-1]
    else:
        sig = np.interp(t, np.arange(len(train_sigmas)), train_sigmas)
    if family == "deis":
        last = sigma_min_last
    else:
        last = sigma_min_last if cfg.get("final_sigmas_type") == "sigma_min" else 0.0
    return BaseSchedule(timesteps=t, sigmas=np.append(sig, last), alphas_cumprod=ac)


def make_base_schedule(cfg: dict[str, Any], n: int, family: str) -> BaseSchedule:
    """Timesteps and sigmas for ``n`` steps as diffusers' class for ``family`` sets them."""
    if family not in FAMILIES:
        raise ValueError(f"unknown schedule family {family!r}; allowed: {', '.join(FAMILIES)}")
    ac = alphas_cumprod(cfg, family)
    if family in ("euler", "euler_a", "heun", "kdpm2", "kdpm2_a", "lms"):
        return _float32_sigmas(_sigma_family(cfg, n, family, ac))
    if family == "ddim":
        return _ddim(cfg, n, ac)
    if family == "pndm":
        return _pndm(cfg, n, ac)
    if family == "lcm":
        return _lcm(cfg, n, ac)
    return _float32_sigmas(_multistep(cfg, n, family, ac))


def _float32_sigmas(base: BaseSchedule) -> BaseSchedule:
    # diffusers stores these classes' sigmas as float32 and steps with them; differences of
    # float32 sigmas are exact in float64, so rounding here reproduces its steps bit for bit
    # where the float32 math cancels badly (a zero-SNR first sigma of 4096).
    return BaseSchedule(
        base.timesteps, base.sigmas.astype(np.float32).astype(np.float64), base.alphas_cumprod
    )
