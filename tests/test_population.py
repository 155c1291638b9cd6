"""Virtual populations: reproducible from a key, correlated physiology, chunking, failures."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mscpk
from mscpk.population import (
    CARDIAC_OUTPUT_EXPONENT,
    CPU_CHUNK_PER_DEVICE,
    Variability,
    chunk_for,
    population_slots,
    simulate_population,
    subject,
    subject_keys,
)

TIMES = np.array([0.0, 1.0, 24.0, 48.0])
OUTPUTS = (("viable_cells", "lung"), ("donor_dna", "whole_body"))


def run(model, seed, chunk_size):
    """24 subjects given one 1e6-cell IV bolus, over 48 h."""
    return simulate_population(
        model,
        mscpk.Regimen.bolus(1e6),
        TIMES,
        48.0,
        24,
        jax.random.PRNGKey(seed),
        outputs=OUTPUTS,
        chunk_size=chunk_size,
    )


@pytest.fixture(scope="module")
def population(mouse_model):
    return run(mouse_model, 7, 10)


def test_same_key_same_population_whatever_the_chunking(mouse_model, population):
    again = run(mouse_model, 7, 24)
    for k in OUTPUTS:
        assert population.values[k].shape == (24, TIMES.size)
        # Subject i is drawn from fold_in(key, i): the chunk size does not change who is drawn;
        # the solves agree to round-off (vmapped batches of different widths).
        np.testing.assert_allclose(again.values[k], population.values[k], rtol=1e-9, atol=1e-6)
    assert population.success.all() and population.n == 24
    other = run(mouse_model, 8, 24)
    assert not np.allclose(other.values[OUTPUTS[0]][:, 2], population.values[OUTPUTS[0]][:, 2])
    # Subjects really differ (day-1 lung cells spread by more than 10%).
    day1 = population.values[OUTPUTS[0]][:, 2]
    assert np.std(day1) / np.mean(day1) > 0.1
    q = population.quantiles((0.05, 0.5, 0.95))[OUTPUTS[0]]
    assert q.shape == (3, TIMES.size) and np.all(q[0] <= q[1]) and np.all(q[1] <= q[2])


def test_index_ranges_of_one_key_make_up_the_population(mouse_model, population):
    """Subjects 0-9 and 10-23 in two calls (``first``) are the 24 of one call, row for row,
    as separate processes or hosts would compute them."""
    args = (mouse_model, mscpk.Regimen.bolus(1e6), TIMES, 48.0)
    kw = dict(outputs=OUTPUTS, chunk_size=10)
    head = simulate_population(*args, 10, jax.random.PRNGKey(7), **kw)
    tail = simulate_population(*args, 14, jax.random.PRNGKey(7), first=10, **kw)
    assert tail.meta["first"] == 10 and tail.n == 14
    for k in OUTPUTS:
        joined = np.concatenate([head.values[k], tail.values[k]])
        np.testing.assert_allclose(joined, population.values[k], rtol=1e-9, atol=1e-6)
    np.testing.assert_array_equal(np.concatenate([head.n_steps, tail.n_steps]), population.n_steps)


def test_subject_draws_are_bit_identical_for_the_same_key(mouse_model):
    keys = subject_keys(jax.random.PRNGKey(3), 0, 5)
    a = jax.vmap(lambda k: subject(mouse_model, k).species.body_weight_g)(keys)
    b = jax.vmap(lambda k: subject(mouse_model, k).species.body_weight_g)(
        subject_keys(jax.random.PRNGKey(3), 2, 5)
    )
    assert np.array_equal(np.asarray(a[2:]), np.asarray(b))


def test_no_variability_gives_the_reference_subject(mouse_model, solve_jit):
    zero = Variability(**{name: 0.0 for name in Variability.__dataclass_fields__})
    table = mscpk.Regimen.bolus(1e6).table()
    result = simulate_population(
        mouse_model,
        mscpk.Regimen.bolus(1e6),
        TIMES,
        48.0,
        3,
        jax.random.PRNGKey(0),
        variability=zero,
        outputs=OUTPUTS,
    )
    sol = solve_jit(mouse_model, table, jnp.asarray(TIMES), jnp.asarray(48.0))
    from mscpk.observation.assays import OUTPUT_ORGANS, ViableCells

    lung = np.asarray(ViableCells()(mouse_model.observe(sol.ys, sol.blood_input)))[
        :, OUTPUT_ORGANS.index("lung")
    ]
    for i in range(3):
        np.testing.assert_allclose(result.values[OUTPUTS[0]][i], lung, rtol=1e-9, atol=1e-6)


def test_physiology_scales_with_body_weight(mouse_model):
    keys = subject_keys(jax.random.PRNGKey(11), 0, 4000)
    sp = jax.vmap(lambda k: subject(mouse_model, k).species)(keys)
    ref = mouse_model.species
    log_bw = np.log(np.asarray(sp.body_weight_g) / float(ref.body_weight_g))
    log_co = np.log(np.asarray(sp.cardiac_output_ml_per_h) / float(ref.cardiac_output_ml_per_h))
    log_liver = np.log(np.asarray(sp.organ_volume_ml[:, 3]) / float(ref.organ_volume_ml[3]))
    # Body weight: median the reference, CV as stated.
    v = Variability()
    assert abs(np.median(log_bw)) < 0.02
    assert np.std(log_bw) == pytest.approx(np.sqrt(np.log1p(v.body_weight_cv**2)), rel=0.05)
    # Cardiac output follows BW^(3/4), organ volumes BW^1 (least-squares slopes).
    assert np.polyfit(log_bw, log_co, 1)[0] == pytest.approx(CARDIAC_OUTPUT_EXPONENT, abs=0.05)
    assert np.polyfit(log_bw, log_liver, 1)[0] == pytest.approx(1.0, abs=0.05)
    # Supply fractions are untouched (they still sum to 1).
    np.testing.assert_allclose(np.asarray(sp.arterial_supply_fraction).sum(-1), 1.0, rtol=1e-12)


def test_failed_subjects_raise_or_are_masked(mouse_model):
    tight = mscpk.SolverConfig(max_steps=5)
    args = (mouse_model, mscpk.Regimen.bolus(1e6), TIMES, 48.0, 4, jax.random.PRNGKey(0))
    with pytest.raises(mscpk.SolveError, match="failed for 4 of 4 subjects"):
        simulate_population(*args, solver=tight, outputs=OUTPUTS)
    with pytest.raises(mscpk.SolveError, match=r"subject indices: \[100, 101, 102, 103\]"):
        simulate_population(*args, solver=tight, outputs=OUTPUTS, first=100)
    masked = simulate_population(*args, solver=tight, outputs=OUTPUTS, on_failure="mask")
    assert not masked.success.any() and np.isnan(masked.values[OUTPUTS[0]]).all()


@pytest.mark.parametrize(
    "change, match",
    [
        ({"n": 0}, "n: expected an integer >= 1"),
        ({"chunk_size": 0}, "chunk_size: expected None or an integer >= 1"),
        ({"outputs": (("viable", "lung"),)}, "outputs: unknown quantity 'viable'"),
        ({"outputs": (("viable_cells", "brainstem"),)}, "outputs: 'viable_cells' has no output 'brainstem'"),
        ({"on_failure": "ignore"}, "on_failure: 'ignore'"),
        ({"first": -1}, "first: expected an integer >= 0, got -1"),
        ({"first": 2**32 - 1}, "first \\+ n: subject indices are uint32"),
        ({"times_h": [0.0, 99.0]}, "times_h: expected a non-empty 1-D array of hours in"),
    ],
)
def test_bad_input_is_named(mouse_model, change, match):
    kwargs = dict(
        model=mouse_model,
        regimen=mscpk.Regimen.bolus(1e6),
        times_h=TIMES,
        t_end_h=48.0,
        n=2,
        key=jax.random.PRNGKey(0),
    )
    kwargs.update(change)
    with pytest.raises(ValueError, match=match):
        simulate_population(**kwargs)


def test_variability_validation():
    with pytest.raises(ValueError, match="Variability.death_rate_cv: must be >= 0"):
        Variability(death_rate_cv=-0.1)
    with pytest.raises(TypeError, match="Variability.body_weight_cv: expected a finite number"):
        Variability(body_weight_cv="big")


MULTI_DEVICE_SCRIPT = """
import jax, numpy as np
jax.config.update("jax_enable_x64", True)
import mscpk
from mscpk.population import simulate_population
assert jax.local_device_count() == 4, jax.local_devices()
model = mscpk.build_model("mouse", "bm_msc")
args = (model, mscpk.Regimen.bolus(1e6), np.array([0.0, 1.0, 24.0, 48.0]), 48.0, 10, jax.random.PRNGKey(7))
kw = dict(outputs=(("viable_cells", "lung"),), chunk_size=6)
many = simulate_population(*args, **kw)  # all 4 devices: chunks of 8
one = simulate_population(*args, devices=jax.local_devices()[:1], **kw)
assert many.meta["devices"] == 4 and many.chunk_size == 8 and one.meta["devices"] == 1
a, b = many.values[("viable_cells", "lung")], one.values[("viable_cells", "lung")]
# Bit for bit on jax 0.4.31; newer XLA rounds batches of 2 and 8 differently (7e-15 seen).
np.testing.assert_allclose(a, b, rtol=1e-12, atol=0)
np.testing.assert_array_equal(many.n_steps, one.n_steps)
print("OK", float(np.std(a[:, 2])))
"""


def test_four_host_devices_give_the_results_of_one():
    """shard_map over 4 forced CPU host devices equals one device (a fresh process: the
    device count is fixed when JAX starts)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, "-c", MULTI_DEVICE_SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("OK") and float(done.stdout.split()[1]) > 0


