"""The config keys of each diffusers scheduler class ("family"), their defaults and allowed values.

``cfg`` everywhere is a complete option dict: ``family_defaults(family)`` updated with the
user's config.  ``validate_config`` runs before any schedule is built, so a bad value is a
ValueError naming the option and what it may be.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

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
