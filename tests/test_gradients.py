"""Gradients agree with central finite differences (diffrax test_adjoint.py pattern).

Checked for every inexact number of the model (kinetic parameters, product, species),
for a bolus dose time and for an infusion duration, on a scalar output: viable lung
cells at 24 h. Reverse mode stays finite where a local site that no dose fills has a
fast rate (the solve integrates only the slots a dose can reach).
"""

import importlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROUTE_VARIANTS, lung_index

import mscpk

TIMES = jnp.array([24.0])
# Finite differences of an adaptive solve carry the solver's error divided by the step;
# to resolve parameters with elasticities ~1e-6 to 1e-4 relative, the reference solve is
# run at rtol 1e-13 and the central step is 1e-3 relative (truncation error ~1e-6).
FD_SOLVER = mscpk.SolverConfig(rtol=1e-13, atol=1e-16, max_steps=16384)
T_END = 30.0
REGIMEN = mscpk.Regimen([mscpk.Dose(1.0, 1e6), mscpk.Dose(4.0, 5e5, infusion_h=0.75)])


def lung_at_24h(model, table):
    sol = mscpk.solve(model, table, TIMES, T_END, FD_SOLVER)
    return model.observe(sol.ys, sol.blood_input).viable[0, lung_index()] / 1e6


@pytest.fixture(scope="module")
def setup():
    model = mscpk.build_model("mouse", "bm_msc")
    params, static = eqx.partition(model, eqx.is_inexact_array)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    table = REGIMEN.table()

    def f(x):
        return lung_at_24h(eqx.combine(unravel(x), static), table)

    return jax.jit(f), jax.jit(jax.vmap(f)), flat


def central_difference(f, x, i, rel=1e-3):
    h = rel * max(abs(float(x[i])), 1e-3)
    e = jnp.zeros_like(x).at[i].set(h)
    return (float(f(x + e)) - float(f(x - e))) / (2 * h)


def central_differences(f_batch, x, rel=1e-3):
    """Central differences in every coordinate, all 2n solves in one vmapped call."""
    h = rel * jnp.maximum(jnp.abs(x), 1e-3)
    steps = jnp.diag(h)
    values = np.asarray(f_batch(jnp.concatenate([x + steps, x - steps])))
    n = x.size
    return (values[:n] - values[n:]) / (2 * np.asarray(h))


def test_gradient_every_model_parameter(setup):
    f, f_batch, x = setup
    grad = np.asarray(jax.jit(jax.grad(f))(x))
    fd = central_differences(f_batch, x)
    top = int(np.argmax(np.abs(fd)))
    assert abs(fd[top] - central_difference(f, x, top)) <= 1e-8 * abs(fd[top])  # batched == one by one
    scale = np.max(np.abs(fd * np.maximum(np.abs(np.asarray(x)), 1e-3)))
    assert scale > 0
    nonzero = np.abs(fd) * np.maximum(np.abs(np.asarray(x)), 1e-3) > 1e-6 * scale
    assert nonzero.sum() >= 20, "most parameters should matter for viable lung cells"
    rel = np.abs(grad[nonzero] - fd[nonzero]) / np.abs(fd[nonzero])
    worst = int(np.flatnonzero(nonzero)[np.argmax(rel)])
    assert rel.max() <= 1e-4, (
        f"worst relative error {rel.max():.2e} at leaf {worst}: grad {grad[worst]}, fd {fd[worst]}, x {x[worst]}"
    )
    # Parameters that do not matter have (near) zero gradient too.
    assert np.all(
        np.abs(grad[~nonzero] - fd[~nonzero]) * np.maximum(np.abs(np.asarray(x)[~nonzero]), 1e-3)
        <= 1e-6 * scale
    )


def test_gradient_dose_times_and_infusion_duration():
    """Both dose times and the infusion duration, in one compiled function."""
    model = mscpk.build_model("mouse", "bm_msc")
    table = REGIMEN.table()

    @jax.jit
    def f(x):  # x = (time of dose 0, time of dose 1, duration of dose 1)
        t = eqx.tree_at(lambda t: (t.time_h, t.duration_h), table, (x[:2], table.duration_h.at[1].set(x[2])))
        return lung_at_24h(model, t)

    x0 = jnp.array([float(table.time_h[0]), float(table.time_h[1]), float(table.duration_h[1])])
    grad = np.asarray(jax.grad(f)(x0))
    h = 1e-3
    for i in range(3):
        e = jnp.zeros(3).at[i].set(h)
        fd = (float(f(x0 + e)) - float(f(x0 - e))) / (2 * h)
        assert abs(fd) > 1e-6, "a dose time that does not matter would make this test vacuous"
        assert abs(grad[i] - fd) <= 1e-4 * abs(fd), (i, grad[i], fd)


