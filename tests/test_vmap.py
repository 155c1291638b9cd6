"""`jax.vmap` over a population of parameter sets equals a Python loop over them."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from conftest import lung_index, random_parameters

import mscpk

N = 300
TIMES = jnp.array([0.25, 12.5, 24.0])  # a short horizon keeps the 2 x 1000 solves quick


def test_vmap_population_equals_loop(mouse_model):
    keys = jax.random.split(jax.random.PRNGKey(42), N)
    population = jax.vmap(lambda k: random_parameters(k, mouse_model.parameters))(keys)
    table = mscpk.Regimen([mscpk.Dose(0.0, 1e6), mscpk.Dose(12.0, 1e6, infusion_h=0.5)]).table()

    def lung(params):
        model = eqx.tree_at(lambda m: m.parameters, mouse_model, params)
        sol = mscpk.solve(model, table, TIMES, 24.0)
        return model.observe(sol.ys, sol.blood_input).viable[:, lung_index()], sol.success

    batched, ok = jax.jit(jax.vmap(lung))(population)
    assert batched.shape == (N, TIMES.size) and bool(ok.all())
    single = jax.jit(lung)
    looped = np.stack(
        [np.asarray(single(jax.tree_util.tree_map(lambda a, i=i: a[i], population))[0]) for i in range(N)]
    )
    # Batched and single solves round differently (reduction order), and adaptive step
    # control can amplify that slightly: agreement to 1e-9 relative.
    np.testing.assert_allclose(np.asarray(batched), looped, rtol=1e-9, atol=1e-6)
    # The population really varies (the comparison is not between constants).
    assert np.std(looped[:, 1]) / np.mean(looped[:, 1]) > 0.05
