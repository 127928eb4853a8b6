"""The training noise schedule: betas, alphas_cumprod and the VE sigmas they give.

Numbers follow diffusers to the float32 rounding it applies: betas and alphas_cumprod are float32
(1 - alphas_cumprod[0] ~ 1e-4 carries a ~1e-3 relative rounding error that moves sigma_min), and
``log_sigmas`` for ``sigma_to_t`` are float32 logs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# Families whose diffusers class floors the last alphas_cumprod at 2**-24 under zero-SNR rescaling.
_ZSNR_FLOOR = {"euler", "euler_a", "dpm_multistep", "unipc"}
# VP families that keep alphas_cumprod[-1] = 0: the facade's VE view needs a finite sigma there.
# 1e-20 gives sigma = 1e10, still far inside float32, and the data prediction no longer sees it.
_VE_FLOOR = 1e-20


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


def train_sigmas(ac: np.ndarray) -> np.ndarray:
    """VE sigma of each training timestep, sqrt((1 - abar) / abar), computed in float32 as
    diffusers does from its float32 alphas_cumprod."""
    ac32 = ac.astype(np.float32)
    with np.errstate(divide="ignore"):
        sig = np.sqrt((np.float32(1) - ac32) / np.maximum(ac32, np.float32(_VE_FLOOR)))
    return sig.astype(np.float64)


def log_train_sigmas(ac: np.ndarray) -> np.ndarray:
    """log of the training sigmas, taken in float32 as diffusers does (``np.log`` of a float32
    array): the rounding moves ``sigma_to_t`` by ~1e-7, enough to flip an int64 truncation."""
    return np.log(train_sigmas(ac).astype(np.float32)).astype(np.float64)


def sigma_to_t(sigma: np.ndarray | float, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional training timestep of each sigma, by linear interpolation in log sigma."""
    sigma = np.asarray(sigma, dtype=np.float64)
    log_sigma = np.log(np.maximum(sigma, 1e-10)).reshape(-1)
    dists = log_sigma[None, :] - log_sigmas[:, None]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=len(log_sigmas) - 2)
    lo, hi = log_sigmas[low], log_sigmas[low + 1]
    w = np.clip((lo - log_sigma) / (lo - hi), 0, 1)
    return ((1 - w) * low + w * (low + 1)).reshape(sigma.shape)
