"""The sampler protocol itself: who may touch which array, when a scheduler draws noise, and
that the sampler modules share helpers only through public names."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sdlite.samplers import make_scheduler

from .reference import ALL_SAMPLERS, SD15_PNDM, stand_in_model

SHAPE = (1, 4, 8, 8)
SAMPLERS_DIR = Path(__file__).resolve().parents[2] / "runtime" / "samplers"


def _draws(sched, steps: int = 6) -> bool:
    """Whether a whole run moves the Generator handed to step()."""
    rng = np.random.default_rng(0)
    sched.set_timesteps(steps)
    before = rng.bit_generator.state
    x = np.ones(SHAPE, dtype=np.float32)
    for t in sched.timesteps:
        x = sched.step(stand_in_model(sched.scale_model_input(x, t), float(t)), t, x, generator=rng)
    return rng.bit_generator.state != before


STOCHASTIC_CASES = [
    *[(name, {}, {}) for name in ALL_SAMPLERS],
    ("euler", {}, {"s_churn": 1.0}),
    ("ddim", {}, {"eta": 0.5}),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, {}),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}, {}),
]


@pytest.mark.parametrize("name,config,overrides", STOCHASTIC_CASES)
def test_stochastic_says_whether_step_draws_noise(name: str, config: dict, overrides: dict) -> None:
    """A pipeline passes one seeded draw per call exactly when ``stochastic`` is true: a sampler
    that draws without it falls back to an unseeded generator, and the seed stops meaning an image."""
    sched = make_scheduler(name, {**SD15_PNDM, **config}, **overrides)
    assert isinstance(sched.stochastic, bool)
    assert sched.stochastic == _draws(sched), f"{name} {config} {overrides}"


def test_stochastic_is_read_only() -> None:
    sched = make_scheduler("euler_a")
    with pytest.raises(AttributeError):
        sched.stochastic = False  # type: ignore[misc]


CONFIGS: list[dict[str, Any]] = [
    {},
    {"prediction_type": "v_prediction"},
    {"prediction_type": "sample"},
    {"prediction_type": "sample", "thresholding": True, "clip_sample": True, "clip_sample_range": 0.5},
]


@pytest.mark.parametrize("name", ALL_SAMPLERS)
@pytest.mark.parametrize("config", CONFIGS)
def test_step_never_changes_the_callers_arrays(name: str, config: dict) -> None:
    """step() hands the generator the caller's sample (VE samplers) and may hand it the caller's
    noise; neither, nor the model output, may come back changed."""
    sched = make_scheduler(name, {**SD15_PNDM, **config})
    sched.set_timesteps(5)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(SHAPE, dtype=np.float32)
    for t in sched.timesteps:
        out = stand_in_model(sched.scale_model_input(x, t), float(t)).astype(np.float32)
        noise = rng.standard_normal(SHAPE, dtype=np.float32)
        kept = (x.copy(), out.copy(), noise.copy())
        new = sched.step(out, t, x, noise=noise)
        for arr, before in zip((x, out, noise), kept, strict=True):
            np.testing.assert_array_equal(arr, before, err_msg=f"{name} changed an input at t={t}")
        assert new is not x and new is not out and new is not noise
        x = new


def _imported_underscore_names(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    modules = set()
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            for alias in node.names:
                if alias.name.startswith("_"):
                    bad.append(f"from {'.' * node.level}{node.module or ''} import {alias.name}")
                elif node.module is None:
                    modules.add(alias.asname or alias.name)  # from . import sigma
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and node.attr.startswith("_")
        ):
            bad.append(f"{node.value.id}.{node.attr}")
    return bad


@pytest.mark.parametrize("path", sorted(SAMPLERS_DIR.glob("*.py")), ids=lambda p: p.name)
def test_no_module_reads_anothers_underscore_names(path: Path) -> None:
    assert _imported_underscore_names(path) == []


def test_the_underscore_check_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from . import sigma\nfrom .base import _hidden\nsigma._floats([])\n")
    assert _imported_underscore_names(bad) == ["from .base import _hidden", "sigma._floats"]


@pytest.mark.parametrize("name", ALL_SAMPLERS)
def test_every_option_is_one_diffusers_takes(name: str) -> None:
    """A scheduler's options are its diffusers class's config keys and step() arguments: nothing
    of the runtime's own plumbing leaks into what a user may set."""
    import inspect

    from .reference import diffusers_class

    cls = diffusers_class(name)
    known = set(inspect.signature(cls.__init__).parameters) | set(inspect.signature(cls.step).parameters)
    extra = set(make_scheduler(name).options) - known
    assert not extra, f"{name}: options diffusers' {cls.__name__} does not take: {sorted(extra)}"
