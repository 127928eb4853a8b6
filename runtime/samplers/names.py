"""Sampler names users know: sdlite's own, AUTOMATIC1111's display names, diffusers' classes.

Lookup ignores case, spaces, ``_``/``-`` and spells ``++`` as ``pp`` ("DPM++ 2M Karras",
"dpmpp_2m_karras" and "dpm++2mkarras" are one name).
"""

from __future__ import annotations

import re
from typing import Any

_KARRAS = {"use_karras_sigmas": True}
_EXP = {"use_exponential_sigmas": True}

# AUTOMATIC1111 display name -> (sdlite sampler, options).  Schedule variants ("Karras",
# "Exponential") are listed where diffusers' class has the option.
A1111: dict[str, tuple[str, dict[str, Any]]] = {
    "Euler": ("euler", {}),
    "Euler Karras": ("euler", _KARRAS),
    "Euler Exponential": ("euler", _EXP),
    "Euler a": ("euler_a", {}),
    "Heun": ("heun", {}),
    "Heun Karras": ("heun", _KARRAS),
    "Heun Exponential": ("heun", _EXP),
    "LMS": ("lms", {}),
    "LMS Karras": ("lms", _KARRAS),
    "LMS Exponential": ("lms", _EXP),
    "DPM2": ("dpm2", {}),
    "DPM2 Karras": ("dpm2", _KARRAS),
    "DPM2 a": ("dpm2_a", {}),
    "DPM2 a Karras": ("dpm2_a", _KARRAS),
    "DDIM": ("ddim", {}),
    "PLMS": ("pndm", {}),
    "LCM": ("lcm", {}),
    "UniPC": ("unipc", {}),
    "UniPC Karras": ("unipc", _KARRAS),
    "UniPC Exponential": ("unipc", _EXP),
    "DEIS": ("deis", {}),
    "DEIS Karras": ("deis", _KARRAS),
    "DPM++ 2M": ("dpmpp_2m", {}),
    "DPM++ 2M Karras": ("dpmpp_2m", _KARRAS),
    "DPM++ 2M Exponential": ("dpmpp_2m", _EXP),
    "DPM++ 2M SDE": ("dpmpp_2m_sde", {}),
    "DPM++ 2M SDE Karras": ("dpmpp_2m_sde", _KARRAS),
    "DPM++ 2M SDE Exponential": ("dpmpp_2m_sde", _EXP),
    "DPM++ 2M SDE Heun": ("dpmpp_2m_sde", {"solver_type": "heun"}),
    "DPM++ 2M SDE Heun Karras": ("dpmpp_2m_sde", {"solver_type": "heun", **_KARRAS}),
    "DPM++ 2M SDE Heun Exponential": ("dpmpp_2m_sde", {"solver_type": "heun", **_EXP}),
    "DPM++ 3M SDE": ("dpmpp_3m_sde", {}),
    "DPM++ 3M SDE Karras": ("dpmpp_3m_sde", _KARRAS),
    "DPM++ 3M SDE Exponential": ("dpmpp_3m_sde", _EXP),
    # diffusers has no ancestral single-step solver; its docs map these to DPMSolverSinglestep.
    "DPM++ 2S a": ("dpmpp_2s", {}),
    "DPM++ 2S a Karras": ("dpmpp_2s", _KARRAS),
}

# diffusers scheduler class -> sdlite sampler (and the schedule family it follows).
DIFFUSERS_CLASSES: dict[str, str] = {
    "EulerDiscreteScheduler": "euler",
    "EulerAncestralDiscreteScheduler": "euler_a",
    "HeunDiscreteScheduler": "heun",
    "KDPM2DiscreteScheduler": "dpm2",
    "KDPM2AncestralDiscreteScheduler": "dpm2_a",
    "LMSDiscreteScheduler": "lms",
    "DDIMScheduler": "ddim",
    "PNDMScheduler": "pndm",
    "LCMScheduler": "lcm",
    "DPMSolverMultistepScheduler": "dpmpp_2m",
    "DPMSolverSinglestepScheduler": "dpmpp_2s",
    "UniPCMultistepScheduler": "unipc",
    "DEISMultistepScheduler": "deis",
}

# Schedule family of the exponential-integrator samplers (registered without one).
FAMILY_OF: dict[str, str] = {
    "unipc": "unipc",
    "dpmpp_2m": "dpm_multistep",
    "dpmpp_2m_sde": "dpm_multistep",
    "dpmpp_3m_sde": "dpm_multistep",
    "dpmpp_2s": "dpm_singlestep",
    "deis": "deis",
}


# Options that define a sampler name, so a scheduler_config.json cannot change them ("DPM++ 2M"
# stays second order and deterministic whatever algorithm_type a checkpoint's config names).
# Options whose sampler default differs from the diffusers class default are pinned as well.
# diffusers class names pin nothing: "DPMSolverMultistepScheduler" means "as the config says".
DEFINING_OPTIONS: dict[str, tuple[str, ...]] = {
    "dpmpp_2m": ("algorithm_type", "solver_order"),
    "dpmpp_2m_sde": ("algorithm_type", "solver_order"),
    "dpmpp_3m_sde": ("algorithm_type", "solver_order"),
    "dpmpp_2s": ("algorithm_type", "solver_order"),
    "pndm": ("skip_prk_steps",),
}


def normalize(name: str) -> str:
    """The lookup key of a name: lower case, ``++`` -> ``pp``, letters and digits only."""
    return re.sub(r"[^a-z0-9]", "", name.lower().replace("++", "pp"))


def aliases(registered: set[str]) -> list[tuple[str, str, dict[str, Any]]]:
    """Every accepted name as (display name, sampler, options), for registered samplers only.

    Canonical names come first; a display name that normalizes like an earlier one ("DDIM" and
    "ddim") is listed but means the same thing.
    """
    out = [(name, name, {}) for name in sorted(registered)]
    out += [(d, smp, opts) for d, (smp, opts) in A1111.items() if smp in registered]
    out += [(cls, smp, {}) for cls, smp in DIFFUSERS_CLASSES.items() if smp in registered]
    return out
