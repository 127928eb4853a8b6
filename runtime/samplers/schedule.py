"""Timesteps and step sigmas, exactly as diffusers computes them for each scheduler class ("family").

diffusers' scheduler classes share most of their schedule code but differ in details that change
the numbers: how ``timestep_spacing`` is turned into timesteps (DPM-Solver/UniPC/DEIS space
``n + 1`` points and drop the last, DDIM/PNDM/LCM round to integers, the sigma samplers keep
float32 fractions), whether Karras timesteps are rounded, what the final sigma is.  Each family
below reproduces one class; the training schedule is in ``training.py``, the Karras-type sigmas
in ``sigma_schedules.py``, the config keys in ``config.py``.

The sigma and multistep families round their sigmas to float32, the values diffusers steps with.
``pndm`` lists every model call as a step (PLMS repeats its second timestep; with
``skip_prk_steps=False`` the 12 Runge-Kutta calls come first).  The multistep families are
``dpm_multistep`` (DPMSolverMultistepScheduler), ``dpm_singlestep``, ``unipc`` and ``deis``; their
``BaseSchedule.sigmas`` end with the final sigma diffusers uses (zero, ``sigma_min`` or, for
DEIS/UniPC with Karras-type sigmas, a repeat of the last sigma).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .base import BaseSchedule
from .config import FAMILIES
from .sigma_schedules import converted_sigmas
from .training import alphas_cumprod, log_train_sigmas, sigma_to_t, train_sigmas

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
    train_sig = train_sigmas(ac)
    log_sigmas = log_train_sigmas(ac)
    t = _spacing_sigma_family(cfg, n)
    if cfg.get("interpolation_type", "linear") == "log_linear":
        # diffusers ignores the timesteps here and spaces n + 1 sigmas evenly in log sigma;
        # only the first n + 1 of its n + 2 entries are ever used.
        sig = np.exp(np.linspace(log_sigmas[-1], log_sigmas[0], n + 1))
        return BaseSchedule(timesteps=t, sigmas=sig, alphas_cumprod=ac)
    sig = np.interp(t, np.arange(len(train_sig)), train_sig)
    conv = converted_sigmas(cfg, sig[0], sig[-1], n)
    if conv is not None:
        sig = conv
        t = sigma_to_t(sig, log_sigmas)
        if family in ("kdpm2", "kdpm2_a") and cfg.get("use_karras_sigmas"):
            t = t.round()
    last = train_sig[0] if cfg.get("final_sigmas_type") == "sigma_min" else 0.0
    if cfg.get("timestep_type") == "continuous" and cfg["prediction_type"] == "v_prediction":
        t = 0.25 * np.log(sig.astype(np.float32).astype(np.float64))
    return BaseSchedule(timesteps=t, sigmas=np.append(sig, last), alphas_cumprod=ac)


def _final_alpha(cfg: dict[str, Any], ac: np.ndarray) -> float:
    return 1.0 if cfg.get("set_alpha_to_one") else float(ac[0])


def _ddim(cfg: dict[str, Any], n: int, ac: np.ndarray) -> BaseSchedule:
    t = _spacing_vp_single(cfg, n)
    sig = train_sigmas(ac)
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
    sig = train_sigmas(ac)
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
    sig = train_sigmas(ac)
    return BaseSchedule(timesteps=t, sigmas=np.append(sig[t], 0.0), alphas_cumprod=ac)


def _multistep(cfg: dict[str, Any], n: int, family: str, ac: np.ndarray) -> BaseSchedule:
    N = cfg["num_train_timesteps"]
    train_sig = train_sigmas(ac)
    log_sigmas = log_train_sigmas(ac)
    if family == "dpm_singlestep":
        clipped = _lambda_clipped_last(cfg, ac)
        t = np.linspace(0, N - 1 - clipped, n + 1).round()[::-1][:-1].astype(np.int64)
    elif family == "dpm_multistep":
        t = _spacing_multistep(cfg, n, N - _lambda_clipped_last(cfg, ac))
    else:
        t = _spacing_multistep(cfg, n, N)
    sigma_min_last = train_sig[0]
    conv = converted_sigmas(cfg, train_sig[-1], train_sig[0], n)
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
        sig = np.interp(t, np.arange(len(train_sig)), train_sig)
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