def test_forward_mode_equals_reverse_mode():
    """``SolverConfig(adjoint="forward")`` gives jax.jacfwd the same derivatives that the
    default reverse mode gives jax.grad (both differentiate the same discrete solve), for
    kinetic rates and dose times; and reverse mode through the forward adjoint is refused."""
    model = mscpk.build_model("mouse", "bm_msc")
    table = REGIMEN.table()
    solvers = {a: mscpk.SolverConfig(rtol=1e-8, atol=1e-13, adjoint=a) for a in ("reverse", "forward")}

    def f(x, solver):  # x = (death-rate scale, release-rate scale, time of dose 1)
        p = model.parameters
        p = eqx.tree_at(
            lambda q: (q.death_rate_per_h, q.release_rate_per_h),
            p,
            (p.death_rate_per_h * x[0], p.release_rate_per_h * x[1]),
        )
        t = eqx.tree_at(lambda t: t.time_h, table, table.time_h.at[1].set(x[2]))
        m = eqx.tree_at(lambda q: q.parameters, model, p)
        sol = mscpk.solve(m, t, TIMES, T_END, solver)
        return m.observe(sol.ys, sol.blood_input).viable[0, lung_index()] / 1e6

    x0 = jnp.array([1.0, 1.0, 4.0])
    reverse = np.asarray(jax.jit(jax.grad(lambda x: f(x, solvers["reverse"])))(x0))
    forward = np.asarray(jax.jit(jax.jacfwd(lambda x: f(x, solvers["forward"])))(x0))
    assert np.all(np.abs(reverse) > 1e-6)
    np.testing.assert_allclose(forward, reverse, rtol=1e-9)
    with pytest.raises(ValueError, match="Reverse-mode differentiation does not work for lax.while_loop"):
        jax.grad(lambda x: f(x, solvers["forward"]))(x0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"adjoint": "backward"}, "SolverConfig.adjoint"),
        ({"checkpoints": 0}, "SolverConfig.checkpoints"),
        ({"norm": "l2"}, r"SolverConfig.norm: 'l2'; allowed: max, rms"),
    ],
)
def test_solver_config_rejects_bad_adjoint_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mscpk.SolverConfig(**kwargs)


def _whole_body_at(model, table, times, t_end, solver):
    sol = mscpk.solve(model, table, times, t_end, solver)
    return model.observe(sol.ys, sol.blood_input).viable[:, -1]


def test_reachable_slots_follow_the_route():
    """Only what a dose can fill is integrated: an IM dose reaches its own site and the
    body, not the other local sites; an IV dose reaches no local site; the unmasked
    right-hand side gives the same solution."""
    from mscpk.model.layout import DEPOTS, state_size, unpack

    segments = importlib.import_module("mscpk.solve.segments")
    model = mscpk.build_model("mouse", "bm_msc")
    n = state_size(model.n_size_classes)
    slots = unpack(np.arange(n), model.n_size_classes)

    def reach(route):
        table = mscpk.Regimen([mscpk.Dose(0.0, 1e6, route=route)]).table()
        per_cell = jax.vmap(model.dose_vector)(table)
        dosed = jnp.any((table.cells[:, None] > 0) & (per_cell != 0), axis=0)
        return np.asarray(segments.reachable(model, model.transport(), dosed))

    im, iv = reach("im"), reach("iv")
    depot = np.asarray(slots.depot_viable)  # (S, D)
    assert im[depot[:, DEPOTS.index("im")]].all()
    assert not im[depot[:, [d for d in range(len(DEPOTS)) if DEPOTS[d] != "im"]]].any()
    assert not iv[depot].any()
    assert iv[np.asarray(slots.viable)].all() and im[np.asarray(slots.viable)].all()
    assert im.sum() < n and iv.sum() < n

    # The same solution as the unmasked right-hand side, route by route (each dose alone,
    # so that each masks other sites), with an allogeneic product (alloimmune pools on).
    routes = ("iv", *ROUTE_VARIANTS)
    allo = mscpk.build_model("mouse", mscpk.cell_product("bm_msc", donor="allogeneic"))
    tables = [mscpk.Regimen([mscpk.Dose(0.0, 1e6, r), mscpk.Dose(24.0, 5e5, r)]).table() for r in routes]
    tables = jax.tree.map(lambda *a: jnp.stack(a), *tables)
    times = jnp.array([1.0, 30.0, 200.0])
    solver = mscpk.SolverConfig(rtol=1e-8, atol=1e-13)

    def all_routes():
        return jax.jit(jax.vmap(lambda t: mscpk.solve(allo, t, times, 240.0, solver).ys))(tables)

    masked = all_routes()
    original = segments.reachable
    try:
        segments.reachable = lambda m, tr, seed: jnp.ones_like(seed)
        unmasked = all_routes()
    finally:
        segments.reachable = original
    assert np.all(np.abs(np.asarray(masked)).max(axis=(1, 2)) > 1e5)
    np.testing.assert_allclose(masked, unmasked, rtol=1e-12, atol=1e-12)


