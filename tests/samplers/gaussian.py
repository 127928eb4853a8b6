"""Data from a Gaussian: the one case where the ideal U-Net and the sampler's exact answer are known.

With x0 ~ N(mu, s^2) per dimension and k-diffusion's VE variable y = x_t / alpha_t = x0 + k * eps
(k = sigma_t / alpha_t), the ideal denoiser is E[x0 | y] = mu + s^2 / (s^2 + k^2) * (y - mu), so
the ideal noise prediction is (y - E[x0 | y]) / k, and the probability-flow ODE
dy/dk = (y - E[x0 | y]) / k = (y - mu) * k / (s^2 + k^2) has the solution
y(k) - mu = (y(k0) - mu) * sqrt(s^2 + k^2) / sqrt(s^2 + k0^2).
The marginal of y at k is N(mu, s^2 + k^2), which the stochastic samplers should reproduce.

Used by ``test_accuracy.py`` (measured convergence orders) and ``benchmarks/samplers_accuracy.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# SD 1.5's training schedule with "leading" spacing for every class: with it each step lands
# exactly on the next call's timestep (DDIM's t - 1000 // N rule included), so the sigma of every
# state is known from ``timesteps`` alone.  Unknown keys are ignored by every class.
STUDY_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "timestep_spacing": "leading",
    "steps_offset": 1,
    "set_alpha_to_one": False,
    "clip_sample": False,  # DDIM/LCM default to clipping x0 to [-1, 1]: not an ODE solver then
}
TARGET_T = 200.0
STEPS = (20, 40, 80)
# Model calls per completed step where a step makes more than one (the states in between are
# lower-order intermediates, not steps).
CALLS_PER_STEP = {"heun": 2, "dpm2": 2, "dpm2_a": 2, "dpmpp_2s": 2}


def train_sigmas(config: dict[str, Any] = STUDY_CONFIG) -> np.ndarray:
    """k = sqrt((1 - abar) / abar) at every training timestep (float64, scaled_linear betas)."""
    n = config["num_train_timesteps"]
    betas = np.linspace(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, n) ** 2
    abar = np.cumprod(1.0 - betas)
    return np.sqrt((1.0 - abar) / abar)


@dataclass(frozen=True)
class Gaussian:
    mu: np.ndarray  # per-dimension mean of the data
    s: np.ndarray  # per-dimension standard deviation of the data

    @classmethod
    def make(cls, dims: int = 16, seed: int = 0) -> Gaussian:
        """Unit-scale data, like SD's latents (the VAE scaling factor is chosen for unit variance)."""
        rng = np.random.default_rng(seed)
        return cls(mu=rng.uniform(-1.0, 1.0, dims), s=rng.uniform(0.8, 1.2, dims))

    def denoise(self, y: np.ndarray, k: float) -> np.ndarray:
        return self.mu + self.s**2 / (self.s**2 + k * k) * (y - self.mu)

    def eps(self, x_t: np.ndarray, k: float) -> np.ndarray:
        """The ideal epsilon-prediction U-Net, given its VP input x_t = y / sqrt(1 + k^2)."""
        y = x_t * np.sqrt(1.0 + k * k)
        return (y - self.denoise(y, k)) / k

    def flow(self, y0: np.ndarray, k0: float, k: float) -> np.ndarray:
        """The exact probability-flow ODE solution at ``k`` from ``y0`` at ``k0``."""
        return self.mu + (y0 - self.mu) * np.sqrt((self.s**2 + k * k) / (self.s**2 + k0 * k0))


def sigma_at(t: float, sigmas: np.ndarray) -> float:
    """k at a (possibly fractional) training timestep, interpolated linearly in t as diffusers does."""
    return float(np.interp(t, np.arange(len(sigmas)), sigmas))


@dataclass
class Landing:
    t: float  # timestep of the measured state
    k: float  # its VE sigma
    y: np.ndarray  # the sampler's state there, as y = x0 + k * eps
    y_exact: np.ndarray | None  # the exact ODE solution there (deterministic samplers)


def run_gaussian(
    name: str,
    steps: int,
    gauss: Gaussian,
    batch: int = 1,
    seed: int = 0,
    target_t: float = TARGET_T,
    overrides: dict[str, Any] | None = None,
) -> Landing:
    """Sample ``batch`` x dims values with ``name`` and the ideal model; stop at the completed
    state nearest ``target_t`` (never the final step: see the issue on why it hides the order)."""
    from sdlite.samplers import make_scheduler

    sched = make_scheduler(name, STUDY_CONFIG, **(overrides or {}))
    sched.set_timesteps(steps)
    ts = np.asarray(sched.timesteps, dtype=np.float64)
    sig = train_sigmas()
    per = CALLS_PER_STEP.get(name, 1)
    # States after call c (c + 1 a multiple of ``per``) sit at the next call's timestep.
    ends = [c for c in range(len(ts) - 1) if (c + 1) % per == 0]
    stop = min(ends, key=lambda c: abs(ts[c + 1] - target_t))
    rng = np.random.default_rng(seed)
    shape = (batch, len(gauss.mu))
    x = rng.standard_normal(shape) * sched.init_noise_sigma
    vp = sched.init_noise_sigma == 1.0  # diffusers' VP classes start from unit noise, VE from k_max
    k0 = sigma_at(ts[0], sig)
    y0 = x * np.sqrt(1 + k0 * k0) if vp else x
    for c in range(stop + 1):
        t = ts[c]
        k = sigma_at(t, sig)
        x_in = sched.scale_model_input(x, t)
        x = sched.step(gauss.eps(x_in, k), t, x, generator=rng)
    t_end = float(ts[stop + 1])
    k_end = sigma_at(t_end, sig)
    y = x * np.sqrt(1 + k_end * k_end) if vp else x
    return Landing(t_end, k_end, y, gauss.flow(y0, k0, k_end))


def global_error(landing: Landing) -> float:
    """RMS distance to the exact ODE solution, in data units (y space)."""
    assert landing.y_exact is not None
    return float(np.sqrt(np.mean((landing.y - landing.y_exact) ** 2)))


def fitted_order(steps: Sequence[int], errors: Sequence[float]) -> float:
    """p in error ~ C * N^-p, by least squares on the log-log points."""
    slope = np.polyfit(np.log(np.asarray(steps, float)), np.log(np.asarray(errors, float)), 1)[0]
    return float(-slope)
