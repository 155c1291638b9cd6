"""Mechanisms: switching off recovers the core model exactly; each acts as documented."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import lung_index, random_parameters

import mscpk

TIMES = np.array([0.25, 1.0, 4.0, 24.0, 48.0, 72.0])
CORE = mscpk.Mechanisms.none()


def run(product="bm_msc", mechanisms=None, parameters=None, cells=5e5, regimen=None, species="mouse"):
    kwargs = dict(cells=cells) if regimen is None else dict(regimen=regimen)
    return mscpk.simulate(
        species, product, t_end_h=72.0, times_h=TIMES, mechanisms=mechanisms, parameters=parameters, **kwargs
    )


def test_switching_everything_off_is_the_core_model():
    core = run(mechanisms=CORE)
    state = mscpk.model.layout.unpack(jnp.asarray(core.states[-1]), 5)
    assert float(state.engulfed.sum()) == 0.0 and float(state.il10) == 0.0


@pytest.mark.parametrize("product", ["bm_msc", mscpk.cell_product("bm_msc", preparation="thawed")])
def test_neutral_mechanism_parameters_recover_the_core_model(product):
    """Efferocytosis with unlimited capacity, instant digestion into the same pools,
    and no migration reduces to first-order clearance; preparation with multiplier 1
    is no preparation effect. Viable cells must then match the core model to 1e-10."""
    neutral = {
        "cryo_death_multiplier": 1.0,
        "phagocyte_migration_rate_per_h": 0.0,
        "efferocytosis_capacity_per_g": 1e30,
    }
    on = run(product, mscpk.Mechanisms(), neutral)
    off = run(product, CORE, neutral)
    for q in ("viable_cells", "dead_cells"):
        a, b = on.observations[q], off.observations[q]
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10 * 5e5)


def test_mass_balance_with_all_mechanisms_and_random_parameters(mouse_model):
    regimen = mscpk.Regimen([mscpk.Dose(0.0, 2e6), mscpk.Dose(24.0, 2e6, infusion_h=1.0)])
    for seed in range(3):
        params = random_parameters(jax.random.PRNGKey(100 + seed), mouse_model.parameters)
        thawed = mscpk.cell_product("uc_msc", preparation="rescued", rescue_h=8.0)
        r = run(thawed, mscpk.Mechanisms(), params, regimen=regimen)
        assert max(r.mass_balance().values()) <= 1e-9
        assert r.states.min() >= -1e-12 * 4e6


def test_freshly_thawed_cells_persist_less_and_rescue_restores():
    # Moll 2014 (R), Giri & Galipeau 2020, Antebi 2019, Braid 2018 (shared/LITERATURE.md).
    def lung24(**kw):
        return run(mscpk.cell_product("bm_msc", **kw)).value("viable_cells", "lung", 24.0)

    fresh, thawed = lung24(), lung24(preparation="thawed")
    rescued = lung24(preparation="rescued", rescue_h=24.0)
    assert thawed <= 0.5 * fresh
    assert abs(rescued - fresh) <= 0.2 * fresh
    assert lung24(preparation="rescued", rescue_h=4.0) < lung24(preparation="rescued", rescue_h=16.0) < fresh


def test_efferocytosis_moves_label_out_of_lung_while_viable_cells_stay():
    # Eggenhofer 2012: viable MSC only in lung; 51Cr moves to liver. de Witte 2018.
    r = run()
    df = r.to_dataframe().set_index(["time_h", "organ", "quantity"]).value
    core = run(mechanisms=CORE).to_dataframe().set_index(["time_h", "organ", "quantity"]).value
    for t in (24.0, 72.0):
        moved = df[(t, "liver", "radiolabel")] + df[(t, "spleen", "radiolabel")]
        assert moved > core[(t, "liver", "radiolabel")] + core[(t, "spleen", "radiolabel")]
    assert (
        df[(72.0, "liver", "radiolabel")] + df[(72.0, "spleen", "radiolabel")]
        > df[(72.0, "lung", "radiolabel")]
    )
    viable = r.percent_of_dose("viable_cells").loc[24.0]
    assert viable["lung"] > 20 * (viable["liver"] + viable["spleen"])
    assert df[(24.0, "lung", "engulfed_cells")] > 0


def test_il10_auc_rises_with_engulfed_cells():
    aucs, engulfed = [], []
    for cells in (2.5e5, 5e5, 1e6):
        r = run(cells=cells)
        il10 = r.observations["il10"][:, 0]
        aucs.append(np.trapezoid(il10, r.times_h))
        engulfed.append(r.observations["engulfed_cells"][:, -1].max())
    assert np.all(np.diff(aucs) > 0) and np.all(np.diff(engulfed) > 0)


def test_efferocytosis_saturates():
    """Per-cell engulfment slows when dead cells exceed phagocyte capacity."""
    small = mscpk.build_model("mouse", "bm_msc", parameters={"efferocytosis_capacity_per_g": 1e4})
    big = mscpk.build_model("mouse", "bm_msc", parameters={"efferocytosis_capacity_per_g": 1e12})
    table = mscpk.Regimen.bolus(2e6).table()

    def engulfed_lung(model):
        sol = mscpk.solve(model, table, jnp.array([24.0]), 24.0)
        return float(model.observe(sol.ys, sol.blood_input).engulfed[0, lung_index()])

    assert engulfed_lung(small) < 0.5 * engulfed_lung(big)


def test_bad_preparation_input():
    with pytest.raises(ValueError, match="CellProduct.preparation: unknown value 'frozen'"):
        mscpk.cell_product("bm_msc", preparation="frozen")
    with pytest.raises(ValueError, match="rescued product needs rescue_h > 0"):
        mscpk.cell_product("bm_msc", preparation="rescued")
    with pytest.raises(ValueError, match="only a 'rescued' product has rescue hours"):
        mscpk.cell_product("bm_msc", preparation="thawed", rescue_h=5.0)
    with pytest.raises(ValueError, match="cryo_death_multiplier"):
        mscpk.simulate("mouse", "bm_msc", cells=1e6, parameters={"cryo_death_multiplier": 0.5})