def test_idle_fast_site_keeps_reverse_mode_finite():
    """An IM dose over 150 days with a fast-dying SC site that no dose fills: the SC
    pools stay zero, so the step size ignores their stability limit, and before session
    17 the reverse pass amplified them until the gradient was NaN (found at the
    calibration's NUTS divergences). The gradient is finite and equals forward mode."""
    model = mscpk.build_model("mouse", "bm_msc")
    table = mscpk.Regimen([mscpk.Dose(0.0, 1e6, route="im")]).table()
    times = jnp.array([3600.0])
    solvers = {a: mscpk.SolverConfig(rtol=1e-6, atol=1e-11, adjoint=a) for a in ("reverse", "forward")}
    from mscpk.model.layout import DEPOTS

    sc, im = DEPOTS.index("sc"), DEPOTS.index("im")

    def f(x, solver):  # x = log depot death rates of the IM and the (idle) SC site
        p = model.parameters
        rate = p.depot_death_rate_per_h.at[im].set(jnp.exp(x[0])).at[sc].set(jnp.exp(x[1]))
        m = eqx.tree_at(lambda q: q.parameters.depot_death_rate_per_h, model, rate)
        return jnp.log(_whole_body_at(m, table, times, 3600.0, solver)[0])

    x0 = jnp.log(jnp.array([2e-3, 5.0]))  # NaN from 2 /h without the mask
    reverse = np.asarray(jax.jit(jax.grad(lambda x: f(x, solvers["reverse"])))(x0))
    forward = np.asarray(jax.jit(jax.jacfwd(lambda x: f(x, solvers["forward"])))(x0))
    assert np.all(np.isfinite(reverse)), reverse
    assert abs(reverse[0]) > 1.0 and reverse[1] == 0.0  # the IM site matters, the idle one not
    np.testing.assert_allclose(reverse, forward, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("slots", [[], [0, 0], [-1], [10**6], [1.5], [[1, 2]]])
def test_bad_slots_are_named(mouse_model, slots):
    from mscpk.solve.segments import solve

    with pytest.raises(ValueError, match="slots: expected a non-empty sequence of distinct state indices"):
        solve(mouse_model, mscpk.Regimen.bolus(1e6).table(), jnp.asarray([1.0]), 2.0, slots=slots)


def test_mask_integrates_only_its_slots(mouse_model):
    """``solve(..., mask=...)``: the masked slots follow the full solve, the others keep
    their dosed values, and leaving out a fast pool the output does not need (the secreted
    factor, 0.7/h in a mouse) takes fewer steps; a mask of the wrong shape or type is named."""
    from mscpk.observation.assays import OUTPUT_ORGANS
    from mscpk.population import output_slots
    from mscpk.solve.segments import solve

    table = mscpk.Regimen.bolus(1e6).table()
    times = jnp.asarray([1.0, 24.0, 72.0, 240.0])
    config = mscpk.SolverConfig(rtol=1e-9, atol=1e-14)
    slots = list(output_slots(mouse_model, table, [("viable_cells", OUTPUT_ORGANS.index("lung"))]))
    mask = np.zeros(mouse_model.n_states, bool)
    mask[slots] = True
    full = solve(mouse_model, table, times, 240.0, config)
    masked = solve(mouse_model, table, times, 240.0, config, mask=jnp.asarray(mask))
    assert bool(full.success) and bool(masked.success)
    np.testing.assert_allclose(masked.ys[:, slots], full.ys[:, slots], rtol=1e-6, atol=1e-6)
    dosed = np.asarray(
        table.cells[0] * mouse_model.dose_vector(jax.tree_util.tree_map(lambda a: a[0], table))
    )
    np.testing.assert_array_equal(
        np.asarray(masked.ys)[:, ~mask], np.broadcast_to(dosed[~mask], (4, (~mask).sum()))
    )
    assert int(masked.n_steps) < int(full.n_steps)
    with pytest.raises(ValueError, match=rf"mask: expected shape \({mouse_model.n_states},\)"):
        solve(mouse_model, table, times, 240.0, config, mask=jnp.ones(10, bool))
    with pytest.raises(TypeError, match="mask: expected booleans"):
        solve(mouse_model, table, times, 240.0, config, mask=jnp.ones(mouse_model.n_states))
