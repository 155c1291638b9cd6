"""Issue 4: every delivery route, mixed regimens and the route comparison."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from conftest import NEGATIVE_TOLERANCE, ROUTE_VARIANTS

import mscpk
from mscpk.analysis.routes import COLUMNS, compare_routes
from mscpk.cli import main
from mscpk.model.layout import DEPOTS, unpack


@pytest.fixture(scope="module")
def mouse_routes():
    return compare_routes("mouse", "bm_msc", 1e6)


def test_route_table_columns_and_rows(mouse_routes):
    table, results = mouse_routes
    assert tuple(table.columns) == COLUMNS
    assert list(table.route) == list(results)
    assert {"iv", "ia:limb", "im", "sc", "ip", "topical:hydrogel", "extracorporeal"} <= set(table.route)


def test_braid_2018_dwell_ordering(mouse_routes):
    # Braid 2018 (Cytotherapy 20:232): IM > SC and IP > IV; IM > 5 months, SC/IP 3-4 weeks,
    # IV undetectable within days.
    t = mouse_routes[0].set_index("route")
    days = t.days_to_1pct_viable
    assert days["im"] > 90.0
    assert 14.0 <= days["sc"] <= 42.0 and 14.0 <= days["ip"] <= 42.0
    assert days["iv"] < 7.0
    hours = t.viable_cell_hours_total
    assert hours["im"] > max(hours["sc"], hours["ip"]) and min(hours["sc"], hours["ip"]) > hours["iv"]


def test_intra_arterial_lung_fraction_below_iv(mouse_routes):
    t = mouse_routes[0].set_index("route")
    assert t.lung_fraction_1h["ia:limb"] < 0.5 * t.lung_fraction_1h["iv"]
    assert t.embolic_risk["ia:limb"] > 0 and t.embolic_risk["im"] == 0


def test_hydrogel_keeps_more_viable_cells_in_the_wound_than_suspension(mouse_routes):
    _, results = mouse_routes
    week = {v: results[f"topical:{v}"] for v in ("suspension", "hydrogel", "patch")}
    at7 = {}
    for v, r in week.items():
        i = int(np.argmin(np.abs(r.times_h - 168.0)))
        at7[v] = r.observations["viable_cells"][i, r.organs_of("viable_cells").index("skin")]
    assert at7["hydrogel"] > 2.0 * at7["suspension"]
    assert at7["patch"] > at7["hydrogel"]


def test_extracorporeal_cells_never_enter_the_body(mouse_routes):
    r = mouse_routes[1]["extracorporeal"]
    for q in ("viable_cells", "dead_cells", "donor_dna", "engulfed_cells", "radiolabel"):
        assert np.all(r.observations[q] == 0.0), q
    assert r.observations["secreted_factor"][:, 0].max() > 0.0
    state = unpack(jnp.asarray(r.states[-1]), 5)
    assert float(state.depot_viable[:, DEPOTS.index("cartridge")].sum()) > 0.0  # still alive outside
    # The factor reaching blood rises with the circuit's blood flow.
    p = mscpk.KineticParameters.default()
    transfer = [
        float(mscpk.Model.cartridge_transfer(p.replace(cartridge_blood_flow_ml_per_h=q)))
        for q in (1e3, 9e3, 3e4)
    ]
    assert 0 < transfer[0] < transfer[1] < transfer[2] < 1


def test_mass_balance_every_route_and_mixed_regimens(mouse_routes):
    for name, r in mouse_routes[1].items():
        assert max(r.mass_balance().values()) <= 1e-9, name
    mixed = mscpk.Regimen(
        [
            mscpk.Dose(0.0, 1e6, "iv"),
            mscpk.Dose(2.0, 5e5, "im"),
            mscpk.Dose(3.0, 5e5, "topical:hydrogel"),
            mscpk.Dose(5.0, 5e5, "ia:brain", infusion_h=0.5, device="syringe"),
            mscpk.Dose(6.0, 2e5, "ip"),
            mscpk.Dose(6.0, 2e5, "extracorporeal"),
        ]
    )
    host = mscpk.Host(injury_organ="skin", injury_level=1.0)
    product = mscpk.cell_product("bm_msc", donor="allogeneic")
    r = mscpk.simulate("mouse", product, mixed, t_end_h=240.0, host=host)
    assert max(r.mass_balance().values()) <= 1e-9
    assert np.all(r.states >= -NEGATIVE_TOLERANCE * mixed.total_cells)


def test_gradients_of_route_parameters_match_finite_differences():
    regimen = mscpk.Regimen(
        [mscpk.Dose(0.0, 1e6, name) for name in ROUTE_VARIANTS]  # fmt: skip
    )
    model = mscpk.build_model("mouse", mscpk.cell_product("bm_msc", donor="allogeneic"))
    table = regimen.table()
    solver = mscpk.SolverConfig(rtol=1e-11, atol=1e-15)
    names = (
        "critical_diameter_ratio",  # first-pass arrest in the intra-arterial bed
        "arrest_steepness",
        "depot_death_rate_per_h",
        "depot_exit_rate_per_h",
        "secretion_rate_ng_per_cell_h",
        "cartridge_blood_flow_ml_per_h",
        "cartridge_permeability_surface_ml_per_h",
        "cartridge_effluent_flow_ml_per_h",
    )

    def f(x):
        p = model.parameters
        values, k = {}, 0
        for n in names:
            size = np.size(getattr(p, n))
            values[n] = x[k : k + size].reshape(np.shape(getattr(p, n)))
            k += size
        m = eqx.tree_at(lambda m: m.parameters, model, p.replace(**values))
        sol = mscpk.solve(m, table, jnp.array([24.0, 120.0]), 120.0, solver)
        obs = m.observe(sol.ys, sol.blood_input)
        lung, muscle = 1 + mscpk.ORGANS.index("lung"), 1 + mscpk.ORGANS.index("muscle")
        brain = 1 + mscpk.ORGANS.index("brain")
        return (
            obs.viable[:, 1:].sum() / 1e6
            + obs.viable[:, brain].sum() / 1e5
            + obs.viable[:, muscle].sum() / 1e6
            + obs.viable[:, lung].sum() / 1e3
            + obs.secreted_factor.sum()
        )

    x0 = jnp.concatenate([jnp.ravel(getattr(model.parameters, n)) for n in names])
    grad = np.asarray(jax.jit(jax.grad(f))(x0))
    fj = jax.jit(f)
    checked = 0
    for i in range(x0.size):
        h = 1e-4 * max(abs(float(x0[i])), 1e-5)
        e = jnp.zeros_like(x0).at[i].set(h)
        fd = (float(fj(x0 + e)) - float(fj(x0 - e))) / (2 * h)
        if abs(fd) * max(abs(float(x0[i])), 1e-5) < 1e-9:
            assert abs(grad[i]) * max(abs(float(x0[i])), 1e-5) < 1e-8, i
            continue
        checked += 1
        assert abs(grad[i] - fd) <= 1e-5 * abs(fd), (i, grad[i], fd)
    assert checked >= 12


def test_cli_routes(tmp_path, capsys):
    out = tmp_path / "routes.csv"
    assert (
        main(["compare-routes", "--species", "mouse", "--cells", "1e6", "--days", "30", "--out", str(out)])
        == 0
    )
    table = pd.read_csv(out)
    assert tuple(table.columns) == COLUMNS and len(table) == 9
    assert "extracorporeal" in capsys.readouterr().out
    sim = tmp_path / "t.csv"
    assert main(["simulate", "--route", "topical", "--vehicle", "patch", "--cells", "1e5", "--hours", "48",
                 "--out", str(sim)]) == 0  # fmt: skip
    assert main(["simulate", "--route", "iv", "--vehicle", "patch", "--cells", "1e5", "--out", str(sim)]) == 2
    assert "--vehicle: only used with --route topical" in capsys.readouterr().err
