"""Shared set-up: float64 everywhere, a persistent compilation cache, shared models."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")
# Equinox's runtime checks (diffrax's saveat/dt0 checks, the checkpointed adjoint's) embed
# host callbacks, and JAX's persistent cache refuses programs with host callbacks: "nan"
# keeps them out, so every test process and notebook kernel shares the compilations
# (mscpk detects failed solves from diffrax's result codes, not from these checks).
os.environ.setdefault("EQX_ON_ERROR", "nan")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
_cache = os.environ.get("JAX_COMPILATION_CACHE_DIR")
if _cache:
    jax.config.update("jax_compilation_cache_dir", _cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import pytest  # noqa: E402

import mscpk  # noqa: E402
from mscpk.calibration import defaults as _defaults  # noqa: E402

#: Reads the posterior shipped in ``mscpk/calibration/data`` (``None`` if none is).
READ_SHIPPED = _defaults._read_shipped


@pytest.fixture(scope="session", autouse=True)
def literature_defaults():
    """The suite runs on the documented literature defaults
    (:meth:`mscpk.KineticParameters.default`), not on the shipped posterior median that
    ``simulate`` uses when a calibration is shipped: most tests check the model against
    the papers those defaults were derived from (``kinetic_defaults.csv``), with
    tolerances set for them. Session-wide, so module- and session-scoped fixtures get them
    too. Tests of the shipped posterior ask for :func:`shipped_posterior`; the notebooks
    run in their own kernels, on what a user gets."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_defaults, "_read_shipped", lambda: None)
        yield


@pytest.fixture
def shipped_posterior(monkeypatch):
    """The package's shipped posterior as the defaults, for one test."""
    monkeypatch.setattr(_defaults, "_read_shipped", READ_SHIPPED)
    return READ_SHIPPED()


#: Tight tolerances for checks against exact solutions and finite differences.
TIGHT = mscpk.SolverConfig(rtol=1e-11, atol=1e-13, max_steps=16384)


@pytest.fixture(scope="session")
def mouse_model():
    return mscpk.build_model("mouse", "bm_msc")


@pytest.fixture(scope="session")
def solve_jit():
    """One jitted solve shared by all tests (compiled once per input shape/config)."""
    return eqx.filter_jit(mscpk.solve)


def lung_index() -> int:
    """Index of the lung among compartments (blood is compartment 0)."""
    return 1 + mscpk.ORGANS.index("lung")


def viable(model, sol):
    """Viable cells per compartment (T, C), with quasi-steady blood."""
    return model.observe(sol.ys, sol.blood_input).viable


#: States are non-negative to within the solver's accuracy, as a fraction of the dose: the
#: fast pools' slots (:meth:`mscpk.Model.fast_rates`) integrate a closed-form decay whose
#: numerical error does not decay with it, leaving offsets of about 2e-11 of the dose
#: (measured) once the pool has emptied; this allows 5x that.
NEGATIVE_TOLERANCE = 1e-10

#: One dose route of each kind beside IV: every local site, a cartridge and an arterial bed.
ROUTE_VARIANTS = (
    "im",
    "sc",
    "ip",
    "topical",
    "topical:hydrogel",
    "topical:patch",
    "extracorporeal",
    "ia:brain",
)


def random_parameters(key, base: mscpk.KineticParameters) -> mscpk.KineticParameters:
    """A random log-normal perturbation (sd 0.5) of every positive parameter; fractions
    are redrawn uniformly in [0, 0.9]; multipliers >= 1 keep their excess over 1 positive."""
    leaves, treedef = jax.tree_util.tree_flatten(base)
    keys = jax.random.split(key, len(leaves))
    names = mscpk.model.parameters.parameter_names()
    out = []
    for name, leaf, k in zip(names, leaves, keys, strict=True):
        if name in mscpk.model.parameters.FRACTIONS:
            out.append(jax.random.uniform(k, jnp.shape(leaf), maxval=0.9))
        elif name in mscpk.model.parameters.AT_LEAST_ONE:
            out.append(1.0 + (leaf - 1.0) * jnp.exp(0.5 * jax.random.normal(k, jnp.shape(leaf))))
        else:
            out.append(leaf * jnp.exp(0.5 * jax.random.normal(k, jnp.shape(leaf))))
    return jax.tree_util.tree_unflatten(treedef, out)


#: Tests that take a minute or more on the 2-core CI machine (``pytest --durations``,
#: 2026-11-23), longest first, and the other users of ``whole_run``. They are collected
#: first: pytest-xdist's work stealing (``make test``: ``-n auto --dist worksteal``) hands
#: each worker a contiguous half of the collection and moves not-yet-started tests from the
#: end of one queue to an idle worker, so long tests at the front cannot end up as one
#: worker's last job while the other worker idles.
LONG_TESTS = (
    "test_notebook_executes[05_calibration.ipynb]",
    "test_recovery_small",
    "test_cli_fit_one_study_and_posterior_summary",
    "test_resumable_nuts_continues_where_it_stopped",
    "test_dense_metric_from_a_pilot_run_is_kept",
    # With the two above, the users of the module fixture `whole_run` (~30 s to build):
    # next to each other at the front, one worker builds it once for all five (without
    # the last one here, a second worker built it again: a 36 s setup, 2026-12-06).
    "test_replay_reproduces_saved_transitions",
    "test_run_progress_reads_a_saved_run",
    "test_run_nuts_gives_the_resumable_runs_draws",
    "test_laplace_metric_is_the_inverse_hessian_and_scatters_the_starts",
    "test_notebook_executes[02_mechanisms.ipynb]",
    "test_likelihood_and_gradient_finite_match_finite_differences_and_prior_draws",
    "test_notebook_executes[01_quickstart.ipynb]",
    "test_gradient_every_model_parameter",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_TESTS)}
    items.sort(key=lambda item: rank.get(item.name, len(LONG_TESTS)))  # stable: others keep their order
