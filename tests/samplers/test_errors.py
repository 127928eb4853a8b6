"""Bad input is refused with a message that says what is allowed; no sampler returns NaN/inf at a
zero final sigma; the names people know (AUTOMATIC1111's, diffusers' class names) mean the
sampler and options they mean there, checked by behaviour against diffusers."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from sdlite.samplers import SAMPLERS, make_scheduler

from .reference import (
    ALL_SAMPLERS,
    SD15_PNDM,
    SD21_DDIM_V,
    SDXL_EULER,
    noises_for,
    rel_err,
    stand_in_model,
    supported_options,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

SHAPE = (1, 4, 8, 8)


def _message(excinfo: pytest.ExceptionInfo) -> str:
    return str(excinfo.value)


# --- names -------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["eulr", "DPM++ 9M", "", "karras"])
def test_unknown_name_lists_valid_names(bad: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        make_scheduler(bad)
    msg = _message(excinfo)
    assert repr(bad) in msg or bad in msg
    for name in ALL_SAMPLERS:
        assert name in msg, f"valid name {name!r} missing from: {msg}"


def test_non_string_name() -> None:
    with pytest.raises(ValueError):
        make_scheduler(None)  # type: ignore[arg-type]


def test_samplers_table_describes_every_name() -> None:
    for name in ALL_SAMPLERS:
        assert isinstance(SAMPLERS[name], str) and SAMPLERS[name].strip(), name
        assert "\n" not in SAMPLERS[name], f"{name}: description is not one line"
    for name in SAMPLERS:  # every listed name is accepted
        make_scheduler(name)


# --- options -----------------------------------------------------------------------------

# (sampler, option, bad value, allowed values the message must list)
BAD_OPTIONS = [
    ("unipc", "solver_order", 4, ["1", "2", "3"]),
    ("dpmpp_2m", "solver_order", 4, ["1", "2", "3"]),
    ("deis", "solver_order", 4, ["1", "2", "3"]),
    ("dpmpp_2s", "solver_order", 4, ["1", "2", "3"]),
    ("unipc", "solver_order", 0, ["1", "2", "3"]),
    ("unipc", "solver_type", "bh3", ["bh1", "bh2"]),
    ("dpmpp_2m", "solver_type", "rk4", ["midpoint", "heun"]),
    ("dpmpp_2m_sde", "solver_type", "euler", ["midpoint", "heun"]),
    ("euler", "beta_schedule", "cosine", ["linear", "scaled_linear", "squaredcos_cap_v2"]),
    ("ddim", "beta_schedule", "quadratic", ["linear", "scaled_linear", "squaredcos_cap_v2"]),
    ("euler", "prediction_type", "x0", ["epsilon", "v_prediction", "sample"]),
    ("unipc", "prediction_type", "noise", ["epsilon", "v_prediction", "sample"]),
    ("euler", "timestep_spacing", "uniform", ["linspace", "leading", "trailing"]),
    ("ddim", "timestep_spacing", "even", ["linspace", "leading", "trailing"]),
    ("dpmpp_2m", "final_sigmas_type", "one", ["zero", "sigma_min"]),
]


@pytest.mark.parametrize(
    "name,option,value,allowed", BAD_OPTIONS, ids=[f"{n}-{o}={v}" for n, o, v, _ in BAD_OPTIONS]
)
@pytest.mark.parametrize("via", ["override", "config"])
def test_bad_option_names_option_and_allowed_values(
    name: str, option: str, value: Any, allowed: list[str], via: str
) -> None:
    with pytest.raises(ValueError) as excinfo:
        if via == "override":
            make_scheduler(name, SD15_PNDM, **{option: value})
        else:
            make_scheduler(name, {**SD15_PNDM, option: value})
    msg = _message(excinfo)
    assert option in msg, msg
    for v in allowed:
        assert v in msg, f"allowed value {v!r} missing from: {msg}"


def test_unknown_override_is_refused_but_unknown_config_keys_are_ignored() -> None:
    with pytest.raises(ValueError) as excinfo:
        make_scheduler("euler", solver_ordr=2)
    assert "solver_ordr" in _message(excinfo)
    # A config from another class (PNDM's skip_prk_steps for Euler) loads, as from_config does.
    make_scheduler("euler", {**SD15_PNDM, "some_future_key": 1})


@pytest.mark.parametrize("name", ALL_SAMPLERS)
@pytest.mark.parametrize("steps", [0, -3, 1001])
def test_steps_out_of_range(name: str, steps: int) -> None:
    s = make_scheduler(name, SD15_PNDM)
    with pytest.raises(ValueError) as excinfo:
        s.set_timesteps(steps)
    msg = _message(excinfo)
    assert "num_inference_steps" in msg and "1000" in msg, msg


def test_steps_not_an_integer() -> None:
    s = make_scheduler("euler")
    for bad in (2.5, "10", None):
        with pytest.raises(ValueError):
            s.set_timesteps(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ALL_SAMPLERS)
def test_step_with_a_timestep_not_in_timesteps(name: str) -> None:
    s = make_scheduler(name, SD15_PNDM)
    s.set_timesteps(10)
    ts = np.asarray(s.timesteps, dtype=np.float64)
    bad = float(ts[0]) - 0.5 if float(ts[0]) % 1 == 0 else np.floor(ts[0])
    assert not np.isclose(ts, bad).any()
    x = np.zeros(SHAPE, np.float32)
    with pytest.raises(ValueError) as excinfo:
        s.step(np.zeros(SHAPE, np.float32), bad, x, noise=np.zeros(SHAPE, np.float32))
    msg = _message(excinfo)
    assert "timestep" in msg and f"{bad:g}" in msg, msg


def test_step_before_set_timesteps() -> None:
    s = make_scheduler("dpmpp_2m")
    with pytest.raises(ValueError) as excinfo:
        s.step(np.zeros(SHAPE, np.float32), 999, np.zeros(SHAPE, np.float32))
    assert "set_timesteps" in _message(excinfo)


# --- no NaN / inf at a zero final sigma -----------------------------------------------------


def _finite_cases() -> list[Any]:
    cases = []

    def add(name: str, **opts: Any) -> None:
        label = ",".join(f"{k}={v}" for k, v in opts.items()) or "default"
        cases.append(pytest.param(name, opts, id=f"{name}-{label}"))

    for name in ALL_SAMPLERS:
        ok = supported_options(name)
        for pred in ("epsilon", "v_prediction", "sample"):
            add(name, prediction_type=pred)
        add(name, beta_schedule="squaredcos_cap_v2")
        if "timestep_spacing" in ok:
            add(name, timestep_spacing="trailing")
        for sig in ("use_karras_sigmas", "use_exponential_sigmas"):
            if sig in ok:
                add(name, **{sig: True})
        if "use_beta_sigmas" in ok and name in ("euler", "unipc"):  # one VE, one VP: its ppf is slow
            add(name, use_beta_sigmas=True)
        if "final_sigmas_type" in ok:
            add(name, final_sigmas_type="zero")
        if "rescale_betas_zero_snr" in ok:
            add(
                name, rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction"
            )
        if "thresholding" in ok:
            add(name, thresholding=True)
    combos = itertools.product((1, 2, 3), ("bh1", "bh2"), (True, False), (True, False))
    for order, solver_type, predict_x0, lof in combos:
        add(
            "unipc",
            solver_order=order,
            solver_type=solver_type,
            predict_x0=predict_x0,
            lower_order_final=lof,
            final_sigmas_type="zero",
        )
    for name in ("dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde"):
        for solver_type, lof in itertools.product(("midpoint", "heun"), (True, False)):
            add(name, solver_type=solver_type, lower_order_final=lof)
        add(name, lower_order_final=False, euler_at_final=True)
        add(name, use_lu_lambdas=True)
    for order in (1, 2, 3):
        add("dpmpp_2s", solver_order=order, lower_order_final=False)
        add("deis", solver_order=order, lower_order_final=False)
    add("ddim", eta=1.0, set_alpha_to_one=True)
    return cases


@pytest.mark.parametrize("name,opts", _finite_cases())
def test_no_nan_or_inf_at_zero_final_sigma(name: str, opts: dict[str, Any]) -> None:
    s = make_scheduler(name, SD15_PNDM, **opts)
    for steps in (1, 2, 8):
        s.set_timesteps(steps)
        rng = np.random.default_rng(0)
        x = rng.standard_normal(SHAPE, dtype=np.float32) * np.float32(s.init_noise_sigma)
        noises = noises_for(len(s.timesteps), SHAPE, seed=1)
        for k, t in enumerate(s.timesteps):
            x = s.step(stand_in_model(s.scale_model_input(x, t), float(t)), t, x, noise=noises[k])
            assert np.isfinite(x).all(), f"{name} {opts} {steps} steps: non-finite after call {k} (t={t})"


# --- names people know, checked by behaviour ----------------------------------------------

# Display name -> (our sampler, the diffusers options it means), written from A1111's sampler
# list and diffusers' "schedulers" docs table, not from sdlite's table.
A1111 = {
    "Euler": ("euler", {}),
    "Euler a": ("euler_a", {}),
    "Heun": ("heun", {}),
    "LMS": ("lms", {}),
    "LMS Karras": ("lms", {"use_karras_sigmas": True}),
    "DPM2": ("dpm2", {}),
    "DPM2 Karras": ("dpm2", {"use_karras_sigmas": True}),
    "DPM2 a": ("dpm2_a", {}),
    "DPM2 a Karras": ("dpm2_a", {"use_karras_sigmas": True}),
    "DPM++ 2M": ("dpmpp_2m", {}),
    "DPM++ 2M Karras": ("dpmpp_2m", {"use_karras_sigmas": True}),
    "DPM++ 2M SDE": ("dpmpp_2m_sde", {}),
    "DPM++ 2M SDE Karras": ("dpmpp_2m_sde", {"use_karras_sigmas": True}),
    "DPM++ 3M SDE Karras": ("dpmpp_3m_sde", {"use_karras_sigmas": True}),
    "DDIM": ("ddim", {}),
    "PLMS": ("pndm", {}),
    "UniPC": ("unipc", {}),
    "LCM": ("lcm", {}),
}


@pytest.mark.parametrize("display", list(A1111))
@pytest.mark.parametrize("cfg", ["sd15", "sdxl"])
def test_a1111_names_behave_like_their_diffusers_setup(display: str, cfg: str) -> None:
    from .reference import run_diffusers, run_ours

    config = {"sd15": SD15_PNDM, "sdxl": SDXL_EULER}[cfg]
    sampler, opts = A1111[display]
    x_t = np.random.default_rng(1).standard_normal(SHAPE, dtype=np.float32)
    noises = noises_for(30, SHAPE, seed=2)
    ref = run_diffusers(sampler, config, opts, 8, x_t, noises)
    ours = run_ours(display, config, {}, 8, x_t, noises)
    np.testing.assert_allclose(np.asarray(ours.timesteps, float), ref.timesteps, rtol=1e-5, atol=0.02)
    for k, (a, b) in enumerate(zip(ours.samples, ref.samples, strict=True)):
        assert rel_err(a, b) <= 1e-4, f"{display!r}: call {k} differs from diffusers {sampler} {opts}"
    if opts.get("use_karras_sigmas"):
        # ...and "Karras" really changes the schedule (the plain name gives other timesteps).
        plain = make_scheduler(sampler, config)
        plain.set_timesteps(8)
        assert not np.allclose(np.asarray(plain.timesteps, float), np.asarray(ours.timesteps, float))


def test_name_spellings() -> None:
    for spelling in ("DPM++ 2M Karras", "dpm++ 2m karras", "dpmpp_2m_karras"):
        s = make_scheduler(spelling, SD15_PNDM)
        s.set_timesteps(8)
        ref = make_scheduler("dpmpp_2m", SD15_PNDM, use_karras_sigmas=True)
        ref.set_timesteps(8)
        np.testing.assert_array_equal(s.timesteps, ref.timesteps)


# A scheduler_config.json names its class: the class name with that config must behave as
# diffusers' from_config of it, options (algorithm_type, solver_order, ...) taken from the config.
CLASS_CONFIGS = [
    ("EulerDiscreteScheduler", SDXL_EULER),
    ("DDIMScheduler", SD21_DDIM_V),
    ("PNDMScheduler", SD15_PNDM),
    ("UniPCMultistepScheduler", {**SD15_PNDM, "solver_order": 3, "solver_type": "bh1"}),
    ("DPMSolverMultistepScheduler", {**SD15_PNDM, "algorithm_type": "sde-dpmsolver++", "solver_order": 3}),
    ("DPMSolverMultistepScheduler", {**SD15_PNDM, "use_karras_sigmas": True}),
    ("DPMSolverSinglestepScheduler", {**SD15_PNDM, "solver_order": 3}),
    ("EulerAncestralDiscreteScheduler", SD15_PNDM),
    ("KDPM2DiscreteScheduler", {**SD15_PNDM, "use_karras_sigmas": True}),
    ("LMSDiscreteScheduler", SD15_PNDM),
    ("HeunDiscreteScheduler", SD15_PNDM),
    ("DEISMultistepScheduler", {**SD15_PNDM, "solver_order": 3}),
    ("LCMScheduler", SD15_PNDM),
]


@pytest.mark.parametrize(
    "cls_name,config", CLASS_CONFIGS, ids=[f"{c}-{i}" for i, (c, _) in enumerate(CLASS_CONFIGS)]
)
def test_diffusers_class_names_follow_their_config(cls_name: str, config: dict[str, Any]) -> None:
    from .reference import run_diffusers, run_ours

    x_t = np.random.default_rng(1).standard_normal(SHAPE, dtype=np.float32)
    noises = noises_for(30, SHAPE, seed=2)
    ref = run_diffusers(cls_name, config, {}, 8, x_t, noises)
    ours = run_ours(cls_name, config, {}, 8, x_t, noises)
    np.testing.assert_allclose(np.asarray(ours.timesteps, float), ref.timesteps, rtol=1e-5, atol=0.02)
    for k, (a, b) in enumerate(zip(ours.samples, ref.samples, strict=True)):
        assert rel_err(a, b) <= 1e-4, f"{cls_name} {config}: call {k} differs from diffusers"
