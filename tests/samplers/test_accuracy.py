"""Measured order of accuracy on Gaussian data, where the ideal U-Net and the exact probability-flow
ODE solution are closed-form (see ``gaussian.py``).

The error is taken at the state nearest t = 200, not at the end: the last step, down to sigma = 0,
spans about half of log(1000 / N) in log-SNR whatever N is, so its error does not shrink like
N^-p and would hide the order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from .gaussian import STEPS, Gaussian, fitted_order, global_error, run_gaussian

# (sampler, options, expected order): first-order DDIM/Euler, second-order Heun and DPM++ 2M, and
# UniPC-2, whose corrector lifts the order of its predictor by one.
EXPECTED = [
    ("ddim", {}, 1.0),
    ("euler", {}, 1.0),
    ("heun", {}, 2.0),
    ("dpmpp_2m", {}, 2.0),
    ("unipc", {"solver_order": 2, "solver_type": "bh1"}, 3.0),
    ("unipc", {"solver_order": 2, "solver_type": "bh2"}, 3.0),
]


@pytest.mark.parametrize(
    "name,options,order",
    [pytest.param(n, o, p, id=f"{n}-{o.get('solver_type', 'default')}") for n, o, p in EXPECTED],
)
def test_convergence_order(name: str, options: dict[str, Any], order: float) -> None:
    gauss = Gaussian.make(dims=16, seed=0)
    landings = [run_gaussian(name, n, gauss, overrides=options) for n in STEPS]
    # The measured states sit within a few timesteps of 200 for every N (189..205).
    assert all(abs(landing.t - 200) <= 15 for landing in landings), [landing.t for landing in landings]
    errors = [global_error(landing) for landing in landings]
    assert all(np.isfinite(errors)) and all(e > 0 for e in errors), errors
    assert errors[0] > errors[1] > errors[2], f"{name}: error does not shrink with N: {errors}"
    p = fitted_order(STEPS, errors)
    assert abs(p - order) <= 0.3, (
        f"{name} {options}: measured order {p:.2f}, expected {order} (errors {errors})"
    )


def test_exact_solution_is_the_limit() -> None:
    """The reference itself: a fine Heun run converges onto the closed-form ODE solution, and the
    closed form satisfies dy/dk = (y - D(y, k)) / k (checked by a central difference)."""
    gauss = Gaussian.make(dims=8, seed=1)
    fine = run_gaussian("heun", 400, gauss)
    assert global_error(fine) < 1e-5
    y0 = np.linspace(-3, 3, 8)
    k, h = 0.7, 1e-5
    dy = (gauss.flow(y0, 5.0, k + h) - gauss.flow(y0, 5.0, k - h)) / (2 * h)
    y = gauss.flow(y0, 5.0, k)
    np.testing.assert_allclose(dy, (y - gauss.denoise(y, k)) / k, rtol=1e-6)
