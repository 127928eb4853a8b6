"""The alternative sigma schedules diffusers offers (Karras, exponential, beta), without scipy."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. (2022): n sigmas evenly spaced in sigma^(1/rho)."""
    ramp = np.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def exponential_sigmas(sigma_min: float, sigma_max: float, n: int) -> np.ndarray:
    """n sigmas evenly spaced in log sigma."""
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


def converted_sigmas(cfg: dict[str, Any], in_max: float, in_min: float, n: int) -> np.ndarray | None:
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
