"""The contract between the stateful facade (``Scheduler``) and the sampler functions.

Samplers are written the way k-diffusion's ``sampling.py`` writes them: one short loop over a
sigma array, in k-diffusion's "VE" space (``x = x0 + sigma * eps``), with shared helpers.  The
one difference is that the denoiser is not a callable: each sampler is a *generator* that
yields the sample it has just produced and receives, for every model call, the pair
``(x, denoised)``.  That turns the loop into diffusers' ``step()`` one model call at a time
without any state outside the generator's locals, and it lets the caller change the sample
between calls (inpainting re-noises the known region after every step, as diffusers does).

Shape of every sampler::

    def sample_euler(sigmas, noise_sampler, **options):
        x, denoised = yield                     # the model's answer at sigmas[0]
        for i in range(len(sigmas) - 1):
            d = to_d(x, sigmas[i], denoised)
            x = x + d * (sigmas[i + 1] - sigmas[i])
            x, denoised = yield x               # hand back x, get the answer at the next call

Rules:
- ``sigmas`` is the float64 step schedule (``len = steps + 1``, last entry the final sigma,
  zero or sigma_min).  A sampler that calls the model more than once per step (Heun, DPM2)
  yields its intermediate samples too; its ``SamplerSpec.plan`` lists the extra calls so that
  ``Scheduler.timesteps`` is known before the loop runs.
- After model call ``k`` the facade sends ``(x, denoised)``: ``x`` is the current sample in VE
  space (the one the model was evaluated at, possibly edited by the caller) and ``denoised`` the
  data prediction.  The generator yields the VE sample at the next call's sigma, exactly once
  per call; the facade stops after the last call and never asks for more.  ``denoised`` is a
  fresh array the generator owns; ``x`` (and a given noise array) may be the caller's, never
  modified in place.
- Options reach the generator as keyword arguments, the ones its signature names.  A sampler
  that takes ``clip`` gets the config's clipping/thresholding (or None) and the unclipped data
  prediction, for the classes whose step uses both (DDIM, UniPC); every other sampler receives
  the data prediction already clipped.
- ``noise_sampler(sigma, sigma_next)`` returns the standard-normal draw for the current step
  (``step(noise=...)`` or the caller's ``numpy.random.Generator``).  Call it at most once per
  model call and only when the step is stochastic, so that tests can feed diffusers' draws.
- Schedule math in float64; the sample keeps the caller's dtype.  Scalars in the array
  arithmetic are Python floats, never numpy float64 scalars: numpy casts a Python float to the
  array's dtype, while a float64 scalar makes the pass float64.
- At a zero final sigma return the data prediction (never divide by sigma = 0).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

NoiseSampler = Callable[[float, float], np.ndarray]
SamplerGen = Generator[np.ndarray | None, tuple[np.ndarray, np.ndarray], None]


@dataclass(frozen=True)
class BaseSchedule:
    """What the shared schedule code computes from the config for ``n`` steps."""

    timesteps: np.ndarray  # float64 [n], training-time t of each step, in order
    sigmas: np.ndarray  # float64 [n + 1], VE sigma of each step plus the final one
    alphas_cumprod: np.ndarray  # float64 [num_train_timesteps]


@dataclass(frozen=True)
class Plan:
    """One entry per model call: what the U-Net is called with and at which sigma."""

    timesteps: np.ndarray  # [calls], int64 for VP samplers, float64 for sigma samplers
    sigmas: np.ndarray  # float64 [calls + 1]: sigma of each call, then the final sigma
    # Extra keyword arguments for the generator.  An ndarray with one entry per call is sliced
    # together with the schedule when sampling starts mid-way (img2img); anything else is
    # passed unchanged.
    extra: dict[str, Any] = field(default_factory=dict)
    # Index of the first call of each step (the generator's ``sigmas`` are per step); None: one
    # call per step.  Sampling may only start mid-way at one of these calls.
    step_calls: np.ndarray | None = None


@dataclass(frozen=True)
class SamplerSpec:
    """How one sampler name plugs into the facade."""

    name: str
    description: str
    # "vp": the public sample is diffusers' DDPM-style x_t = sqrt(abar) x0 + sqrt(1-abar) eps
    # (DDIM, DPM-Solver, UniPC, DEIS, PNDM, LCM); "ve": x = x0 + sigma eps with
    # scale_model_input dividing by sqrt(sigma^2 + 1) (Euler, Heun, DPM2, LMS).
    space: Literal["vp", "ve"]
    sample: Callable[..., SamplerGen]  # the generator function
    defaults: dict[str, Any] = field(default_factory=dict)  # sampler options and their defaults
    plan: Callable[[BaseSchedule, dict[str, Any]], Plan] | None = None  # None: one call per step
    # Whether step() draws noise: a bool, or a function of the complete option dict for samplers
    # whose options decide it (DDIM's eta, Euler's s_churn, the SDE DPM-Solvers).
    stochastic: bool | Callable[[dict[str, Any]], bool] = False
    # The diffusers class whose config keys, defaults and schedule this sampler follows (a key of
    # ``config.FAMILIES``); None: looked up from the name by the facade.
    family: str | None = None
    order: int = 1  # diffusers' ``scheduler.order`` (model calls per step, for img2img slicing)


def to_d(x: np.ndarray, sigma: float, denoised: np.ndarray) -> np.ndarray:
    """The probability-flow ODE derivative dx/dsigma (k-diffusion's ``to_d``)."""
    d = x - denoised
    d /= x.dtype.type(sigma)  # in place on the fresh array: one allocation per call
    return d


class Scratch:
    """One latent-sized temporary that a sampler keeps across its steps (a generator local).

    ``out += arr * c`` written plainly allocates the product afresh at every step; measured on a
    (2, 4, 64, 64) float32 latent, that costs ~2 us more than writing it into a reused buffer,
    a tenth of a cheap step.  Results are bitwise those of the plain expression.
    """

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf: np.ndarray | None = None

    def add_scaled(self, out: np.ndarray, arr: np.ndarray, c: float) -> np.ndarray:
        """``out += arr * c`` in ``out``'s dtype; returns ``out``."""
        buf = self.buf
        if buf is None or buf.shape != out.shape or buf.dtype != out.dtype:
            buf = self.buf = np.empty_like(out)
        # A Python float is cast to the arrays' dtype by numpy itself; anything else (a numpy
        # float64) would make the product a float64 pass, so it is converted first.
        np.multiply(arr, c if type(c) is float else out.dtype.type(c), buf)
        out += buf
        return out


def get_ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """Split a step into a deterministic part down to ``sigma_down`` and fresh noise ``sigma_up``."""
    if not eta or sigma_to == 0:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up

