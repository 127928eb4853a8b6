"""Schedules computed once per (sampler, options, steps) and shared between schedulers.

A schedule is a pure function of its key and a pipeline rebuilds its scheduler for every call:
computing it once saves ~0.5 ms per image, a fifth of the loop's own time on a small model.
Cached arrays are made read-only, so a caller cannot corrupt the next schedule.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

import numpy as np

from .base import BaseSchedule, Plan, SamplerSpec
from .schedule import make_base_schedule

_CACHE: OrderedDict[str, tuple[BaseSchedule, Plan]] = OrderedDict()
_SIZE = 32


def _freeze(value: Any) -> None:
    if isinstance(value, np.ndarray):
        value.flags.writeable = False


def _jsonable(value: Any) -> Any:
    # Arrays in full (trained_betas): repr() abbreviates long ones, and two would share a key.
    return value.tolist() if hasattr(value, "tolist") else repr(value)


def cached_plan(spec: SamplerSpec, family: str, options: dict[str, Any], n: int) -> tuple[BaseSchedule, Plan]:
    """The base schedule and the sampler's call plan for ``n`` steps (read-only arrays)."""
    key = json.dumps([spec.name, family, n, options], sort_keys=True, default=_jsonable)
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit
    base = make_base_schedule(options, n, family)
    plan = spec.plan(base, options) if spec.plan else Plan(base.timesteps, base.sigmas)
    for arr in (base.timesteps, base.sigmas, base.alphas_cumprod, plan.timesteps, plan.sigmas):
        _freeze(arr)
    for val in (plan.step_calls, *plan.extra.values()):
        _freeze(val)
    _CACHE[key] = (base, plan)
    if len(_CACHE) > _SIZE:
        _CACHE.popitem(last=False)
    return base, plan
