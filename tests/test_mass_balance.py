"""Mass balance and non-negativity for random parameters and multi-dose regimens.

Non-negativity holds to within the solver's accuracy (``conftest.NEGATIVE_TOLERANCE``).
"""

import jax
import numpy as np
import pytest
from conftest import NEGATIVE_TOLERANCE, random_parameters

import mscpk

REGIMENS = {
    "single bolus": mscpk.Regimen.bolus(2e6),
    "infusion": mscpk.Regimen.infusion(1e6, 0.75),
    "mixed repeated": mscpk.Regimen(
        [
            mscpk.Dose(0.0, 1e6),
            mscpk.Dose(6.0, 5e5, infusion_h=1.5),
            mscpk.Dose(6.5, 2e5),  # bolus during a running infusion
            mscpk.Dose(30.0, 1e6, infusion_h=0.25, device="bag"),
            mscpk.Dose(30.0, 3e5),  # same start time as the infusion
        ]
    ),
}


@pytest.mark.parametrize("name", list(REGIMENS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mass_balance_random_parameters(name, seed, mouse_model):
    params = random_parameters(jax.random.PRNGKey(seed), mouse_model.parameters)
    species = ("mouse", "rat", "human")[seed]
    result = mscpk.simulate(species, "bm_msc", REGIMENS[name], t_end_h=72.0, parameters=params)
    errors = result.mass_balance()
    assert set(errors) == {"cells", "dna", "label"}
    for what, err in errors.items():
        assert err <= 1e-9, f"{what} mass balance error {err:.2e}"
    assert result.states.min() >= -NEGATIVE_TOLERANCE * REGIMENS[name].total_cells


def test_mass_balance_counts_every_pool(mouse_model):
    """The check is not vacuous: removing one pool from the books breaks it."""
    result = mscpk.simulate("mouse", "bm_msc", cells=1e6, t_end_h=48.0)
    totals = mouse_model.totals(result.states)
    state = mscpk.model.layout.unpack(result.states[-1], mouse_model.n_size_classes)
    assert np.isclose(float(totals["cells"][-1]), 1e6, rtol=1e-9)
    assert float(state.cells_cleared) > 1e4  # clearance did happen, so it had to be counted
    assert float(state.dead.sum()) > 1e3


def test_states_nonnegative_and_whole_body_declines():
    result = mscpk.simulate("mouse", "uc_msc", cells=5e5, t_end_h=168.0)
    whole = result.observations["viable_cells"][:, -1]
    assert result.states.min() >= -NEGATIVE_TOLERANCE * 5e5
    assert np.all(np.diff(whole[result.times_h > 0]) <= 1e-9 * 5e5)
