"""diffusers as the reference for the numpy samplers: which class each name means, the configs
real checkpoints ship, a deterministic stand-in U-Net, and one denoising loop run on either side.

Shared by the parity/error tests and by ``benchmarks/samplers_*.py`` (imported there as
``tests.samplers.reference``), so that the benchmark times exactly what the tests prove equal.
Only this module and the tests import torch/diffusers; ``sdlite.samplers`` never does.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# name -> (diffusers class, the config keys the name itself implies).  Written from diffusers'
# docs and the A1111 mapping, independently of sdlite's own table, so that a wrong entry there
# shows up as a parity failure rather than being copied.
DIFFUSERS: dict[str, tuple[str, dict[str, Any]]] = {
    "unipc": ("UniPCMultistepScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "dpmpp_3m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}),
    "dpmpp_2s": ("DPMSolverSinglestepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm2": ("KDPM2DiscreteScheduler", {}),
    "dpm2_a": ("KDPM2AncestralDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "deis": ("DEISMultistepScheduler", {}),
    "lcm": ("LCMScheduler", {}),
}
ALL_SAMPLERS = tuple(DIFFUSERS)
# Those that draw fresh noise inside step() (DDIM only with eta > 0).
STOCHASTIC = ("euler_a", "dpm2_a", "dpmpp_2m_sde", "dpmpp_3m_sde", "lcm")
# Options that diffusers takes as step() arguments rather than config keys.
STEP_KWARGS = ("eta",)

# The scheduler_config.json files of the checkpoints people use (values as on the hub).
SD15_PNDM = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}
SD21_DDIM_V = {
    "_class_name": "DDIMScheduler",
    "_diffusers_version": "0.8.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
SDXL_EULER = {
    "_class_name": "EulerDiscreteScheduler",
    "_diffusers_version": "0.19.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}
BASE_CONFIGS: dict[str, dict[str, Any]] = {"sd15": SD15_PNDM, "sd21v": SD21_DDIM_V, "sdxl": SDXL_EULER}


def supported_options(name: str) -> set[str]:
    """The config keys diffusers' class for ``name`` accepts (its ``__init__`` signature)."""
    import inspect

    cls = diffusers_class(name)
    return set(inspect.signature(cls.__init__).parameters) - {"self"}


def diffusers_class(name: str) -> type:
    """The class for one of our names, or a diffusers class name itself."""
    return getattr(importlib.import_module("diffusers"), DIFFUSERS[name][0] if name in DIFFUSERS else name)


def make_diffusers(name: str, config: dict[str, Any] | None, overrides: dict[str, Any]):
    """diffusers' scheduler for ``name``: the checkpoint config, then the name's keys, then overrides.

    ``name`` may also be a diffusers class name: then the config alone decides, as from_config."""
    cfg = {k: v for k, v in (config or {}).items() if not k.startswith("_")}
    cfg.update(DIFFUSERS[name][1] if name in DIFFUSERS else {})
    cfg.update({k: v for k, v in overrides.items() if k not in STEP_KWARGS})
    # Some constructors are slow (KDPM2 maps 1000 sigmas to t one by one): build once, copy after.
    key = (name, repr(sorted(cfg.items())))
    if key not in _BUILT:
        cls = diffusers_class(name)
        if cls.__name__.startswith("KDPM2"):
            # Their __init__ runs set_timesteps(1000), which maps 1000 sigmas to t one at a time
            # (~1 s); every caller runs set_timesteps(n) again, which recomputes all of that state.
            full = cls.set_timesteps
            with _patched(cls, "set_timesteps", lambda self, *a, **k: full(self, 1)):
                _BUILT[key] = cls.from_config(cfg)
        else:
            _BUILT[key] = cls.from_config(cfg)
    return copy.deepcopy(_BUILT[key])


@contextlib.contextmanager
def _patched(owner: Any, attr: str, value: Any) -> Iterator[None]:
    saved = getattr(owner, attr)
    setattr(owner, attr, value)
    try:
        yield
    finally:
        setattr(owner, attr, saved)


_BUILT: dict[tuple[str, str], Any] = {}


def stand_in_model(x: np.ndarray, t: float) -> np.ndarray:
    """A deterministic, non-linear function of the U-Net input and the timestep (float32).

    Bounded and smooth so that float32 rounding is not amplified chaotically, yet far enough from
    linear that a sampler using the wrong timestep, sigma or history cannot match by accident.
    """
    x = np.asarray(x, dtype=np.float32)
    tt = np.float32(float(t) / 1000.0)
    phase = np.float32(0.6) * np.cos(np.float32(3.0) * tt)
    out = np.tanh(np.float32(0.8) * x + phase) + np.float32(0.3) * tt * np.sin(np.float32(2.0) * x)
    return out.astype(np.float32)


@dataclass
class Trajectory:
    timesteps: np.ndarray
    init_noise_sigma: float
    model_inputs: list[np.ndarray]
    samples: list[np.ndarray]  # the sample after every step() call, in order
    noise_calls: list[int] | None = None  # diffusers: the calls at which it drew (our) noise


