"""Every sampler equals diffusers' scheduler, step by step, over the configs checkpoints ship.

Both sides run the same loop (scale_model_input -> stand-in U-Net -> step) from the same initial
noise; the stochastic samplers get diffusers' noise draws replaced by the arrays handed to our
``step(noise=...)``.  Each side feeds the model its *own* samples, so an error anywhere shows up
in every later sample, and history-dependent solvers are checked on their whole history.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from .reference import (
    ALL_SAMPLERS,
    BASE_CONFIGS,
    DIFFUSERS,
    SD15_PNDM,
    STOCHASTIC,
    noises_for,
    rel_err,
    run_diffusers,
    run_ours,
    stand_in_model,
    supported_options,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

SHAPE = (1, 4, 8, 8)
RTOL = 1e-4  # float32 vs float32; diffusers in float32 vs float64 differs by < 1e-5 on this grid

# diffusers' classes that reject prediction_type="sample" (NotImplementedError / ValueError).
NO_SAMPLE_PREDICTION = {"euler_a", "dpm2", "dpm2_a", "pndm"}


def _cases() -> list[Any]:
    cases: list[Any] = []

    def add(name: str, cfg: str, steps: int, **opts: Any) -> None:
        label = ",".join(f"{k}={v}" for k, v in opts.items()) or "default"
        cases.append(pytest.param(name, cfg, opts, steps, id=f"{name}-{cfg}-{label}-{steps}"))

    for name in ALL_SAMPLERS:
        ok = supported_options(name)
        for steps in (1, 2, 3, 7, 25, 50):
            add(name, "sd15", steps)
        for steps in (4, 25):
            add(name, "sd21v", steps)
            add(name, "sdxl", steps)
        add(name, "none", 7)  # diffusers' own class defaults (linear betas 1e-4..0.02)
        if "timestep_spacing" in ok:  # DPMSolverSinglestep has no spacing option
            for spacing in ("linspace", "leading", "trailing"):
                add(name, "sd15", 7, timestep_spacing=spacing)
        # squaredcos_cap_v2 has sigma_max ~ 2e4.  dpm2_a: diffusers' float32 sigma_down cancels
        # to 0 there and it returns NaN.  heun: its first step from 2e4 leaves |x| ~ 4e4 made of
        # cancellations, and diffusers in float32 vs float64 already differ by 1.7e-4 > RTOL.
        if name not in ("dpm2_a", "heun"):
            add(name, "sd15", 5, beta_schedule="squaredcos_cap_v2")
        add(name, "sd15", 5, beta_schedule="linear")
        if name not in NO_SAMPLE_PREDICTION:
            add(name, "sd15", 6, prediction_type="sample")
        add(name, "sd15", 6, prediction_type="v_prediction")
        for sig in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
            if sig in ok:
                add(name, "sd15", 8, **{sig: True})
        if "final_sigmas_type" in ok:
            add(name, "sd15", 8, final_sigmas_type="sigma_min")
            if "use_karras_sigmas" in ok:
                add(name, "sd15", 8, use_karras_sigmas=True, final_sigmas_type="sigma_min")
        if "rescale_betas_zero_snr" in ok:
            add(
                name,
                "sd15",
                8,
                rescale_betas_zero_snr=True,
                timestep_spacing="trailing",
                prediction_type="v_prediction",
            )
        if "thresholding" in ok:
            add(name, "sd15", 6, thresholding=True, prediction_type="sample", sample_max_value=0.8)

    for order in (1, 2, 3):
        for solver_type in ("bh1", "bh2"):
            add("unipc", "sd15", 8, solver_order=order, solver_type=solver_type)
        add("unipc", "sd15", 9, solver_order=order, predict_x0=False)
        # diffusers' order-3 solve at a zero final sigma is singular (log-SNR step ratio 0).
        final = {"final_sigmas_type": "sigma_min"} if order == 3 else {}
        add("unipc", "sd15", 9, solver_order=order, lower_order_final=False, **final)
    add("unipc", "sd15", 25, solver_order=3, solver_type="bh1")
    add("unipc", "sd15", 8, disable_corrector=[0])
    add("unipc", "sd15", 8, disable_corrector=[0, 1, 2, 3, 4, 5, 6, 7])
    add("unipc", "sd15", 8, solver_type="bh1", final_sigmas_type="sigma_min")
    add("unipc", "sd15", 8, solver_type="bh1", use_karras_sigmas=True)

    for name in ("dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde"):
        add(name, "sd15", 8, solver_type="heun")
        add(name, "sd15", 8, lower_order_final=False, final_sigmas_type="sigma_min")
        add(name, "sd15", 8, euler_at_final=True)
        add(name, "sd15", 8, use_lu_lambdas=True)
    for order in (1, 3):
        add("dpmpp_2m", "sd15", 9, solver_order=order)
    # The noise-prediction variants (their outputs are converted back from the data prediction);
    # diffusers takes them with final_sigmas_type "sigma_min" only.
    noise_pred = {"final_sigmas_type": "sigma_min"}
    for order in (1, 2, 3):
        add("dpmpp_2m", "sd15", 9, solver_order=order, algorithm_type="dpmsolver", **noise_pred)
        add("dpmpp_2s", "sd15", 9, solver_order=order, algorithm_type="dpmsolver", **noise_pred)
    for order in (1, 2):
        add("dpmpp_2m_sde", "sd15", 9, solver_order=order, algorithm_type="sde-dpmsolver", **noise_pred)
    add("dpmpp_2s", "sd21v", 9, solver_order=2, algorithm_type="dpmsolver", **noise_pred)
    add("dpmpp_2m", "sd15", 25, solver_order=3, use_karras_sigmas=True)

    for order in (1, 2, 3):
        add("dpmpp_2s", "sd15", 9, solver_order=order)
        add("dpmpp_2s", "sd15", 10, solver_order=order, lower_order_final=True)
    add("dpmpp_2s", "sd15", 8, solver_type="heun")

    for order in (1, 3):
        add("deis", "sd15", 9, solver_order=order)
    add("deis", "sd15", 9, lower_order_final=False)

    for eta in (0.5, 1.0):
        add("ddim", "sd15", 7, eta=eta)
        add("ddim", "sd21v", 7, eta=eta)
    add("ddim", "sd15", 7, set_alpha_to_one=True)
    add("ddim", "sd15", 7, clip_sample=True, prediction_type="sample", clip_sample_range=0.5)

    add("lcm", "sd15", 4, original_inference_steps=25)
    add("lcm", "sd15", 4, timestep_scaling=5.0)
    add("lcm", "sd15", 8, set_alpha_to_one=True)

    add("pndm", "sd15", 9, set_alpha_to_one=True)
    for steps in (4, 25):  # PNDM proper: three Runge-Kutta steps, then 4-step Adams-Bashforth
        add("pndm", "sd15", steps, skip_prk_steps=False)
        add("pndm", "sd21v", steps, skip_prk_steps=False)

    betas = np.linspace(0.0002, 0.015, 1000).tolist()
    for name in ("ddim", "euler", "dpmpp_2m"):
        add(name, "sd15", 6, trained_betas=betas)
    return cases


CASES = _cases()


def _assert_parity(name: str, ours, ref, label: str) -> None:
    assert len(ours.timesteps) == len(ref.timesteps), (ours.timesteps, ref.timesteps)
    # Integer timesteps must be identical.  Fractional ones (sigma samplers map sigma -> t) get
    # 0.02 of a training step: diffusers computes them in float32, and e.g. DPM2-a's sigma_down
    # = sqrt(s^2 - s_up^2) cancels there (2 steps: t = 0.0096 in float32, exactly 0 in float64).
    integral = np.all(np.mod(ref.timesteps, 1) == 0)
    np.testing.assert_allclose(
        np.asarray(ours.timesteps, dtype=np.float64),
        ref.timesteps.astype(np.float64),
        rtol=1e-5,
        atol=0 if integral else 0.02,
        err_msg=f"{label}: timesteps differ",
    )
    assert ours.init_noise_sigma == pytest.approx(ref.init_noise_sigma, rel=1e-5), "init_noise_sigma"
    assert len(ours.samples) == len(ref.samples)
    for k, (a, b) in enumerate(zip(ours.model_inputs, ref.model_inputs, strict=True)):
        err = rel_err(a, b)
        assert err <= RTOL, f"{label}: model input {k} (t={ref.timesteps[k]}) rel err {err:.2e}"
    for k, (a, b) in enumerate(zip(ours.samples, ref.samples, strict=True)):
        assert a.dtype == np.float32, f"{label}: sample {k} came back as {a.dtype}, not the caller's float32"
        assert np.isfinite(b).all(), f"{label}: diffusers' reference is not finite at call {k}"
        err = rel_err(a, b)
        assert err <= RTOL, (
            f"{label}: sample after call {k}/{len(ref.samples)} (t={ref.timesteps[k]}) rel err {err:.2e}"
        )


@pytest.mark.parametrize("name,cfg,opts,steps", CASES)
def test_matches_diffusers(name: str, cfg: str, opts: dict[str, Any], steps: int) -> None:
    config = None if cfg == "none" else BASE_CONFIGS[cfg]
    rng = np.random.default_rng(steps * 7919 + len(opts))
    x_t = rng.standard_normal(SHAPE, dtype=np.float32)
    noises = noises_for(4 * steps + 4, SHAPE, seed=steps + 1)
    ref = run_diffusers(name, config, opts, steps, x_t, noises)
    ours = run_ours(name, config, opts, steps, x_t, noises)
    if (name in STOCHASTIC or opts.get("eta")) and len(ref.samples) > 1:
        # The patched randn_tensor was really used, so both sides saw the same draws.
        assert ref.noise_calls, f"diffusers' {name} drew no noise through randn_tensor"
    _assert_parity(name, ours, ref, f"{name} {cfg} {opts} steps={steps}")


# img2img: pipelines start at step ``start`` with add_noise(x0, noise, t_start), the way
# StableDiffusionImg2ImgPipeline does (set_begin_index, timesteps[start * order:]).
@pytest.mark.parametrize(
    "name", ["ddim", "euler", "euler_a", "heun", "dpm2", "dpmpp_2m", "unipc", "dpmpp_2m_sde", "lms", "pndm"]
)
def test_img2img_start_mid_schedule(name: str) -> None:
    rng = np.random.default_rng(3)
    x0 = rng.standard_normal(SHAPE, dtype=np.float32) * np.float32(0.7)
    x_t = rng.standard_normal(SHAPE, dtype=np.float32)
    noises = noises_for(40, SHAPE, seed=4)
    ref = run_diffusers(name, SD15_PNDM, {}, 10, x_t, noises, start=4, x0=x0)
    ours = run_ours(name, SD15_PNDM, {}, 10, x_t, noises, start=4, x0=x0)
    _assert_parity(name, ours, ref, f"{name} img2img from step 4 of 10")


@pytest.mark.parametrize("name", ALL_SAMPLERS)
@pytest.mark.parametrize("cfg", ["sd15", "sd21v"])
def test_add_noise(name: str, cfg: str) -> None:
    import torch
    from sdlite.samplers import make_scheduler

    from .reference import make_diffusers

    rng = np.random.default_rng(5)
    x0 = rng.standard_normal(SHAPE, dtype=np.float32)
    noise = rng.standard_normal(SHAPE, dtype=np.float32)
    ref = make_diffusers(name, BASE_CONFIGS[cfg], {})
    ref.set_timesteps(12)
    ours = make_scheduler(name, BASE_CONFIGS[cfg])
    ours.set_timesteps(12)
    # Pipelines add noise at the first timestep of a step (index start * order): the
    # interpolated timesteps of Heun/DPM2 are never used for it.
    for k in (0, 3 * ref.order, 11 * ref.order):  # steps 0, 3 and the last of 12
        expected = ref.add_noise(
            torch.from_numpy(x0), torch.from_numpy(noise), ref.timesteps[k : k + 1]
        ).numpy()
        got = ours.add_noise(x0, noise, np.asarray(ours.timesteps)[k : k + 1])
        err = rel_err(got, expected)
        assert err <= RTOL, f"{name} add_noise at timestep index {k}: rel err {err:.2e}"


def test_every_sampler_is_covered() -> None:
    from sdlite.samplers import SAMPLERS

    assert set(ALL_SAMPLERS) <= set(SAMPLERS), sorted(set(ALL_SAMPLERS) - set(SAMPLERS))
    assert set(DIFFUSERS) == set(ALL_SAMPLERS)


@pytest.mark.parametrize("name", ALL_SAMPLERS)
@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_sample_keeps_the_callers_dtype(name: str, dtype: type) -> None:
    """Schedule math is float64 inside, but the sample comes back in the dtype it came in."""
    from sdlite.samplers import make_scheduler

    s = make_scheduler(name, SD15_PNDM)
    s.set_timesteps(4)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(SHAPE) * s.init_noise_sigma).astype(dtype)
    for t in s.timesteps:
        inp = s.scale_model_input(x, t)
        assert inp.dtype == dtype, f"{name}: scale_model_input returned {inp.dtype} for {dtype.__name__}"
        x = s.step(
            stand_in_model(inp, float(t)).astype(dtype), t, x, noise=rng.standard_normal(SHAPE).astype(dtype)
        )
        assert x.dtype == dtype, f"{name}: step returned {x.dtype} for {dtype.__name__} input"
        assert np.isfinite(x).all()
