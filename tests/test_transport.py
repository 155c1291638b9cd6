"""Transport: arrest probabilities, conservation of the circulation, and the
quasi-steady circulation against an independent dynamic-blood reference model."""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.linalg import expm

import mscpk
from mscpk.model.transport import LIVER, LUNG, PORTAL_ORGANS, redistribute, size_extraction

ORGANS = mscpk.ORGANS


def test_size_extraction_monotone_and_half_at_critical_diameter():
    d = jnp.linspace(2.0, 60.0, 200)
    e = size_extraction(d, jnp.array([6.0]), jnp.asarray(2.0), jnp.asarray(7.0))[:, 0]
    assert np.all(np.diff(np.asarray(e)) > 0)
    assert float(e[0]) < 1e-3 and float(e[-1]) > 0.999
    half = size_extraction(jnp.array([12.0]), jnp.array([6.0]), jnp.asarray(2.0), jnp.asarray(7.0))
    assert np.isclose(float(half[0, 0]), 0.5)


@pytest.mark.parametrize("product", ["bm_msc", "bm_mnc", "spheroid_msc"])
def test_circulation_partitions_sum_to_one(product):
    model = mscpk.build_model("rat", product)
    tr = model.transport()
    for c in (tr.cells, tr.label):
        np.testing.assert_allclose(np.asarray(c.pool.sum(1) + c.pool_dead), 1.0, rtol=1e-13)
        np.testing.assert_allclose(np.asarray(c.release.sum(1) + c.release_dead), 1.0, rtol=1e-13)
        assert float(c.pool.min()) >= 0 and float(c.release.min()) >= 0


@pytest.mark.parametrize(
    "species,product", [("rat", "bm_msc"), ("mouse", "spheroid_msc"), ("human", "bm_mnc")]
)
def test_redistribute_is_the_release_matrix_product(species, product):
    """The factored form applies the full (S, O, O) release matrix, batched too."""
    tr = mscpk.build_model(species, product).transport()
    rng = np.random.default_rng(7)
    for c in (tr.cells, tr.label, tr.aggregates):
        released = jnp.asarray(rng.uniform(0.0, 2.0, (3,) + c.pool.shape))
        expected = jnp.einsum("sij,bsj->bsi", c.release, released)
        np.testing.assert_allclose(
            np.asarray(redistribute(c, released)), np.asarray(expected), rtol=1e-13, atol=0
        )


def dynamic_blood_reference(model, t):
    """Independent reference: explicit venous and arterial blood pools (seconds-fast)
    with per-pass arrest, solved exactly by expm; viable cells only, one size class per
    column, death and release as in the model. Returns viable organ cells (S, O)."""
    sp, r = model.species, model.rates
    e = np.asarray(model.extraction())
    q = np.asarray(sp.arterial_supply_fraction)
    Q = float(sp.cardiac_output_ml_per_h)
    vv, va = 2.0 / 3.0 * float(sp.blood_volume_ml), 1.0 / 3.0 * float(sp.blood_volume_ml)
    kd, kr, kbd = (
        np.asarray(r.death_rate_per_h),
        np.asarray(r.release_rate_per_h),
        float(r.blood_death_rate_per_h),
    )
    n_o = len(ORGANS)
    ven, art = n_o, n_o + 1
    out = []
    _, w = model.size_classes()
    for s in range(e.shape[0]):
        a = np.zeros((n_o + 2, n_o + 2))
        # venous -> lung (arrest) or arterial
        a[LUNG, ven] += Q / vv * e[s, LUNG]
        a[art, ven] += Q / vv * (1 - e[s, LUNG])
        a[ven, ven] -= Q / vv + kbd
        a[art, art] -= Q / va + kbd
        for i, o in enumerate(ORGANS):
            if o == "lung":
                continue
            flow = Q / va * q[i]
            a[i, art] += flow * e[s, i]
            passed = flow * (1 - e[s, i])
            if o in PORTAL_ORGANS:
                a[LIVER, art] += passed * e[s, LIVER]
                a[ven, art] += passed * (1 - e[s, LIVER])
            else:
                a[ven, art] += passed
        for i, o in enumerate(ORGANS):
            a[i, i] -= kr[i] + kd[i]
            if o == "lung":
                a[art, i] += kr[i]
            elif o in PORTAL_ORGANS:
                a[LIVER, i] += kr[i] * e[s, LIVER]
                a[ven, i] += kr[i] * (1 - e[s, LIVER])
            else:
                a[ven, i] += kr[i]
        y0 = np.zeros(n_o + 2)
        y0[ven] = float(w[s]) * float(model.product.viability)
        out.append(np.asarray(expm(jnp.asarray(a) * t) @ y0)[:n_o])
    return np.array(out)


@pytest.mark.parametrize("species,product", [("mouse", "bm_msc"), ("mouse", "bm_mnc"), ("human", "bm_msc")])
def test_quasi_steady_circulation_matches_dynamic_blood(species, product):
    """Beyond a few blood residence times, the quasi-steady model equals a model with
    explicit (seconds-fast) venous and arterial blood."""
    model = mscpk.build_model(species, product, mechanisms=mscpk.Mechanisms.none())
    residence = float(model.blood_residence_h().max())  # seconds to minutes
    assert residence < 0.1
    t = max(0.5, 20 * residence)
    ref = dynamic_blood_reference(model, t)
    sol = mscpk.solve(
        model, mscpk.Regimen.bolus(1.0).table(), jnp.array([t]), t, mscpk.SolverConfig(rtol=1e-11, atol=1e-14)
    )
    assert bool(sol.success)
    ours = np.asarray(mscpk.model.layout.unpack(sol.ys[0], model.n_size_classes).viable)
    np.testing.assert_allclose(ours.sum(0), ref.sum(0), rtol=2e-3, atol=1e-7)


