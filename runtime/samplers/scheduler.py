"""``Scheduler``: diffusers' stateful ``set_timesteps`` / ``scale_model_input`` / ``step`` on top
of a sampler generator (see ``base.py`` for the protocol).

The public sample follows diffusers' convention for the sampler's class (VP for DDIM, PNDM, LCM
and the multistep solvers, VE for Euler, Heun, DPM2, LMS), so a diffusers-style denoising loop
runs unchanged.  Inside, every sampler sees VE samples and data predictions.
"""

from __future__ import annotations

import inspect
import json
import math
from collections import OrderedDict
from typing import Any

import numpy as np

from .base import BaseSchedule, Plan, SamplerGen, SamplerSpec, to_d
from .schedule import _sigmas_from_ac, alphas_cumprod, make_base_schedule

# Keys the facade consumes; everything else in the options goes to the generator.
_FACADE_KEYS = {
    "prediction_type",
    "thresholding",
    "dynamic_thresholding_ratio",
    "sample_max_value",
    "clip_sample",
    "clip_sample_range",
}
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


# Schedules are pure functions of (sampler, options, steps) and a pipeline rebuilds its scheduler
# for every call: computing them once saves ~0.5 ms per image, a fifth of the loop's own time on
# a small model.  Cached arrays are made read-only, so a caller cannot corrupt the next schedule.
_PLAN_CACHE: OrderedDict[str, tuple[BaseSchedule, Plan]] = OrderedDict()
_PLAN_CACHE_SIZE = 32


