"""The adaptive solver matches the exact matrix-exponential solution of the (linear)
core model, through boluses, overlapping infusions and repeated doses."""

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TIGHT

import mscpk

REGIMEN = mscpk.Regimen(
    [
        mscpk.Dose(0.0, 1e6),
        mscpk.Dose(2.0, 5e5, infusion_h=3.0),
        mscpk.Dose(3.0, 2e5, infusion_h=0.5),
        mscpk.Dose(30.0, 1e6),
    ]
)
TIMES = jnp.array([0.0, 0.1, 1.0, 2.5, 3.25, 5.0, 12.0, 30.0, 31.0, 60.0, 96.0])


@pytest.mark.parametrize("species,product", [("mouse", "bm_msc"), ("human", "bm_mnc")])
def test_solver_matches_matrix_exponential(species, product):
    # Linear configuration: every saturable mechanism off.
    model = mscpk.build_model(species, product, mechanisms=mscpk.Mechanisms.none())
    table = REGIMEN.table()
    exact = mscpk.solve_expm(model, table, TIMES, 96.0)
    numeric = mscpk.solve(model, table, TIMES, 96.0, TIGHT)
    assert bool(numeric.success)
    ys, ye = np.asarray(numeric.ys), np.asarray(exact.ys)
    scale = REGIMEN.total_cells
    significant = np.abs(ye) > 1e-6 * scale
    rel = np.abs(ys - ye)[significant] / np.abs(ye)[significant]
    assert rel.max() <= 1e-8, f"max relative error {rel.max():.2e}"
    assert np.abs(ys - ye).max() <= 1e-8 * scale
    np.testing.assert_allclose(np.asarray(numeric.blood_input), np.asarray(exact.blood_input), rtol=1e-12)


def test_core_model_is_linear(mouse_model):
    """With mechanisms off the model has no saturable term: dy/dt = A y exactly."""
    mouse_model = mscpk.build_model("mouse", "bm_msc", mechanisms=mscpk.Mechanisms.none())
    a = mouse_model.linear_matrix()
    rng = np.random.default_rng(0)
    y = jnp.asarray(rng.uniform(0, 1e6, mouse_model.n_states))
    f = mouse_model.vector_field(0.0, y, jnp.zeros_like(y))
    np.testing.assert_allclose(np.asarray(f), np.asarray(a @ y), rtol=1e-12, atol=1e-6)


@pytest.mark.parametrize("setting", [{"solver": "dopri5"}, {"solver": "dopri8"}, {"norm": "rms"}])
def test_other_solver_settings_match_matrix_exponential(setting):
    """``SolverConfig(solver=...)`` really switches the method, ``norm="rms"`` the error
    measure (step counts differ from the default Tsit5 with the max norm), and each
    reaches the exact solution at a tight tolerance."""
    model = mscpk.build_model("mouse", "bm_msc", mechanisms=mscpk.Mechanisms.none())
    table = REGIMEN.table()
    exact = np.asarray(mscpk.solve_expm(model, table, TIMES, 96.0).ys)
    config = mscpk.SolverConfig(rtol=TIGHT.rtol, atol=TIGHT.atol, max_steps=TIGHT.max_steps, **setting)
    numeric = mscpk.solve(model, table, TIMES, 96.0, config)
    tsit5 = mscpk.solve(model, table, TIMES, 96.0, TIGHT)
    assert bool(numeric.success)
    assert int(numeric.n_steps) != int(tsit5.n_steps)
    scale = REGIMEN.total_cells
    significant = np.abs(exact) > 1e-6 * scale
    rel = np.abs(np.asarray(numeric.ys) - exact)[significant] / np.abs(exact)[significant]
    assert rel.max() <= 1e-8, f"max relative error {rel.max():.2e}"