def test_solve_reports_failure_instead_of_zeros(mouse_model, solve_jit):
    table = mscpk.Regimen.bolus(1e6).table()
    inside = solve_jit(mouse_model, table, jnp.array([1.0, 2.0]), jnp.asarray(2.0))
    outside = solve_jit(mouse_model, table, jnp.array([1.0, 3.0]), jnp.asarray(2.0))
    assert bool(inside.success) and not bool(outside.success)
    late = mscpk.Regimen([mscpk.Dose(0.0, 1e6), mscpk.Dose(1.5, 1e6, infusion_h=1.0)]).table()
    assert not bool(solve_jit(mouse_model, late, jnp.array([1.0, 2.0]), jnp.asarray(2.0)).success)
    starved = solve_jit(
        mouse_model, table, jnp.array([1.0, 2.0]), jnp.asarray(2.0), mscpk.SolverConfig(max_steps=2)
    )
    assert not bool(starved.success)


def test_intra_arterial_delivery_meets_the_target_bed_first():
    """Issue 4 (part): IA cells arrest in the target bed on first pass; those that pass
    reach the lung, so the lung holds less than after IV delivery."""
    times = [1.0]
    iv = mscpk.simulate("mouse", "bm_msc", cells=1e6, t_end_h=2.0, times_h=times)
    iv_lung = iv.percent_of_dose("viable_cells").loc[1.0, "lung"]
    for target, organ in mscpk.routes.IA_TARGETS.items():
        r = mscpk.simulate("mouse", "bm_msc", cells=1e6, route=f"ia:{target}", t_end_h=2.0, times_h=times)
        pct = r.percent_of_dose("viable_cells").loc[1.0]
        assert pct[organ] > 50.0, target
        assert pct["lung"] < iv_lung, target
        assert max(r.mass_balance().values()) <= 1e-9
    with pytest.raises(ValueError, match="needs a target bed"):
        mscpk.Dose(0.0, 1e6, route="ia")
    with pytest.raises(ValueError, match="IntraArterial.target: unknown value 'toe'"):
        mscpk.Dose(0.0, 1e6, route="ia:toe")
    assert mscpk.routes.route("ia", "brain") == mscpk.routes.route("ia:brain")


def test_intra_arterial_first_pass_arrest_of_large_cells():
    """Issue 4 acceptance (part): first-pass arrest in every target bed >= 0.8 for cells
    of 20 um and more (Toma 2009: 92 +/- 7 % of 23 um MSC arrest on first pass)."""
    for species in ("mouse", "rat", "human"):
        model = mscpk.build_model(species, "bm_msc")
        p = model.parameters
        d = jnp.array([20.0, 23.0, 30.0])
        e = size_extraction(
            d, model.species.capillary_diameter_um, p.critical_diameter_ratio, p.arrest_steepness
        )
        for organ in mscpk.routes.IA_TARGETS.values():
            column = np.asarray(e[:, mscpk.ORGANS.index(organ)])
            assert column[0] >= 0.8 and np.all(np.diff(column) > 0), (species, organ, column)


def _embolic_risk(product="bm_msc", cells=1e6, route="ia:brain", hours=None):
    import jax

    model = mscpk.build_model("rat", product)
    regimen = (
        mscpk.Regimen.bolus(cells, route=route)
        if hours is None
        else mscpk.Regimen.infusion(cells, hours, route=route)
    )
    return float(jax.vmap(model.embolic_risk)(regimen.table()).sum())


def test_embolic_risk_index_rises_with_size_and_dose():
    by_size = [_embolic_risk(mscpk.cell_product("bm_msc", diameter_mean_um=d)) for d in (10, 15, 20, 25, 30)]
    assert np.all(np.diff(by_size) > 0)
    by_dose = [_embolic_risk(cells=c) for c in (2.5e5, 5e5, 1e6, 2e6)]
    np.testing.assert_allclose(np.diff(np.log(by_dose)), np.log(2.0), rtol=1e-12)  # linear in dose
    by_time = [_embolic_risk(hours=h) for h in (None, 0.1, 1.0, 4.0)]
    assert np.all(np.diff(by_time) < 0)  # slower infusions occlude fewer vessels at once
    msc = {p: _embolic_risk(p) for p in ("bm_msc", "uc_msc", "at_msc", "spheroid_msc")}
    assert min(msc, key=msc.get) == "spheroid_msc"
    # IV: the lung is the first bed; no arterial bed is met.
    assert 0 < _embolic_risk(route="iv") < _embolic_risk()


def test_embolic_risk_gradient_matches_finite_differences():
    import jax

    model = mscpk.build_model("rat", "bm_msc")
    row = jax.tree_util.tree_map(lambda a: a[0], mscpk.Regimen.infusion(1e6, 0.2, route="ia:brain").table())
    names = ("capillary_flow_ml_per_h", "embolus_resolution_rate_per_h", "aggregate_diameter_ratio")

    def f(x):
        p = model.parameters.replace(**dict(zip(names, x, strict=True)))
        m = eqx.tree_at(lambda m: m.parameters, model, p)
        return m.embolic_risk(row)

    x0 = jnp.array([float(getattr(model.parameters, n)) for n in names])
    g = np.asarray(jax.grad(f)(x0))
    for i in range(2):  # aggregates: none without a device, so no sensitivity
        h = 1e-6 * float(x0[i])
        e = jnp.zeros_like(x0).at[i].set(h)
        fd = (float(f(x0 + e)) - float(f(x0 - e))) / (2 * h)
        assert abs(g[i] - fd) <= 1e-6 * abs(fd), (names[i], g[i], fd)
    assert g[2] == 0.0