def test_devices_must_be_jax_devices(mouse_model):
    with pytest.raises(TypeError, match="devices: expected a non-empty sequence of jax devices"):
        simulate_population(
            mouse_model, mscpk.Regimen.bolus(1e6), TIMES, 48.0, 2, jax.random.PRNGKey(0), devices=["cpu:0"]
        )


@pytest.mark.parametrize(
    "regimen, outputs, expected",
    [
        (mscpk.Regimen.bolus(1e6), (("viable_cells", "lung"),), "viable"),
        (mscpk.Regimen.bolus(1e6, route="im"), (("viable_cells", "whole_body"),), "viable+depot"),
        (mscpk.Regimen.bolus(1e6), (("il10", "blood"), ("donor_dna", "liver")), None),
    ],
)
def test_output_slots_are_closed_under_the_dynamics(mouse_model, regimen, outputs, expected):
    """The kept slots hold what the outputs read, and every left-out slot that feeds a kept
    one stays zero (no dose reaches it), checked on the Jacobians at a random state (not
    the generic points used to find the slots)."""
    from mscpk.model.layout import unpack
    from mscpk.observation.assays import OUTPUT_ORGANS
    from mscpk.population import _Outputs, output_slots
    from mscpk.solve.segments import reachable

    n = mouse_model.n_states
    columns = tuple((q, OUTPUT_ORGANS.index(o)) for q, o in outputs)
    kept = np.zeros(n, bool)
    kept[list(output_slots(mouse_model, regimen.table(), columns))] = True
    assert 0 < kept.sum() < n
    tr = mouse_model.transport()
    y = jnp.asarray(np.random.default_rng(3).uniform(0.1, 10.0, n))
    rhs = np.asarray(jax.jacfwd(lambda v: mouse_model.vector_field_from(tr, v, None))(y))
    obs = np.asarray(jax.jacfwd(lambda v: jnp.ravel(_Outputs(columns)(mouse_model, v)))(y))
    table = regimen.table()
    dosed = jnp.any((table.cells[:, None] > 0) & (jax.vmap(mouse_model.dose_vector)(table) != 0), axis=0)
    live = np.asarray(reachable(mouse_model, tr, dosed))
    feeding = np.any(rhs[kept] != 0, axis=0) | np.any(obs != 0, axis=0)
    assert not np.any(feeding & ~kept & live), "a left-out slot that doses reach feeds a kept slot"
    assert np.any(feeding & ~kept), "expected unreachable slots (e.g. alloimmune effector) in the field"
    pools = unpack(np.arange(n), mouse_model.n_size_classes)
    viable, depot = np.asarray(pools.viable).ravel(), np.asarray(pools.depot_viable).ravel()
    if expected == "viable":
        assert set(np.flatnonzero(kept)) == set(viable)
    elif expected == "viable+depot":  # the IM depot column feeds the organs
        im = np.asarray(pools.depot_viable)[:, mscpk.model.layout.DEPOTS.index("im")]
        assert set(np.flatnonzero(kept)) == set(viable) | set(im)
        assert not kept[np.setdiff1d(depot, im)].any()