class NoiseFeed:
    """Hands diffusers' ``randn_tensor`` the arrays the test chose, one per model call."""

    def __init__(self, noises: Sequence[np.ndarray]):
        self.noises = noises
        self.call = 0  # which step() call is running
        self.drawn_at: list[int] = []

    def randn_tensor(self, shape, generator=None, device=None, dtype=None, layout=None):
        import torch

        if self.drawn_at and self.drawn_at[-1] == self.call:
            raise AssertionError(f"diffusers drew noise twice in step call {self.call}")
        self.drawn_at.append(self.call)
        arr = self.noises[self.call]
        assert tuple(arr.shape) == tuple(shape), (arr.shape, shape)
        return torch.from_numpy(arr.copy()).to(dtype=dtype or torch.float32)


@contextlib.contextmanager
def feed_diffusers_noise(name: str, feed: NoiseFeed) -> Iterator[None]:
    """Replace ``randn_tensor`` in the module of ``name``'s diffusers class with ``feed``."""
    module = importlib.import_module(diffusers_class(name).__module__)
    saved = getattr(module, "randn_tensor", None)
    module.randn_tensor = feed.randn_tensor
    try:
        yield
    finally:
        if saved is not None:
            module.randn_tensor = saved


def noises_for(n_calls: int, shape: tuple[int, ...], seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape, dtype=np.float32) for _ in range(n_calls + 1)]


def run_diffusers(
    name: str,
    config: dict[str, Any] | None,
    overrides: dict[str, Any],
    steps: int,
    x_t: np.ndarray,
    noises: Sequence[np.ndarray],
    start: int = 0,
    x0: np.ndarray | None = None,
    dtype: Any = None,
) -> Trajectory:
    """diffusers' loop as its pipelines run it.  ``start > 0`` is img2img: begin at step ``start``
    (``set_begin_index``), the sample being ``add_noise(x0, x_t, t_start)``."""
    import torch

    dtype = dtype or torch.float32
    sched = make_diffusers(name, config, overrides)
    sched.set_timesteps(steps)
    step_kwargs = {k: v for k, v in overrides.items() if k in STEP_KWARGS}
    timesteps = sched.timesteps[start * sched.order :]
    if start:
        if hasattr(sched, "set_begin_index"):
            sched.set_begin_index(start * sched.order)
        x = sched.add_noise(torch.from_numpy(x0).to(dtype), torch.from_numpy(x_t).to(dtype), timesteps[:1])
    else:
        x = torch.from_numpy(x_t).to(dtype) * sched.init_noise_sigma
    feed = NoiseFeed(noises)
    inputs, samples = [], []
    with feed_diffusers_noise(name, feed):
        for k, t in enumerate(timesteps):
            feed.call = k
            inp = sched.scale_model_input(x, t)
            inputs.append(inp.numpy().copy())
            out = torch.from_numpy(stand_in_model(inp.numpy(), float(t))).to(dtype)
            x = sched.step(out, t, x, return_dict=False, **step_kwargs)[0]
            samples.append(x.numpy().copy())
    if isinstance(sched, diffusers_class("unipc")) and not np.isfinite(samples[-1]).all():
        samples[-1] = _unipc_data_prediction(sched)
    timesteps = sched.timesteps.numpy().copy()
    return Trajectory(timesteps, float(sched.init_noise_sigma), inputs, samples, feed.drawn_at)


def _unipc_data_prediction(sched) -> np.ndarray:
    """What diffusers' UniPC step to sigma = 0 tends to, where it returns NaN instead.

    Its bh1 variant (B(h) = -h) and any order > 1 divide by the log-SNR step, infinite at
    sigma = 0; the exact integrator over [lambda_s, inf) with the model output held constant
    is the data prediction at the (corrected) last sample, which the issue asks for there.
    """
    assert float(sched.sigmas[-1]) == 0.0, "non-finite UniPC output away from a zero final sigma"
    converted = sched.model_outputs[-1]
    if sched.config.predict_x0:
        return converted.numpy().copy()
    alpha_t, sigma_t = sched._sigma_to_alpha_sigma_t(sched.sigmas[sched.step_index - 1])
    return ((sched.last_sample - sigma_t * converted) / alpha_t).numpy().copy()


def run_ours(
    name: str,
    config: dict[str, Any] | None,
    overrides: dict[str, Any],
    steps: int,
    x_t: np.ndarray,
    noises: Sequence[np.ndarray],
    start: int = 0,
    x0: np.ndarray | None = None,
) -> Trajectory:
    """The same loop through sdlite's public interface; noise goes in through ``step(noise=)``."""
    from sdlite.samplers import make_scheduler

    sched = make_scheduler(name, config, **overrides)
    sched.set_timesteps(steps)
    timesteps = sched.timesteps[start * sched.order :]
    if start:
        if hasattr(sched, "set_begin_index"):
            sched.set_begin_index(start * sched.order)
        x = sched.add_noise(x0, x_t, timesteps[:1])
    else:
        x = x_t * np.float32(sched.init_noise_sigma)
    inputs, samples = [], []
    for k, t in enumerate(timesteps):
        inp = sched.scale_model_input(x, t)
        inputs.append(np.array(inp, copy=True))
        x = sched.step(stand_in_model(inp, float(t)), t, x, noise=noises[k])
        samples.append(np.array(x, copy=True))
    return Trajectory(np.asarray(sched.timesteps).copy(), float(sched.init_noise_sigma), inputs, samples)


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.linalg.norm(ours - ref) / max(np.linalg.norm(ref), 1e-30))
