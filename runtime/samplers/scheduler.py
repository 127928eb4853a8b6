"""``Scheduler``: diffusers' stateful ``set_timesteps`` / ``scale_model_input`` / ``step`` on top
of a sampler generator (see ``base.py`` for the protocol).

The public sample follows diffusers' convention for the sampler's class (VP for DDIM, PNDM, LCM
and the multistep solvers, VE for Euler, Heun, DPM2, LMS), so a diffusers-style denoising loop
runs unchanged.  Inside, every sampler sees VE samples and data predictions: ``step`` converts
the caller's sample and model output into that pair and the generator's answer back.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import numpy as np

from .base import BaseSchedule, Plan, SamplerGen, SamplerSpec
from .plan_cache import cached_plan
from .training import alphas_cumprod, train_sigmas

# VP families whose diffusers ``add_noise`` indexes alphas_cumprod by the timestep itself (the
# multistep solvers use the sigma of the schedule entry instead).
_ADD_NOISE_BY_T = {"ddim", "pndm", "lcm"}


def _as_float(t: Any) -> float:
    try:
        return float(t)
    except (TypeError, ValueError):
        pass
    try:
        return float(np.asarray(t, dtype=np.float64).reshape(()))
    except (TypeError, ValueError) as err:
        raise ValueError(f"timestep must be a scalar number, got {t!r}") from err


def _same_t(a: float, b: float) -> bool:
    # Timesteps may come back through float32 (an ONNX input): compare with a small tolerance.
    return abs(a - b) <= 1e-4 + 1e-6 * abs(b)


def threshold_sample(x0: np.ndarray, ratio: float, max_value: float) -> np.ndarray:
    """Dynamic thresholding (Imagen): clip each sample to its ``ratio`` quantile of |x0|."""
    flat = np.abs(x0.reshape(x0.shape[0], -1))
    s = np.quantile(flat, ratio, axis=1)
    s = np.clip(s, 1.0, max_value).astype(x0.dtype).reshape((-1,) + (1,) * (x0.ndim - 1))
    return np.clip(x0, -s, s) / s


def denoised_from(model_output: np.ndarray, x: np.ndarray, sigma: float, prediction_type: str) -> np.ndarray:
    """The data prediction from the model output at the VE sample ``x`` and VE ``sigma``: always a
    fresh array, which the sampler may keep or change in place."""
    if prediction_type == "epsilon":
        den = model_output * sigma
        return np.subtract(x, den, out=den)
    if prediction_type == "v_prediction":
        den = x * (1.0 / (sigma * sigma + 1.0))
        den -= model_output * (sigma / math.sqrt(sigma * sigma + 1.0))
        return den
    return model_output.copy()  # "sample": not the caller's array


def _checked_arrays(
    model_output: Any, sample: Any, noise: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    sample, model_output = np.asarray(sample), np.asarray(model_output)
    shape = sample.shape
    if model_output.shape != shape:
        raise ValueError(f"model_output shape {model_output.shape} differs from sample shape {shape}")
    if sample.dtype.kind != "f":
        raise ValueError(f"sample must be a floating-point array, got dtype {sample.dtype}")
    if noise is not None:
        noise = np.asarray(noise)
        if noise.shape != shape:
            raise ValueError(f"noise must have the sample's shape {shape}, got {noise.shape}")
    return model_output.astype(sample.dtype, copy=False), sample, noise


class Scheduler:
    """A diffusers-compatible scheduler driving one sampler generator.

    Create it with ``sdlite.samplers.make_scheduler``.  ``options`` is the complete, validated
    option dict (the diffusers class's config keys plus the sampler's options).
    """

    def __init__(self, spec: SamplerSpec, family: str, options: dict[str, Any]) -> None:
        self.spec = spec
        self.family = family
        self.options = options
        self.config = options  # diffusers-style read access
        self.order = spec.order
        self.prediction_type = options.get("prediction_type", "epsilon")
        params = inspect.signature(spec.sample).parameters
        self._gen_options = {k: v for k, v in options.items() if k in params and k != "sigmas"}
        clips = bool(options.get("thresholding") or options.get("clip_sample"))
        # A sampler that takes ``clip`` clips its data prediction itself (base.py).
        if "clip" in params:
            self._gen_options["clip"] = self._clip if clips else None
        self._clip_here = clips and "clip" not in params
        self._vp = spec.space == "vp"
        self.num_inference_steps: int | None = None
        self._base: BaseSchedule | None = None
        self._plan: Plan | None = None
        self._begin_index: int | None = None
        self._default_rng: np.random.Generator | None = None
        # (noise, generator, sample) of the step() in progress, for _noise_sampler
        self._call: tuple[np.ndarray | None, np.random.Generator | None, np.ndarray] | None = None
        self._reset()

    def _clip(self, x0: np.ndarray) -> np.ndarray:
        o = self.options
        if o.get("thresholding"):
            return threshold_sample(x0, o["dynamic_thresholding_ratio"], o["sample_max_value"])
        r = o["clip_sample_range"]
        return np.clip(x0, -r, r)

    def __repr__(self) -> str:
        return f"Scheduler({self.spec.name!r}, steps={self.num_inference_steps})"

    @property
    def stochastic(self) -> bool:
        """Whether ``step`` draws noise (from ``noise=``, ``generator=`` or its own generator)."""
        st = self.spec.stochastic
        return bool(st(self.options) if callable(st) else st)

    # --- schedule -----------------------------------------------------------------------

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Compute the schedule for ``num_inference_steps`` steps and reset the sampler state."""
        n_train = self.options["num_train_timesteps"]
        n = num_inference_steps
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= n_train:
            raise ValueError(f"num_inference_steps must be an integer in 1..{n_train}, got {n!r}")
        n = int(n)
        if self.family == "lcm" and n > self.options["original_inference_steps"]:
            raise ValueError(
                f"num_inference_steps must be in 1..original_inference_steps="
                f"{self.options['original_inference_steps']} for lcm, got {n}"
            )
        base, plan = cached_plan(self.spec, self.family, self.options, n)
        self.num_inference_steps = n
        self._base, self._plan = base, plan
        self._step_calls = (
            np.asarray(plan.step_calls) if plan.step_calls is not None else np.arange(len(base.timesteps))
        )
        self._timesteps_f = np.asarray(plan.timesteps, dtype=np.float64)
        self._timesteps_list = self._timesteps_f.tolist()  # plain floats: cheap per-step lookups
        sig = np.asarray(plan.sigmas, dtype=np.float64)
        self._sigmas_list = sig.tolist()
        # sqrt(sigma^2 + 1) of each call: the VE view of a VP sample is this times the sample,
        # and a VE sample divided by it is the U-Net input.
        self._c_list = np.sqrt(1.0 + sig**2).tolist()
        self._begin_index = None
        self._reset()
        # The sampler's per-run tables (step coefficients) are computed here, with the schedule,
        # rather than inside the first step(); a run that starts elsewhere (img2img,
        # set_begin_index) starts its generator afresh.
        self._gen = self._start(0)

    def _reset(self) -> None:
        self._index: int | None = None  # the call that the next ``step`` belongs to
        self._gen: SamplerGen | None = None

    def _require_plan(self) -> Plan:
        if self._plan is None:
            raise ValueError("call set_timesteps(num_inference_steps) first")
        return self._plan

    @property
    def timesteps(self) -> np.ndarray:
        """What the U-Net is called with, in order (one entry per model call)."""
        return self._require_plan().timesteps

    @property
    def sigmas(self) -> np.ndarray:
        """VE sigma of each model call, then the final sigma (float64)."""
        return self._require_plan().sigmas

    @property
    def init_noise_sigma(self) -> float:
        """Standard deviation of the initial noise, as diffusers defines it for the class."""
        if self._vp:
            return 1.0
        if self._plan is not None:
            max_sigma = float(np.max(self._plan.sigmas))
        else:
            max_sigma = float(train_sigmas(alphas_cumprod(self.options, self.family)).max())
        if self.options.get("timestep_spacing") in ("linspace", "trailing"):
            return max_sigma
        return math.sqrt(max_sigma**2 + 1)

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    @property
    def step_index(self) -> int | None:
        return self._index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start at model call ``begin_index`` (diffusers' img2img: ``t_start * order``)."""
        plan = self._require_plan()
        if not 0 <= begin_index < len(plan.timesteps):
            raise ValueError(f"begin_index must be in 0..{len(plan.timesteps) - 1}, got {begin_index}")
        self._begin_index = int(begin_index)
        self._reset()

    def _find(self, t: Any) -> int:
        """Index of ``t`` in the timesteps; for a repeated t the second one (diffusers' rule)."""
        tf = _as_float(t)
        hits = np.flatnonzero(np.isclose(self._timesteps_f, tf, rtol=1e-6, atol=1e-4))
        if len(hits) == 0:
            raise ValueError(
                f"timestep {tf:g} is not in this scheduler's timesteps {self._timesteps_f.tolist()}"
            )
        return int(hits[1] if len(hits) > 1 else hits[0])

    def _current(self, t: Any) -> int:
        """The call that ``t`` belongs to; errors for a finished schedule or a wrong timestep."""
        self._require_plan()
        if self._index is None:
            self._index = self._begin_index if self._begin_index is not None else self._find(t)
            if self._index != 0:
                self._gen = None  # started at call 0 by set_timesteps
        k = self._index
        if k >= len(self._timesteps_list):
            raise ValueError("the schedule is finished; call set_timesteps() to sample again")
        tf, expected = _as_float(t), self._timesteps_list[k]
        if not _same_t(tf, expected):
            self._find(t)  # raises if t is not a timestep at all
            raise ValueError(f"timestep {tf:g} is out of order: the next timestep is {expected:g} (call {k})")
        return k

    # --- the loop -----------------------------------------------------------------------

    def scale_model_input(self, sample: np.ndarray, timestep: Any) -> np.ndarray:
        """The U-Net input: VE samples divided by sqrt(sigma^2 + 1), VP samples unchanged."""
        k = self._current(timestep)
        if self._vp:
            return sample
        return sample * sample.dtype.type(1.0 / self._c_list[k])

    def _start(self, k: int) -> SamplerGen:
        plan, base = self._plan, self._base
        assert plan is not None and base is not None
        steps = np.flatnonzero(self._step_calls == k)
        if len(steps) == 0:
            raise ValueError(
                f"cannot start {self.spec.name} at call {k}: it is the second model call of a step; "
                f"start at one of {self._step_calls.tolist()}"
            )
        n_calls = len(plan.timesteps)
        extra = {
            key: (val[k:] if isinstance(val, np.ndarray) and val.ndim == 1 and len(val) == n_calls else val)
            for key, val in plan.extra.items()
        }
        sigmas = base.sigmas[int(steps[0]) :]
        gen = self.spec.sample(sigmas, self._noise_sampler, **self._gen_options, **extra)
        next(gen)
        return gen

    def _noise_sampler(self, sigma: float, sigma_next: float) -> np.ndarray:
        noise, rng, sample = self._call  # type: ignore[misc]  # set by step(), the only caller
        dtype = sample.dtype
        if noise is not None:
            return noise.astype(dtype, copy=False)
        if rng is None:  # one unseeded generator per scheduler: creating one per step is slow
            if self._default_rng is None:
                self._default_rng = np.random.default_rng()
            rng = self._default_rng
        if dtype in (np.float32, np.float64):
            return rng.standard_normal(sample.shape, dtype=dtype)
        return rng.standard_normal(sample.shape, dtype=np.float32).astype(dtype)

    def denoised(self, model_output: np.ndarray, timestep: Any, sample: np.ndarray) -> np.ndarray:
        """The data prediction x0 at ``timestep``'s call, as ``step`` hands it to the sampler
        (before any clipping), in the caller's latent scale: what a live preview shows."""
        k = self._current(timestep)
        model_output, sample, _ = _checked_arrays(model_output, sample, None)
        x = sample * self._c_list[k] if self._vp else sample
        return denoised_from(model_output, x, self._sigmas_list[k], self.prediction_type)

    def step(
        self,
        model_output: np.ndarray,
        timestep: Any,
        sample: np.ndarray,
        noise: np.ndarray | None = None,
        generator: np.random.Generator | None = None,
    ) -> np.ndarray:
        """Advance one model call; returns the next sample in the caller's dtype."""
        k = self._current(timestep)
        model_output, sample, noise = _checked_arrays(model_output, sample, noise)
        sigma = self._sigmas_list[k]
        x = sample * self._c_list[k] if self._vp else sample
        denoised = denoised_from(model_output, x, sigma, self.prediction_type)
        if self._clip_here:
            denoised = self._clip(denoised)
        if self._gen is None:
            self._gen = self._start(k)
        self._call = (noise, generator, sample)
        try:
            out = self._gen.send((x, denoised))
        finally:
            self._call = None
        self._index = k + 1
        if self._vp:
            out = out * (1.0 / self._c_list[k + 1])
        return out.astype(sample.dtype, copy=False)

    def add_noise(self, original: np.ndarray, noise: np.ndarray, timesteps: Any) -> np.ndarray:
        """Noise clean samples to ``timesteps`` (img2img / inpainting), as diffusers does."""
        self._require_plan()
        original = np.asarray(original)
        noise = np.asarray(noise, dtype=original.dtype)
        if noise.shape != original.shape:
            raise ValueError(f"noise shape {noise.shape} differs from original shape {original.shape}")
        ts = np.atleast_1d(np.asarray(timesteps, dtype=np.float64))
        if self._begin_index is not None:
            idx = np.full(len(ts), self._index if self._index is not None else self._begin_index)
        else:
            idx = np.array([self._find(t) for t in ts])
        if self._vp and self.family in _ADD_NOISE_BY_T:
            ac = self._base.alphas_cumprod[ts.astype(np.int64)]
            a, b = np.sqrt(ac), np.sqrt(1 - ac)
        else:
            # diffusers indexes its per-step sigmas (each repeated for a step's second call), so a
            # step's extra call adds noise at the step's end sigma, not at its midpoint.
            sig = self._base.sigmas[np.searchsorted(self._step_calls, idx, side="left")]
            if self._vp:
                a, b = 1 / np.sqrt(1 + sig**2), sig / np.sqrt(1 + sig**2)
            else:
                a, b = np.ones_like(sig), sig
        shape = (-1,) + (1,) * (original.ndim - 1)
        a = a.astype(original.dtype).reshape(shape)
        b = b.astype(original.dtype).reshape(shape)
        return original * a + noise * b