@pytest.mark.parametrize(
    "regimen, outputs",
    [
        (mscpk.Regimen.bolus(1e6, route="im"), (("viable_cells", "whole_body"), ("il10", "blood"))),
        (mscpk.Regimen.infusion(1e6, 0.5), (("radiolabel", "liver"), ("dead_cells", "lung"))),
    ],
)
def test_reduced_population_matches_the_full_solve(mouse_model, regimen, outputs):
    """Integrating only the slots the outputs need gives the full system's outputs (to
    the solver tolerance: the error control sees fewer slots). The IV bolus with viable
    cells is checked against a full solve in the test of the reference subject above."""
    args = (mouse_model, regimen, TIMES, 48.0, 6, jax.random.PRNGKey(5))
    reduced = simulate_population(*args, outputs=outputs)
    full = simulate_population(*args, outputs=outputs, reduced=False)
    assert reduced.meta["slots"] < full.meta["slots"] == mouse_model.n_states
    assert len(reduced.meta["slot_indices"]) == reduced.meta["slots"] and full.meta["slot_indices"] is None
    for k in outputs:
        scale = np.max(np.abs(full.values[k]), axis=1, keepdims=True)
        np.testing.assert_allclose(reduced.values[k] / scale, full.values[k] / scale, rtol=0, atol=1e-6)
    assert reduced.success.all() and full.success.all()


