"""The facade's run bookkeeping: where a run starts, repeated runs, the reused temporary."""

from __future__ import annotations

import numpy as np
import pytest
from sdlite.samplers import make_scheduler
from sdlite.samplers.base import Scratch

from .reference import ALL_SAMPLERS, SD15_PNDM

SHAPE = (1, 4, 8, 8)


def _outputs(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.standard_normal(SHAPE, dtype=np.float32) for _ in range(n)]


def _run(sched, x: np.ndarray, start: int, outs: list[np.ndarray], noise: np.ndarray) -> list[np.ndarray]:
    seen = []
    for k, t in enumerate(sched.timesteps[start:]):
        sched.scale_model_input(x, t)  # as a pipeline calls it: the first call picks the index
        x = sched.step(outs[k % len(outs)], t, x, noise=noise)
        seen.append(x)
    return seen


@pytest.mark.parametrize("name", ["dpm2_a", "heun", "unipc", "pndm", "euler_a", "dpmpp_2m_sde"])
def test_a_second_run_repeats_the_first(name: str) -> None:
    """set_timesteps starts the sampler for the next run: a run after a finished one is new."""
    sched = make_scheduler(name, SD15_PNDM)
    outs, noise = _outputs(5), _outputs(1)[0]
    x0 = np.ones(SHAPE, dtype=np.float32)
    sched.set_timesteps(6)
    first = _run(sched, x0, 0, outs, noise)
    sched.set_timesteps(6)
    second = _run(sched, x0, 0, outs, noise)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["dpm2_a", "heun", "dpmpp_2s", "unipc", "euler"])
def test_entering_mid_way_by_timestep_equals_set_begin_index(name: str) -> None:
    """The first step's timestep picks the call (diffusers' index_for_timestep), as
    set_begin_index does: the sampler started with the schedule is then started anew there."""
    outs, noise = _outputs(5), _outputs(1)[0]
    x0 = np.ones(SHAPE, dtype=np.float32)
    by_t = make_scheduler(name, SD15_PNDM)
    by_t.set_timesteps(8)
    start = 2 * by_t.order  # the first call of a step
    got = _run(by_t, x0, start, outs, noise)
    by_index = make_scheduler(name, SD15_PNDM)
    by_index.set_timesteps(8)
    by_index.set_begin_index(start)
    want = _run(by_index, x0, start, outs, noise)
    fresh = make_scheduler(name, SD15_PNDM)
    fresh.set_timesteps(8)
    full = _run(fresh, x0, 0, outs, noise)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(got[-1], full[-1])  # it did start mid-way


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_scratch_is_bitwise_the_plain_expression(dtype: type) -> None:
    rng = np.random.default_rng(0)
    out = rng.standard_normal(SHAPE).astype(dtype)
    arr = rng.standard_normal(SHAPE).astype(dtype)
    want = out + arr * out.dtype.type(0.3712)
    tmp = Scratch()
    got = tmp.add_scaled(out.copy(), arr, 0.3712)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == dtype


def test_scratch_follows_a_change_of_shape_or_dtype() -> None:
    tmp = Scratch()
    a32 = np.ones(SHAPE, dtype=np.float32)
    tmp.add_scaled(a32, a32, 0.5)
    buf = tmp.buf
    tmp.add_scaled(a32, a32, 0.5)
    assert tmp.buf is buf  # reused
    a16 = np.ones((2, 3), dtype=np.float16)
    got = tmp.add_scaled(a16, a16, 0.5)
    assert tmp.buf is not buf and tmp.buf.dtype == np.float16 and tmp.buf.shape == (2, 3)
    np.testing.assert_array_equal(got, np.full((2, 3), 1.5, dtype=np.float16))


class _DtypeSpy:
    """Stands in for a sampler generator and records the dtype of every sample it yields."""

    def __init__(self, gen) -> None:
        self.gen, self.dtypes = gen, set()

    def send(self, value):
        out = self.gen.send(value)
        self.dtypes.add(out.dtype)
        return out


@pytest.mark.parametrize("name", ALL_SAMPLERS)
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("config", [{}, {"prediction_type": "v_prediction"}])
def test_samplers_compute_in_the_callers_dtype(name: str, dtype: type, config: dict) -> None:
    """A numpy float64 scalar in a step's arithmetic turns the whole pass into float64 (twice the
    memory traffic, and a cast back).  step() would hide that by casting its result, so the
    generator's own yields are checked."""
    sched = make_scheduler(name, {**SD15_PNDM, **config})
    sched.set_timesteps(6)
    spy = sched._gen = _DtypeSpy(sched._gen)
    outs = [o.astype(dtype) for o in _outputs(3)]
    noise = _outputs(1)[0].astype(dtype)
    _run(sched, np.ones(SHAPE, dtype=dtype), 0, outs, noise)
    assert spy.dtypes == {np.dtype(dtype)}, f"{name} computed in {sorted(map(str, spy.dtypes))}"
