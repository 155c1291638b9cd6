"""Bad input gets a clear error naming the field, the value and what is allowed."""

import math

import jax.numpy as jnp
import pytest

import mscpk


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(cells=-1e6), "Dose.cells"),
        (dict(cells=1e6, infusion_h=0.0), "Dose.infusion_h"),
        (dict(cells=1e6, infusion_h=-0.5), "Dose.infusion_h"),
        (dict(cells=float("nan")), "Dose.cells"),
        (dict(cells=1e6, t_end_h=0.0), "t_end_h"),
        (dict(cells=1e6, t_end_h=-5.0), "t_end_h"),
        (dict(cells=1e6, route="intranasal"), "route"),
        (dict(cells=1e6, t_end_h=10.0, times_h=[0.0, 12.0]), "times_h"),
        (dict(cells=1e6, parameters={"death_rate_per_h": {"lung": math.nan}}), "death_rate_per_h"),
        (dict(cells=1e6, parameters={"death_rate_per_h": {"liverr": 0.1}}), "unknown organ"),
        (dict(cells=1e6, parameters={"no_such_rate": 0.1}), "unknown parameter"),
        (dict(cells=1e6, parameters={"adhesion_extraction": {"liver": 1.5}}), "adhesion_extraction"),
    ],
)
def test_bad_simulate_input_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        mscpk.simulate("mouse", "bm_msc", **kwargs)


def test_unknown_species_and_product_list_allowed_values():
    with pytest.raises(ValueError, match=r"species: unknown value 'dog'; allowed: mouse, rat, human"):
        mscpk.simulate("dog", "bm_msc", cells=1e6)
    with pytest.raises(ValueError, match=r"product: unknown value 'ipsc'.*bm_msc"):
        mscpk.simulate("mouse", "ipsc", cells=1e6)
    with pytest.raises(TypeError, match="species"):
        mscpk.simulate(3, "bm_msc", cells=1e6)


def test_unknown_organ_names_allowed_organs():
    result = mscpk.simulate("mouse", "bm_msc", cells=1e6, t_end_h=2.0, times_h=[1.0])
    with pytest.raises(ValueError, match=r"organ: unknown 'lungs' for viable_cells; allowed: blood, lung"):
        result.value("viable_cells", "lungs", 1.0)
    with pytest.raises(ValueError, match="organs: unknown organ 'hearts'"):
        result.plot(organs=["hearts"])
    with pytest.raises(ValueError, match="organ: unknown organ 'pancreas'"):
        mscpk.model.layout.organ_index("pancreas")


def test_dose_after_t_end_is_rejected():
    regimen = mscpk.Regimen([mscpk.Dose(0.0, 1e6), mscpk.Dose(48.0, 1e6)])
    with pytest.raises(ValueError, match=r"dose 1 starts at 48 h, after t_end_h=24 h"):
        mscpk.simulate("mouse", "bm_msc", regimen, t_end_h=24.0)
    running = mscpk.Regimen.infusion(1e6, 2.0, time_h=23.0)
    with pytest.raises(ValueError, match=r"dose 0 ends at 25 h, after t_end_h=24 h"):
        mscpk.simulate("mouse", "bm_msc", running, t_end_h=24.0)


def test_bad_product_and_species_fields():
    with pytest.raises(ValueError, match=r"CellProduct.viability: must lie in \[0.0, 1.0\], got 1.2"):
        mscpk.cell_product("bm_msc", viability=1.2)
    with pytest.raises(ValueError, match="CellProduct.diameter_mean_um"):
        mscpk.CellProduct("x", diameter_mean_um=float("nan"), diameter_sd_um=1.0, viability=0.9)
    sp = mscpk.species("mouse")
    with pytest.raises(ValueError, match="Species.arterial_supply_fraction: must sum to 1"):
        mscpk.Species(
            "mouse",
            sp.body_weight_g,
            sp.cardiac_output_ml_per_h,
            sp.blood_volume_ml,
            sp.haematocrit,
            sp.organ_volume_ml,
            sp.arterial_supply_fraction * 0.9,
            sp.capillary_diameter_um,
        )
    with pytest.raises(ValueError, match="n_size_classes"):
        mscpk.build_model("mouse", "bm_msc", n_size_classes=0)


def test_failed_solve_raises_not_pads():
    with pytest.raises(mscpk.SolveError, match="max_steps"):
        mscpk.simulate("mouse", "bm_msc", cells=1e6, t_end_h=48.0, solver=mscpk.SolverConfig(max_steps=3))


def test_solver_config_rejects_bad_settings():
    with pytest.raises(ValueError, match="solver: unknown solver 'euler'"):
        mscpk.SolverConfig(solver="euler")
    with pytest.raises(ValueError, match="rtol"):
        mscpk.SolverConfig(rtol=0.0)


def test_results_refuse_times_that_were_not_simulated():
    result = mscpk.simulate("mouse", "bm_msc", cells=1e6, t_end_h=2.0, times_h=[1.0, 2.0])
    with pytest.raises(ValueError, match="time_h: 1.5 h is not an output time"):
        result.percent_of_dose("viable_cells", [1.5])
    assert float(jnp.asarray(result.percent_of_dose("viable_cells", [1.0]).loc[1.0, "lung"])) > 50


def test_host_and_device_misuse_is_rejected():
    with pytest.raises(ValueError, match="Host.injury_level: 1.0 given without injury_organ"):
        mscpk.Host(injury_level=1.0)
    with pytest.raises(ValueError, match="Host.gravity: unknown value 'mars'"):
        mscpk.Host(gravity="mars")
    with pytest.raises(ValueError, match="device: settling in a device needs an infusion"):
        mscpk.simulate("mouse", "bm_msc", cells=1e6, device="bag")
    with pytest.raises(ValueError, match="Dose.device: unknown value 'cup'"):
        mscpk.Dose(0.0, 1e6, infusion_h=1.0, device="cup")
    with pytest.raises(ValueError, match="Dose.site: unknown value 'arm'"):
        mscpk.Dose(0.0, 1e6, site="arm")
    with pytest.raises(ValueError, match="Host.jugular_stasis"):
        mscpk.Host(jugular_stasis=1.5)
    with pytest.raises(ValueError, match="regimen: give either a regimen or cells"):
        mscpk.simulate("mouse", "bm_msc", mscpk.Regimen.bolus(1e6), site="jugular")