def test_default_cpu_chunk_follows_the_integrated_slots(mouse_model):
    """On CPUs the default chunk keeps subjects x integrated slots per device near
    CPU_SLOTS_PER_DEVICE (a power of two per device, within 8-256); an explicit chunk_size
    or a small n wins, and simulate_population picks it from the slots it integrates."""
    cpu = jax.devices("cpu")[:1]
    assert chunk_for(10**6, devices=cpu, n_slots=283) == 16
    assert chunk_for(10**6, devices=cpu, n_slots=60) == 64
    assert chunk_for(10**6, devices=cpu, n_slots=1) == 256
    assert chunk_for(10**6, devices=cpu, n_slots=10**5) == 8
    assert chunk_for(10**6, devices=cpu) == CPU_CHUNK_PER_DEVICE
    assert chunk_for(10, devices=cpu, n_slots=60) == 10
    assert chunk_for(10**6, 100, devices=cpu, n_slots=60) == 100
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="n_slots: expected None or an integer >= 1"):
            chunk_for(10, devices=cpu, n_slots=bad)
    regimen = mscpk.Regimen.bolus(1e6)
    slots = population_slots(mouse_model, regimen)
    assert population_slots(mouse_model, regimen, reduced=False) is None
    args = (mouse_model, regimen, np.array([0.0, 24.0]), 24.0, 40, jax.random.PRNGKey(0))
    reduced = simulate_population(*args, devices=cpu)
    full = simulate_population(*args, devices=cpu, reduced=False)
    assert reduced.meta["slot_indices"] == slots and reduced.chunk_size == 40
    assert full.chunk_size == chunk_for(40, devices=cpu, n_slots=mouse_model.n_states) == 16
    np.testing.assert_allclose(
        reduced.values[("viable_cells", "lung")], full.values[("viable_cells", "lung")], rtol=1e-6
    )
