"""The sampler registry: every sampler module calls ``register`` at import time.

``sdlite.samplers`` imports the sampler modules (``sigma``, ``vp``, ``dpm_solver``, ``deis``,
``unipc``) so that ``SPECS`` is complete before ``make_scheduler`` looks a name up.
"""

from __future__ import annotations

from .base import SamplerSpec

SPECS: dict[str, SamplerSpec] = {}


def register(spec: SamplerSpec) -> SamplerSpec:
    """Add ``spec`` under ``spec.name``; a second registration of the same name is a bug."""
    if spec.name in SPECS:
        raise ValueError(f"sampler {spec.name!r} is registered twice")
    SPECS[spec.name] = spec
    return spec