def _freeze(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        value.flags.writeable = False
    return value


def _jsonable(value: Any) -> Any:
    # Arrays in full (trained_betas): repr() abbreviates long ones, and two would share a key.
    return value.tolist() if hasattr(value, "tolist") else repr(value)


def _cached_plan(
    spec: SamplerSpec, family: str, options: dict[str, Any], n: int
) -> tuple[BaseSchedule, Plan]:
    key = json.dumps([spec.name, family, n, options], sort_keys=True, default=_jsonable)
    hit = _PLAN_CACHE.get(key)
    if hit is not None:
        _PLAN_CACHE.move_to_end(key)
        return hit
    base = make_base_schedule(options, n, family)
    plan = spec.plan(base, options) if spec.plan else Plan(base.timesteps, base.sigmas)
    for arr in (base.timesteps, base.sigmas, base.alphas_cumprod, plan.timesteps, plan.sigmas):
        _freeze(arr)
    for val in (plan.step_calls, *plan.extra.values()):
        _freeze(val)
    _PLAN_CACHE[key] = (base, plan)
    if len(_PLAN_CACHE) > _PLAN_CACHE_SIZE:
        _PLAN_CACHE.popitem(last=False)
    return base, plan


def threshold_sample(x0: np.ndarray, ratio: float, max_value: float) -> np.ndarray:
    """Dynamic thresholding (Imagen): clip each sample to its ``ratio`` quantile of |x0|."""
    flat = np.abs(x0.reshape(x0.shape[0], -1))
    s = np.quantile(flat, ratio, axis=1)
    s = np.clip(s, 1.0, max_value).astype(x0.dtype).reshape((-1,) + (1,) * (x0.ndim - 1))
    return np.clip(x0, -s, s) / s


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
        self._gen_options = self._generator_options()
        self._clip_here = self._clips and not spec.clips_itself
        self._vp = spec.space == "vp"
        self._eps_pred = self.prediction_type == "epsilon"
        if spec.receives_model_output and self._clip_here:  # such a generator must clip itself
            raise ValueError(f"{spec.name} cannot clip or threshold its data prediction")
        # What step() hands the generator beside the sample, and how: "raw" (diffusers' model
        # output), "derivative" and "vp_scaled" (computed in step() itself for an unclipped
        # epsilon model), "slow" (the same protocols for every other case, in _slow_answer) and
        # "ve_view" (the VE view of the sample and the data prediction).
        fast = self._eps_pred and not self._clip_here
        if spec.receives_model_output:
            self._mode = "raw"
        elif spec.receives_derivative:
            self._mode = "derivative" if fast else "slow"
        elif spec.vp_scaled:
            self._mode = "vp_scaled" if fast else "slow"
        else:
            self._mode = "ve_view"
        self._x_ve: np.ndarray | None = None
        self.num_inference_steps: int | None = None
        self._base: BaseSchedule | None = None
        self._plan: Plan | None = None
        self._begin_index: int | None = None
        self._default_rng: np.random.Generator | None = None
        # (noise, generator, sample) of the step() in progress, for _noise_sampler
        self._call: tuple[np.ndarray | None, np.random.Generator | None, np.ndarray] | None = None
        self._reset()

    # --- configuration ------------------------------------------------------------------

    def _generator_options(self) -> dict[str, Any]:
        params = inspect.signature(self.spec.sample).parameters
        takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        out = {
            k: v
            for k, v in self.options.items()
            if k not in _FACADE_KEYS and (takes_all or k in params) and k not in ("sigmas", "noise_sampler")
        }
        if self.spec.receives_model_output:  # it converts the model output itself
            out["prediction_type"] = self.prediction_type
        return out

    def _clip(self, x0: np.ndarray) -> np.ndarray:
        o = self.options
        if o.get("thresholding"):
            return threshold_sample(x0, o["dynamic_thresholding_ratio"], o["sample_max_value"])
        r = o["clip_sample_range"]
        return np.clip(x0, -r, r)

    @property
    def _clips(self) -> bool:
        return bool(self.options.get("thresholding") or self.options.get("clip_sample"))

    def __repr__(self) -> str:
        return f"Scheduler({self.spec.name!r}, steps={self.num_inference_steps})"

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
        base, plan = _cached_plan(self.spec, self.family, self.options, n)
        self.num_inference_steps = n
        self._base, self._plan = base, plan
        self._step_calls = (
            np.asarray(plan.step_calls) if plan.step_calls is not None else np.arange(len(base.timesteps))
        )
        self._timesteps_f = np.asarray(plan.timesteps, dtype=np.float64)
        self._timesteps_list = self._timesteps_f.tolist()  # plain floats: cheap per-step lookups
        self._sigmas_list = np.asarray(plan.sigmas, dtype=np.float64).tolist()
        sig = plan.sigmas
        # Per-call factors between the public sample and the VE view.
        if self.spec.space == "vp":
            self._to_ve = np.sqrt(1.0 + sig**2)
        else:
            self._to_ve = np.ones_like(sig)
        self._model_in = 1.0 / np.sqrt(1.0 + sig**2) if self.spec.space == "ve" else np.ones_like(sig)
        self._to_ve_list, self._model_in_list = self._to_ve.tolist(), self._model_in.tolist()
        # sqrt(1 - abar) of each call: the factor on an epsilon output in sqrt(abar) x0
        self._vp_eps_list = (sig / np.sqrt(1.0 + sig**2)).tolist()
        self._begin_index = None
        self._reset()
        # The sampler's own per-run tables (step coefficients) are computed here, with the
        # schedule, rather than inside the first step(): a run that starts elsewhere (img2img,
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
        if self.spec.space == "vp":
            return 1.0
        if self._plan is not None:
            max_sigma = float(np.max(self._plan.sigmas))
        else:
            max_sigma = float(_sigmas_from_ac(alphas_cumprod(self.options, self.family)).max())
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

    def _init_index(self, t: Any) -> None:
        if self._index is None:
            self._index = self._begin_index if self._begin_index is not None else self._find(t)
            if self._index != 0:
                self._gen = None  # started at call 0 by set_timesteps

    def _check_t(self, t: Any) -> None:
        k = self._index
        assert k is not None
        if k >= len(self._timesteps_f):
            raise ValueError("the schedule is finished; call set_timesteps() to sample again")
        tf = _as_float(t)
        expected = self._timesteps_list[k]
        if not _same_t(tf, expected):
            self._find(t)  # raises if t is not a timestep at all
            raise ValueError(f"timestep {tf:g} is out of order: the next timestep is {expected:g} (call {k})")

    # --- the loop -----------------------------------------------------------------------

    def scale_model_input(self, sample: np.ndarray, timestep: Any) -> np.ndarray:
        """The U-Net input: VE samples divided by sqrt(sigma^2 + 1), VP samples unchanged."""
        self._require_plan()
        self._init_index(timestep)
        self._check_t(timestep)
        if self.spec.space == "vp":
            return sample
        return sample * sample.dtype.type(self._model_in_list[self._index])

    def _start(self, k: int) -> SamplerGen:
        plan, base = self._plan, self._base
        assert plan is not None and base is not None
        steps = np.flatnonzero(self._step_calls == k)
        if len(steps) == 0:
            raise ValueError(
                f"cannot start {self.spec.name} at call {k}: it is the second model call of a step; "
                f"start at one of {self._step_calls.tolist()}"
            )
        j = int(steps[0])
        n_calls = len(plan.timesteps)
        extra = {
            key: (val[k:] if isinstance(val, np.ndarray) and val.ndim == 1 and len(val) == n_calls else val)
            for key, val in plan.extra.items()
        }
        kwargs = {**self._gen_options, **extra}
        if self.spec.clips_itself:
            kwargs["clip"] = self._clip if self._clips else None
        gen = self.spec.sample(base.sigmas[j:], self._noise_sampler, **kwargs)
        next(gen)
        return gen

    def _noise_sampler(self, sigma: float, sigma_next: float) -> np.ndarray:
        noise, rng, sample = self._call  # type: ignore[misc]  # set by step(), the only caller
        dtype = sample.dtype
        if noise is not None:
            return noise if noise.dtype == dtype else noise.astype(dtype)
        shape = sample.shape
        if rng is None:  # one unseeded generator per scheduler: creating one per step is slow
            if self._default_rng is None:
                self._default_rng = np.random.default_rng()
            rng = self._default_rng
        if dtype in (np.float32, np.float64):
            return rng.standard_normal(shape, dtype=dtype)
        return rng.standard_normal(shape, dtype=np.float32).astype(dtype)

    def _denoised(self, model_output: np.ndarray, x_ve: np.ndarray, sigma: float) -> np.ndarray:
        pt, s = self.prediction_type, sigma
        dt = x_ve.dtype.type
        if pt == "epsilon":
            den = model_output * dt(s)
            return np.subtract(x_ve, den, out=den)
        if pt == "v_prediction":
            return x_ve * dt(1.0 / (s * s + 1.0)) - model_output * dt(s / math.sqrt(s * s + 1.0))
        return model_output.astype(x_ve.dtype, copy=False)

    def step(
        self,
        model_output: np.ndarray,
        timestep: Any,
        sample: np.ndarray,
        noise: np.ndarray | None = None,
        generator: np.random.Generator | None = None,
    ) -> np.ndarray:
        """Advance one model call; returns the next sample in the caller's dtype."""
        # Written flat: at 30k elements per latent the Python overhead is a third of a step.
        k = self._index
        if k is None:
            self._require_plan()
            self._init_index(timestep)
            k = self._index
        ts = self._timesteps_list
        try:
            tf = float(timestep)  # numpy scalars, 0-d arrays, tensors; anything else gets the error
        except (TypeError, ValueError):
            tf = _as_float(timestep)
        if k >= len(ts) or abs(tf - ts[k]) > 1e-4 + 1e-6 * abs(ts[k]):  # _same_t, inline
            self._check_t(timestep)  # raises the precise error
        if type(sample) is not np.ndarray:
            sample = np.asarray(sample)
        if type(model_output) is not np.ndarray:
            model_output = np.asarray(model_output)
        shape = sample.shape
        if model_output.shape != shape:
            raise ValueError(f"model_output shape {model_output.shape} differs from sample shape {shape}")
        dtype = sample.dtype
        if dtype.kind != "f":
            raise ValueError(f"sample must be a floating-point array, got dtype {dtype}")
        if noise is not None:
            if type(noise) is not np.ndarray:
                noise = np.asarray(noise)
            if noise.shape != shape:
                raise ValueError(f"noise must have the sample's shape {shape}, got {noise.shape}")
        if model_output.dtype != dtype:
            model_output = model_output.astype(dtype)
        mode = self._mode
        if mode == "raw" or mode == "derivative":  # an epsilon output is the VE derivative itself
            answer = model_output
        elif mode == "vp_scaled":  # sqrt(abar) x0 = x - sqrt(1 - abar) eps, two passes
            answer = model_output * self._vp_eps_list[k]
            np.subtract(sample, answer, out=answer)
        else:
            answer = self._slow_answer(model_output, sample, k)
        gen = self._gen
        if gen is None:
            gen = self._gen = self._start(k)
        # No try/finally: after an exception the next step() replaces these anyway.
        self._call = (noise, generator, sample)
        out = gen.send((sample if mode != "ve_view" else self._x_ve, answer))
        self._call = self._x_ve = None
        self._index = k + 1
        if mode == "ve_view" and self._vp:
            out = out * (1.0 / self._to_ve_list[k + 1])
        return out if out.dtype == dtype else out.astype(dtype)

    def _slow_answer(self, model_output: np.ndarray, sample: np.ndarray, k: int) -> np.ndarray:
        """What the generator receives beside the sample, for the modes without a fast path
        (other prediction types, clipping, the VE-view protocol); ``ve_view`` keeps the VE view
        of the sample in ``_x_ve`` for the generator."""
        spec, sigma = self.spec, self._sigmas_list[k]
        c = self._to_ve_list[k]
        x_ve = sample * sample.dtype.type(c) if self._vp else sample
        if self._eps_pred and not spec.receives_derivative:
            answer = model_output * sigma
            np.subtract(x_ve, answer, out=answer)
        elif self._eps_pred and not self._clip_here:
            return model_output  # receives_derivative: the derivative itself
        else:
            answer = self._denoised(model_output, x_ve, sigma)
        if self._clip_here:
            answer = self._clip(answer)
        if spec.receives_derivative:
            return to_d(x_ve, sigma, answer)
        if spec.vp_scaled:
            return answer * (1.0 / c)
        self._x_ve = x_ve
        return answer

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
        if self.spec.space == "vp" and self.family in _ADD_NOISE_BY_T:
            ac = self._base.alphas_cumprod[ts.astype(np.int64)]
            a, b = np.sqrt(ac), np.sqrt(1 - ac)
        else:
            # diffusers indexes its per-step sigmas (each repeated for a step's second call), so a
            # step's extra call adds noise at the step's end sigma, not at its midpoint.
            sig = self._base.sigmas[np.searchsorted(self._step_calls, idx, side="left")]
            if self.spec.space == "vp":
                a, b = 1 / np.sqrt(1 + sig**2), sig / np.sqrt(1 + sig**2)
            else:
                a, b = np.ones_like(sig), sig
        shape = (-1,) + (1,) * (original.ndim - 1)
        a = a.astype(original.dtype).reshape(shape)
        b = b.astype(original.dtype).reshape(shape)
        return original * a + noise * b
