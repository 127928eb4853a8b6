"""Pure-numpy samplers, step for step equal to diffusers' schedulers.

Example::

    from sdlite.samplers import make_scheduler, SAMPLERS
    s = make_scheduler("DPM++ 2M Karras", config=scheduler_config_dict)
    s.set_timesteps(25)
    for t in s.timesteps:
        eps = unet(s.scale_model_input(x, t), t)
        x = s.step(eps, t, x)
"""

from __future__ import annotations

from typing import Any

from . import deis, dpm_solver, sigma, unipc, vp  # noqa: F401  (each registers its samplers)
from .config import family_defaults, validate_config
from .names import DEFINING_OPTIONS, DIFFUSERS_CLASSES, FAMILY_OF, aliases, normalize
from .registry import SPECS
from .scheduler import Scheduler

_ALIASES: dict[str, tuple[str, str, dict[str, Any]]] = {}
SAMPLERS: dict[str, str] = {}
for _display, _sampler, _opts in aliases(set(SPECS)):
    _ALIASES.setdefault(normalize(_display), (_display, _sampler, _opts))
    _desc = SPECS[_sampler].description
    if _display != _sampler:
        _extra = ", ".join(f"{k}={v}" for k, v in _opts.items())
        _desc = f"= {_sampler}{' with ' + _extra if _extra else ''}: {_desc}"
    SAMPLERS[_display] = _desc

_CLASS_KEYS = {normalize(c) for c in DIFFUSERS_CLASSES}

# diffusers' constructors silently replace some values that belong to a sibling class, so that
# a config saved by one class loads into another (from_config): reproduce that for configs.
_FOREIGN_VALUES: dict[str, dict[str, dict[Any, Any]]] = {
    "dpm_multistep": {
        "algorithm_type": {"deis": "dpmsolver++"},
        "solver_type": {"logrho": "midpoint", "bh1": "midpoint", "bh2": "midpoint"},
    },
    "dpm_singlestep": {
        "algorithm_type": {"deis": "dpmsolver++"},
        "solver_type": {"logrho": "midpoint", "bh1": "midpoint", "bh2": "midpoint"},
    },
    "unipc": {"solver_type": {"midpoint": "bh2", "heun": "bh2", "logrho": "bh2"}},
    "deis": {
        "algorithm_type": {"dpmsolver": "deis", "dpmsolver++": "deis"},
        "solver_type": {"midpoint": "logrho", "heun": "logrho", "bh1": "logrho", "bh2": "logrho"},
    },
}

_SIGMA_KINDS = {"use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"}

_RANGES: dict[str, tuple[float, float]] = {
    "eta": (0.0, float("inf")),
    "s_churn": (0.0, float("inf")),
    "s_noise": (0.0, float("inf")),
    "order": (1, 4),
    "dynamic_thresholding_ratio": (0.0, 1.0),
    "timestep_scaling": (0.0, float("inf")),
    "clip_sample_range": (0.0, float("inf")),
    "sample_max_value": (0.0, float("inf")),
}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return type(a) is type(b) and a == b or (isinstance(a, float) and isinstance(b, float) and a == b)


def _check_ranges(opts: dict[str, Any], sampler: str) -> None:
    for key, (lo, hi) in _RANGES.items():
        if key in opts:
            v = opts[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                raise ValueError(
                    f"{key}={v!r} is not allowed for {sampler}; allowed: a number in [{lo}, {hi}]"
                )
    if "order" in opts and int(opts["order"]) != opts["order"]:
        raise ValueError(f"order={opts['order']!r} must be an integer in 1..4")


def make_scheduler(name: str, config: dict[str, Any] | None = None, **overrides: Any) -> Scheduler:
    """A ``Scheduler`` for sampler ``name`` (see ``SAMPLERS``).

    ``config`` is a ``scheduler_config.json`` dict, possibly from another scheduler class: the
    keys the sampler's diffusers class reads are used, the rest ignored (as ``from_config``).
    Options implied by the name ("Karras") and then ``overrides`` take precedence.
    """
    if not isinstance(name, str) or normalize(name) not in _ALIASES:
        raise ValueError(f"unknown sampler {name!r}; valid names: {', '.join(SAMPLERS)}")
    _, sampler, name_opts = _ALIASES[normalize(name)]
    spec = SPECS[sampler]
    family = spec.family or FAMILY_OF.get(sampler, sampler)
    opts = family_defaults(family)
    # A sampler option that differs from the class default defines the sampler ("dpmpp_2m_sde"
    # is algorithm_type="sde-dpmsolver++"): a config cannot change it.  The rest are defaults.
    if normalize(name) in _CLASS_KEYS:
        pinned: set[str] = set()
    else:
        pinned = {k for k, v in spec.defaults.items() if k in opts and not _same(v, opts[k])}
        pinned |= set(DEFINING_OPTIONS.get(sampler, ())) & opts.keys()
    opts.update(spec.defaults)
    if config is not None:
        if not isinstance(config, dict):
            raise ValueError(f"config must be a dict (scheduler_config.json), got {type(config).__name__}")
        foreign = _FOREIGN_VALUES.get(family, {})
        as_config = dict(opts)  # the config as the class would load it: a bad value is an error
        for key, value in config.items():
            if key in opts:
                value = foreign.get(key, {}).get(value, value) if isinstance(value, str) else value
                as_config[key] = value
                if key not in pinned:
                    opts[key] = value
        validate_config(as_config, family)
    unknown = sorted(set(overrides) - set(opts))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for {sampler}; allowed: {', '.join(sorted(opts))}")
    for layer in (name_opts, overrides):
        if layer.keys() & _SIGMA_KINDS:
            # A sigma schedule chosen by the name or the caller replaces the config's.
            for key in _SIGMA_KINDS & opts.keys():
                opts[key] = False
        opts.update(layer)
    validate_config(opts, family)
    _check_ranges(opts, sampler)
    return Scheduler(spec, family, opts)


__all__ = ["SAMPLERS", "Scheduler", "make_scheduler"]
