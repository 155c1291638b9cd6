"""Fitting a :class:`~mscpk.calibration.problem.CalibrationProblem`: MAP with optax
(several restarts) and NUTS with NumPyro, results as arviz ``InferenceData``.

Both work on NumPyro's unconstrained scale (log / logit of every parameter): the MAP is
the mode of the log-density there (it includes the log-Jacobian of the transforms), and
NUTS starts its chains from it, so warm-up does not have to find the typical set from a
prior draw far away.
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass, field

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpyro.infer import MCMC, NUTS, init_to_sample, init_to_value
from numpyro.infer.util import initialize_model

from .problem import EFFECTS, CalibrationProblem


@dataclass
class MapResult:
    """Best MAP estimate over restarts.

    ``values``: constrained values of every site; ``log_density``: log joint density on
    the unconstrained scale at ``values``; ``restarts``: final log density per restart
    (``-inf`` for a restart that never left a failed region); ``history``: log density per
    step of the best restart.
    """

    values: dict
    log_density: float
    restarts: list[float] = field(default_factory=list)
    history: list[float] = field(default_factory=list)
    seconds: float = 0.0


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")


def find_map(
    problem: CalibrationProblem,
    key,
    restarts: int = 4,
    steps: int = 200,
    learning_rate: float = 0.05,
    progress: bool = False,
) -> MapResult:
    """Maximum a posteriori estimate with optax Adam from ``restarts`` starts: the prior
    median, then prior draws. Non-finite steps (failed solves) are skipped
    (``optax.apply_if_finite``)."""
    if not isinstance(problem, CalibrationProblem):
        raise TypeError(f"problem: expected a CalibrationProblem, got {type(problem).__name__}")
    _check_int("restarts", restarts, 1)
    _check_int("steps", steps, 1)
    if not learning_rate > 0:
        raise ValueError(f"learning_rate: must be > 0, got {learning_rate!r}")
    t0 = time.perf_counter()
    keys = jax.random.split(key, restarts)
    start = init_to_value(values=problem.prior_median())
    # validate_grad=False: the gradient is compiled once, in `update`, not also here.
    info = initialize_model(keys[0], problem.model, init_strategy=start, validate_grad=False)
    potential, constrain = info.potential_fn, info.postprocess_fn
    optimiser = optax.apply_if_finite(optax.adam(learning_rate), max_consecutive_errors=20)

    @jax.jit
    def update(z, state):
        loss, g = jax.value_and_grad(potential)(z)
        updates, state = optimiser.update(g, state, z)
        return optax.apply_updates(z, updates), state, loss

    best, finals = None, []
    for r in range(restarts):
        z = info.param_info.z
        if r > 0:
            z = initialize_model(
                keys[r], problem.model, init_strategy=init_to_sample, validate_grad=False
            ).param_info.z
        state = optimiser.init(z)
        history, best_z, best_loss = [], z, np.inf
        for i in range(steps):
            z_new, state, loss = update(z, state)  # loss is the potential at z (before the step)
            loss = float(loss)
            history.append(-loss)
            if np.isfinite(loss) and loss < best_loss:
                best_z, best_loss = z, loss
            z = z_new
            if progress and (i % 20 == 0 or i == steps - 1):
                print(
                    f"MAP restart {r + 1}/{restarts} step {i + 1}/{steps}: log density {-loss:.3f}",
                    flush=True,
                )
        finals.append(-best_loss)
        if best is None or best_loss < best[1]:
            best = (best_z, best_loss, history)
    z, loss, history = best
    values = {k: np.asarray(v) for k, v in constrain(z).items()}
    return MapResult(values, -loss, finals, history, time.perf_counter() - t0)


def default_chain_method(chains: int) -> str:
    """``"parallel"`` when there are enough host devices for the chains (set
    ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` before JAX starts), else
    ``"sequential"``."""
    return "parallel" if chains > 1 and jax.local_device_count() >= chains else "sequential"


def run_nuts(
    problem: CalibrationProblem,
    key,
    chains: int = 4,
    warmup: int = 500,
    draws: int = 1000,
    init: dict | None = None,
    chain_method: str | None = None,
    max_tree_depth: int = 8,
    target_accept: float = 0.8,
    progress: bool = True,
) -> az.InferenceData:
    """NUTS (NumPyro) on ``problem``; returns ``InferenceData`` with the posterior, sample
    statistics (divergences, tree depth, ...) and attributes recording the run.

    ``init``: constrained starting values (e.g. :attr:`MapResult.values`); default the
    prior median. ``chain_method``: NumPyro's; default :func:`default_chain_method`.
    """
    if not isinstance(problem, CalibrationProblem):
        raise TypeError(f"problem: expected a CalibrationProblem, got {type(problem).__name__}")
    _check_int("chains", chains, 1)
    _check_int("warmup", warmup, 1)
    _check_int("draws", draws, 1)
    _check_int("max_tree_depth", max_tree_depth, 1)
    if not 0 < target_accept < 1:
        raise ValueError(f"target_accept: must be in (0, 1), got {target_accept!r}")
    method = default_chain_method(chains) if chain_method is None else chain_method
    if method not in ("parallel", "sequential", "vectorized"):
        raise ValueError(f"chain_method: {method!r}; allowed: parallel, sequential, vectorized")
    start = problem.prior_median() if init is None else {k: jnp.asarray(v) for k, v in init.items()}
    kernel = NUTS(
        problem.model,
        init_strategy=init_to_value(values=start),
        max_tree_depth=max_tree_depth,
        target_accept_prob=target_accept,
    )
    mcmc = MCMC(
        kernel,
        num_warmup=warmup,
        num_samples=draws,
        num_chains=chains,
        chain_method=method,
        progress_bar=progress,
    )
    t0 = time.perf_counter()
    mcmc.run(key, extra_fields=("diverging", "num_steps", "potential_energy"))
    seconds = time.perf_counter() - t0
    return to_inference_data(mcmc, problem, seconds=seconds, chain_method=method, warmup=warmup)


def to_inference_data(mcmc: MCMC, problem: CalibrationProblem, **attrs) -> az.InferenceData:
    """``InferenceData`` of a finished run with study coordinates and run attributes."""
    import mscpk

    dims = {f"z_{e}": ["study"] for e in EFFECTS} if problem.hierarchical else {}
    idata = az.from_numpyro(mcmc, log_likelihood=False, coords={"study": list(problem.study_ids)}, dims=dims)
    n_steps = np.asarray(mcmc.get_extra_fields(group_by_chain=True)["num_steps"])
    idata.sample_stats["n_steps"] = (("chain", "draw"), n_steps)
    from ..evidence import version as evidence_version

    idata.posterior.attrs.update(
        {
            "mscpk_version": mscpk.__version__,
            "evidence_version": evidence_version(),
            "evidence_rows": int(len(problem.likelihood.table)),
            "calibrated": ",".join(problem.parameter_names),
            "hierarchical": int(problem.hierarchical),
            "jax_version": jax.__version__,
            "device": str(jax.devices()[0]),
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            **{k: (v if isinstance(v, int | float | str) else str(v)) for k, v in attrs.items()},
        }
    )
    return idata


def summary(idata: az.InferenceData, var_names=None, hdi_prob: float = 0.9):
    """Table of mean, sd, HDI, MCSE, bulk/tail ESS and R-hat (arviz) of the global sites
    (default: every scalar site of the posterior)."""
    if var_names is None:
        var_names = [v for v, da in idata.posterior.data_vars.items() if da.ndim == 2]
    return az.summary(idata, var_names=list(var_names), hdi_prob=hdi_prob)


def diagnostics(idata: az.InferenceData, var_names=None) -> dict:
    """Worst R-hat, smallest bulk/tail ESS and divergence fraction of a run."""
    table = summary(idata, var_names)
    div = np.asarray(idata.sample_stats["diverging"])
    return {
        "max_r_hat": float(table["r_hat"].max()),
        "min_ess_bulk": float(table["ess_bulk"].min()),
        "min_ess_tail": float(table["ess_tail"].min()),
        "divergence_fraction": float(div.mean()),
        "draws": int(div.size),
    }
