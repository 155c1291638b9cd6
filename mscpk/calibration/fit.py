"""Fitting a :class:`~mscpk.calibration.problem.CalibrationProblem`: MAP with optax
(several restarts) and NUTS with NumPyro, results as arviz ``InferenceData``.

Both work on NumPyro's unconstrained scale (log / logit of every parameter): the MAP is
the mode of the log-density there (it includes the log-Jacobian of the transforms), and
NUTS starts its chains from it, so warm-up does not have to find the typical set from a
prior draw far away.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpyro.infer import MCMC, NUTS, init_to_sample, init_to_value
from numpyro.infer.util import ParamInfo, initialize_model

from .._sizes import bucket
from ..evidence.likelihood import CENSORED_LAPSE
from ._arviz import az
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
    optimiser = optax.apply_if_finite(optax.adam(learning_rate), max_consecutive_errors=20)
    # The potential's value and gradient are the problem's one compiled program (shared
    # with NUTS's initial state); the optimiser's step is a small program of its own.
    step = jax.jit(lambda g, state, z: _adam_step(optimiser, g, state, z))

    best, finals = None, []
    for r in range(restarts):
        if r == 0:
            z = problem.unconstrain(problem.prior_median())
        else:
            # A prior draw where the potential is finite (NumPyro's validity check).
            drawn = initialize_model(
                keys[r], problem.model, init_strategy=init_to_sample, validate_grad=False
            )
            z = jax.tree.map(lambda x: jnp.asarray(x, dtype=jnp.result_type(x)), drawn.param_info.z)
        state = optimiser.init(z)
        history, best_z, best_loss = [], z, np.inf
        for i in range(steps):
            loss, g = problem.value_and_grad(z)  # the potential at z, before the step
            z_new, state = step(g, state, z)
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
    values = {k: np.asarray(v) for k, v in problem.constrain(z).items()}
    return MapResult(values, -loss, finals, history, time.perf_counter() - t0)


def _adam_step(optimiser, g, state, z):
    updates, state = optimiser.update(g, state, z)
    return optax.apply_updates(z, updates), state


def default_chain_method(chains: int) -> str:
    """``"parallel"`` when there are enough host devices for the chains (set
    ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` before JAX starts), else
    ``"sequential"``."""
    return "parallel" if chains > 1 and jax.local_device_count() >= chains else "sequential"


#: Per-draw statistics collected from NUTS besides the draws.
EXTRA_FIELDS = ("diverging", "num_steps", "potential_energy")


def _chain_method(chains: int, chain_method: str | None) -> str:
    method = default_chain_method(chains) if chain_method is None else chain_method
    if method not in ("parallel", "sequential", "vectorized"):
        raise ValueError(f"chain_method: {method!r}; allowed: parallel, sequential, vectorized")
    return method


def _check_nuts_args(problem, chains, warmup, draws, max_tree_depth, target_accept):
    if not isinstance(problem, CalibrationProblem):
        raise TypeError(f"problem: expected a CalibrationProblem, got {type(problem).__name__}")
    _check_int("chains", chains, 1)
    _check_int("warmup", warmup, 1)
    _check_int("draws", draws, 1)
    _check_int("max_tree_depth", max_tree_depth, 1)
    if not 0 < target_accept < 1:
        raise ValueError(f"target_accept: must be in (0, 1), got {target_accept!r}")


def _kernel(problem, start: dict, max_tree_depth: int, target_accept: float, **adapted) -> NUTS:
    return NUTS(
        problem.model,
        init_strategy=init_to_value(values=start),
        max_tree_depth=max_tree_depth,
        target_accept_prob=target_accept,
        **adapted,
    )


def _sizes(z: dict) -> dict:
    """Flat size of each site of an unconstrained position, in NumPyro's order (sorted)."""
    return {k: int(np.size(z[k])) for k in sorted(z)}


def _metric(z: dict, dense_mass, inverse_mass_matrix, adapt_mass_matrix) -> dict:
    """The kernel's mass-matrix settings (checked): ``dense_mass``, and a given dense
    inverse mass matrix over all sites as NumPyro's ``{sites: matrix}``."""
    if not isinstance(dense_mass, bool):
        raise TypeError(f"dense_mass: expected True or False, got {dense_mass!r}")
    if not isinstance(adapt_mass_matrix, bool):
        raise TypeError(f"adapt_mass_matrix: expected True or False, got {adapt_mass_matrix!r}")
    if inverse_mass_matrix is None:
        if not adapt_mass_matrix:
            raise ValueError("adapt_mass_matrix: False needs an inverse_mass_matrix to keep")
        return {"dense_mass": True} if dense_mass else {}
    d = sum(_sizes(z).values())
    m = np.asarray(inverse_mass_matrix, dtype=np.float64)
    if m.shape != (d, d):
        raise ValueError(
            f"inverse_mass_matrix: expected a ({d}, {d}) matrix (the model's unconstrained "
            f"parameters, sites in sorted order), got shape {m.shape}"
        )
    if not np.all(np.isfinite(m)) or not np.allclose(m, m.T, rtol=1e-10, atol=0.0):
        raise ValueError("inverse_mass_matrix: must be finite and symmetric")
    try:
        np.linalg.cholesky(m)
    except np.linalg.LinAlgError:
        raise ValueError("inverse_mass_matrix: must be positive definite") from None
    return {
        "dense_mass": True,
        "inverse_mass_matrix": {tuple(sorted(z)): jnp.asarray(m)},
        "adapt_mass_matrix": adapt_mass_matrix,
    }


def dense_metric(problem: CalibrationProblem, samples: dict) -> np.ndarray:
    """A dense inverse mass matrix for NUTS: the covariance of ``samples`` (constrained
    draws of every latent site, leading dimensions chains x draws, e.g. a pilot run's) on
    NUTS's unconstrained scale, all draws pooled, sites flattened in sorted order.

    Shrunk toward a small diagonal as Stan and NumPyro do for their adapted matrices:
    ``n/(n+5) cov + 1e-3 5/(n+5) I``. Use it as ``inverse_mass_matrix`` of
    :func:`run_nuts_resumable` (with ``adapt_mass_matrix=False`` the run keeps it and
    adapts the step size only), when parameters are correlated so strongly that the
    diagonal matrix NumPyro adapts by default needs long trajectories.
    """
    from numpyro.infer.util import transform_fn

    z0 = problem.prior_median()
    missing = sorted(set(z0) - set(samples))
    if missing:
        raise ValueError(f"samples: no draws of {missing}")
    lead = {np.shape(samples[k])[:2] for k in z0}
    if len(lead) != 1 or any(len(s) != 2 for s in lead):
        raise ValueError(
            f"samples: expected leading dimensions (chains, draws) shared by all sites, got {lead}"
        )
    (chains, draws) = lead.pop()
    n = chains * draws
    if n < 2:
        raise ValueError(f"samples: need at least 2 draws, got {n}")
    # The sites' transforms are elementwise (log, logit, identity): they apply to the
    # stacked draws directly.
    flat = {k: jnp.asarray(np.reshape(samples[k], (n, *np.shape(z0[k])))) for k in z0}
    z = transform_fn(problem.transforms(), flat, invert=True)
    x = np.concatenate([np.asarray(z[k]).reshape(n, -1) for k in sorted(z)], axis=1)
    if not np.all(np.isfinite(x)):
        raise ValueError("samples: not finite on the unconstrained scale (a draw outside a support?)")
    cov = np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])
    return n / (n + 5.0) * cov + 1e-3 * 5.0 / (n + 5.0) * np.eye(x.shape[1])


def laplace_metric(
    problem: CalibrationProblem, values: dict, step: float = 1e-3, min_curvature: float = 1e-2
) -> np.ndarray:
    """A dense inverse mass matrix for NUTS without a pilot run: the covariance of the
    Laplace approximation at ``values`` (e.g. the MAP), i.e. the inverse Hessian of
    NUTS's potential (the negative log joint density on the unconstrained scale, with the
    transforms' log-Jacobians), sites flattened in sorted order as :func:`dense_metric`.

    The Hessian is taken by central differences of the autodiff gradient with ``step`` on
    the unconstrained scale (2 D gradient evaluations; forward-mode autodiff, and so
    ``jax.hessian``, does not pass diffrax's checkpointed adjoint) and symmetrised. Its
    eigenvalues below ``min_curvature`` are raised to it: a direction that is flat, or
    curved the wrong way, at ``values`` (``values`` is not an exact optimum; the
    likelihood has flat floors, see ``CENSORED_LAPSE``) gets a standard deviation of
    ``1/sqrt(min_curvature)`` instead of an infinite or negative variance.
    """
    from jax.flatten_util import ravel_pytree

    if not isinstance(problem, CalibrationProblem):
        raise TypeError(f"problem: expected a CalibrationProblem, got {type(problem).__name__}")
    for name, v in (("step", step), ("min_curvature", min_curvature)):
        if not (isinstance(v, (int, float)) and np.isfinite(v) and v > 0):
            raise ValueError(f"{name}: must be a finite number > 0, got {v!r}")
    x0, unravel = ravel_pytree(problem.unconstrain(values))  # checks that every site has a value

    def grad(x):  # the problem's compiled value and gradient (shared with MAP and NUTS)
        return ravel_pytree(problem.value_and_grad(unravel(x))[1])[0]

    d = x0.shape[0]
    hess = np.empty((d, d))
    for i in range(d):
        e = jnp.zeros(d).at[i].set(step)
        hess[:, i] = (np.asarray(grad(x0 + e)) - np.asarray(grad(x0 - e))) / (2.0 * step)
    if not np.all(np.isfinite(hess)):
        bad = sorted({i for i in range(d) if not np.all(np.isfinite(hess[:, i]))})
        raise ValueError(
            f"values: the potential's gradient is not finite within {step} of values along "
            f"unconstrained coordinates {bad} (a failed solve?)"
        )
    lam, vec = np.linalg.eigh(0.5 * (hess + hess.T))
    cov = (vec / np.maximum(lam, min_curvature)) @ vec.T
    return 0.5 * (cov + cov.T)


def pilot_draws(directory, since: int | None = None) -> dict:
    """The constrained draws saved by a resumable run in ``directory`` from iteration
    ``since`` on (default: the second half of its warm-up), warm-up and draws together,
    grouped by chain: the input of :func:`dense_metric`."""
    directory = Path(directory)
    config = _run_config_file(directory)
    if since is None:
        since = config["warmup"] // 2
    kept = [x for x in map(_load, sorted(directory.glob("piece_*.pkl"))) if x["first"] >= since]
    if not kept:
        raise ValueError(f"directory: {directory} has no saved iterations from {since} on")
    return {
        k: np.concatenate([np.asarray(x["samples"][k]) for x in kept], axis=1) for k in kept[0]["samples"]
    }


def _adapted(state, chains: int) -> dict:
    """Step size and (diagonal) inverse mass matrix of an earlier run's saved state, as the
    starting values of a new run's adaptation (geometric mean / mean over chains); ``{}``
    for none."""
    if state is None:
        return {}
    a = state.adapt_state
    step = np.asarray(a.step_size)
    imm = a.inverse_mass_matrix
    if chains > 1:
        step = np.exp(np.mean(np.log(step)))
        imm = {k: np.asarray(v).mean(0) for k, v in imm.items()}
    return {"step_size": float(step), "inverse_mass_matrix": {k: jnp.asarray(v) for k, v in imm.items()}}


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
    dense_mass: bool = False,
    progress: bool = True,
) -> az.InferenceData:
    """NUTS (NumPyro) on ``problem``; returns ``InferenceData`` with the posterior, sample
    statistics (divergences, tree depth, ...) and attributes recording the run.

    ``init``: constrained starting values (e.g. :attr:`MapResult.values`); default the
    prior median. ``chain_method``: NumPyro's; default :func:`default_chain_method`.
    ``dense_mass``: adapt a dense mass matrix (NumPyro's; default diagonal).

    NumPyro's ``MCMC`` runs NUTS on :meth:`CalibrationProblem.potential` from the start's
    potential and gradient (:meth:`CalibrationProblem.value_and_grad`, shared with
    :func:`find_map`): the draws are those of NUTS on the model, without the gradient
    program NumPyro's model set-up would compile for the start.
    """
    _check_nuts_args(problem, chains, warmup, draws, max_tree_depth, target_accept)
    method = _chain_method(chains, chain_method)
    _metric(problem.prior_median(), dense_mass, None, True)  # checks dense_mass
    start = problem.prior_median() if init is None else {k: jnp.asarray(v) for k, v in init.items()}
    t0 = time.perf_counter()
    z = problem.unconstrain(start)
    # NUTS on the problem's potential, not on the model: NumPyro then skips its model
    # set-up, which evaluates and compiles a gradient of its own at the start; the start's
    # potential and gradient come from the problem's compiled ``value_and_grad``, which the
    # MAP has usually compiled already. Same density (the model's potential) and draws
    # constrained by the model's transforms.
    start_info = _every_chain(ParamInfo(z, *problem.value_and_grad(z)), chains)
    kernel = NUTS(
        potential_fn=problem.potential,
        max_tree_depth=max_tree_depth,
        target_accept_prob=target_accept,
        # NumPyro's structure for a model (sites in sorted order), so that the momenta and
        # hence the draws are those of NUTS on the model.
        dense_mass=[tuple(sorted(z))] if dense_mass else [],
    )
    mcmc = MCMC(
        kernel,
        num_warmup=warmup,
        num_samples=draws,
        num_chains=chains,
        chain_method=method,
        progress_bar=progress,
        postprocess_fn=problem.constrain,
    )
    mcmc.run(key, init_params=start_info, extra_fields=EXTRA_FIELDS)
    seconds = time.perf_counter() - t0
    return to_inference_data(mcmc, problem, seconds=seconds, chain_method=method, warmup=warmup)


def to_inference_data(mcmc: MCMC, problem: CalibrationProblem, **attrs) -> az.InferenceData:
    """``InferenceData`` of a finished run with study coordinates and run attributes."""
    idata = az.from_numpyro(
        mcmc,
        log_likelihood=False,
        coords={"study": list(problem.study_ids)},
        dims=_dims(problem),
        pred_dims={},  # no predictions; arviz would otherwise trace the sampler's model
    )
    n_steps = np.asarray(mcmc.get_extra_fields(group_by_chain=True)["num_steps"])
    idata.sample_stats["n_steps"] = (("chain", "draw"), n_steps)
    return _with_attrs(idata, problem, attrs)


def _dims(problem: CalibrationProblem) -> dict:
    return {f"z_{e}": ["study"] for e in EFFECTS} if problem.hierarchical else {}


def _with_attrs(idata: az.InferenceData, problem: CalibrationProblem, attrs: dict) -> az.InferenceData:
    import mscpk

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


# ---------------------------------------------------------------------- resumable runs
def _save(path: Path, obj) -> None:
    """Pickle ``obj`` to ``path`` atomically (a stopped process leaves the old file)."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(obj, f)
    os.replace(tmp, path)


def _load(path: Path):
    with open(path, "rb") as f:
        return pickle.load(f)


def _run_config(problem, chains, warmup, max_tree_depth, target_accept, key) -> dict:
    return {
        "format": 2,  # 1: the staged warm-up of sessions 6-8 (each piece re-adapting from scratch)
        "chains": chains,
        "warmup": warmup,
        "max_tree_depth": max_tree_depth,
        "target_accept": target_accept,
        "calibrated": list(problem.parameter_names),
        "hierarchical": problem.hierarchical,
        "studies": list(problem.study_ids),
        "evidence_rows": int(len(problem.likelihood.table)),
        "censored_lapse": CENSORED_LAPSE,  # the likelihood changed with it (runs before it lack it)
        "lapse_unit": "statement",  # one lapse per quoted statement (session 15; was per row)
        # Recorded only when not 0, so that runs saved before it existed continue.
        **(
            {"detection_limit_log_sd": problem.likelihood.detection_limit_log_sd}
            if problem.likelihood.detection_limit_log_sd
            else {}
        ),
        "key": np.asarray(
            jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
        ).tolist(),
    }


def _every_chain(tree, chains: int):
    """``tree`` (one chain's) with a leading axis of ``chains`` copies when ``chains > 1``
    (NumPyro's batched layout), else as it is."""
    if chains == 1:
        return tree
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (chains, *jnp.shape(x))), tree)


def _initial_state(kernel, problem, key, warmup: int, z, chains: int):
    """NumPyro's initial NUTS state at unconstrained ``z`` (batched over chains when
    ``chains > 1``), in one compiled call. The potential and its gradient there come from
    :meth:`CalibrationProblem.value_and_grad` (one chain at a time), so this program
    holds no gradient of its own: a gradient through the solver is what takes long to
    compile, and the MAP has compiled the problem's already."""
    one = [jax.tree.map(lambda x, c=c: x[c], z) for c in range(chains)] if chains > 1 else [z]
    pe, grad = zip(*(problem.value_and_grad(zc) for zc in one), strict=True)
    if chains > 1:
        pe, grad = jnp.stack(pe), jax.tree.map(lambda *g: jnp.stack(g), *grad)
    else:
        pe, grad = pe[0], grad[0]
    init = jax.jit(lambda k, p: kernel.init(k, warmup, init_params=p, model_args=(), model_kwargs={}))
    return init(key, ParamInfo(z, pe, grad))


def run_nuts_resumable(
    problem: CalibrationProblem,
    key,
    directory,
    chains: int = 4,
    warmup: int = 500,
    draws: int = 1000,
    chunk: int = 25,
    init: dict | None = None,
    chain_method: str | None = None,
    max_tree_depth: int = 8,
    target_accept: float = 0.8,
    hours: float | None = None,
    warm_start=None,
    dense_mass: bool = False,
    inverse_mass_matrix=None,
    adapt_mass_matrix: bool = True,
    init_scatter: float = 0.0,
    step_size: float | None = None,
    share_step_size: bool = False,
    progress: bool = True,
) -> az.InferenceData | None:
    """NUTS as :func:`run_nuts`, saved to ``directory`` as it goes, so that a run longer
    than one process can live (hours on a 2-core CPU) is continued by calling again with
    the same arguments.

    The run is NumPyro's own warm-up (one adaptation schedule over ``warmup``
    iterations) followed by the draws, cut into pieces of at most ``chunk`` iterations:
    each piece starts from the saved state of the previous one (positions, adaptation
    state with its window counter, and the chains' own random keys) and is saved when it
    ends. So a stopped process loses at most one piece, and how the run is cut (the
    ``chunk``, where it stopped) does not change its result. ``hours``: stop after the
    first piece that ends past this wall time (and return ``None``; every call runs at
    least one piece); ``draws`` may be raised on a later call to extend the run; the
    other settings are checked against the saved ones (a mismatch is a ``ValueError``).

    ``warm_start``: an earlier run's ``HMCState`` (batched over the same number of chains):
    the chains start at its positions, and the adaptation from its step size and mean
    inverse mass matrix (it adapts anew over ``warmup``). Returns the ``InferenceData`` of
    all ``draws`` once they are collected.

    The mass matrix: diagonal and adapted (NumPyro's default); ``dense_mass``: dense and
    adapted; ``inverse_mass_matrix``: a given dense one (e.g. :func:`dense_metric` of a
    pilot run's draws) to start from, or, with ``adapt_mass_matrix=False``, to keep, the
    warm-up then adapting the step size only (NumPyro's schedule re-starts the step-size
    adaptation at the end of each of its windows, so a kept matrix is best paired with
    ``warmup < 20``: one window).

    ``init_scatter``: with a given ``inverse_mass_matrix`` and no ``warm_start``, chain
    ``c`` starts at ``init`` moved on the unconstrained scale by ``init_scatter`` times a
    draw from N(0, inverse_mass_matrix) (a key of its own from ``key``): with the
    :func:`laplace_metric` at the MAP and ``init_scatter=1``, the chains start from draws
    of the Laplace approximation, dispersed as R-hat assumes, not all at the mode.

    ``step_size``: every chain's leapfrog step size, kept through warm-up and draws (no
    step-size adaptation; the warm-up then only adapts the mass matrix, if that adapts).
    Dual averaging over a short warm-up leaves chains with step sizes several times apart;
    a common step (e.g. the smallest an earlier run adapted, see ``mscpk posterior
    progress``) makes the chains comparable, at the cost of longer trajectories. It does
    not by itself remove divergences that come from the posterior's shape (session 16,
    ``benchmarks/RESULTS.md``).

    ``share_step_size``: at the end of warm-up, every chain continues with the geometric
    mean of the step sizes the chains adapted (each chain's own, by default). With a
    short warm-up, dual averaging leaves them ~2x apart, and the chain with the smallest
    takes the longest trajectories: as the chains run in parallel, it sets each piece's
    wall time (``benchmarks/shared_step.py``: 1.32x less wall time over 20 draws per chain
    of the shipped run, no divergences).
    """
    _check_nuts_args(problem, chains, warmup, draws, max_tree_depth, target_accept)
    metric = _metric(problem.prior_median(), dense_mass, inverse_mass_matrix, adapt_mass_matrix)
    if step_size is not None and not (
        isinstance(step_size, (int, float)) and not isinstance(step_size, bool) and 0 < step_size < np.inf
    ):
        raise ValueError(f"step_size: must be None or a finite number > 0, got {step_size!r}")
    if not (isinstance(init_scatter, (int, float)) and np.isfinite(init_scatter) and init_scatter >= 0):
        raise ValueError(f"init_scatter: must be a finite number >= 0, got {init_scatter!r}")
    if init_scatter > 0 and (inverse_mass_matrix is None or warm_start is not None):
        raise ValueError(
            "init_scatter: only with a given inverse_mass_matrix (the scatter's covariance) and no warm_start"
        )
    _check_int("chunk", chunk, 1)
    if hours is not None and not hours > 0:
        raise ValueError(f"hours: must be > 0, got {hours!r}")
    method = _chain_method(chains, chain_method)
    if method == "vectorized":
        raise ValueError(
            "chain_method: 'vectorized' is not supported by the resumable run; use parallel or sequential"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = _run_config(problem, chains, warmup, max_tree_depth, target_accept, key)
    config["warm_start"] = warm_start is not None
    # Recorded only when not NumPyro's default, so that runs saved before these existed continue.
    if metric.get("dense_mass"):
        config["dense_mass"] = True
    if "inverse_mass_matrix" in metric:
        m = np.ascontiguousarray(next(iter(metric["inverse_mass_matrix"].values())))
        config["inverse_mass_matrix_sha256"] = hashlib.sha256(m.tobytes()).hexdigest()
        config["adapt_mass_matrix"] = adapt_mass_matrix
    if init_scatter > 0:
        config["init_scatter"] = float(init_scatter)
    if step_size is not None:
        config["step_size"] = float(step_size)
    if not isinstance(share_step_size, bool):
        raise TypeError(
            f"share_step_size: expected a bool, got {type(share_step_size).__name__} {share_step_size!r}"
        )
    if share_step_size:
        config["share_step_size"] = True
    config_file = directory / "config.pkl"
    if config_file.exists():
        saved = _load(config_file)
        changed = sorted(k for k in config.keys() | saved.keys() if saved.get(k) != config.get(k))
        if changed:
            raise ValueError(
                f"directory: {directory} holds a run with other settings ({', '.join(changed)}); "
                "use a new directory or the same settings"
            )
    else:
        _save(config_file, config)
    t_start = time.perf_counter()
    start = problem.prior_median() if init is None else {k: jnp.asarray(v) for k, v in init.items()}
    adapted = {**_adapted(warm_start, chains), **metric}
    if step_size is not None:
        adapted.update(step_size=float(step_size), adapt_step_size=False)
    z_start = problem.unconstrain(start)

    init_file = directory / "init.pkl"
    if not init_file.exists():
        t0 = time.perf_counter()
        if warm_start is not None:
            z0 = {k: jnp.asarray(v) for k, v in warm_start.z.items()}
            lead = {np.shape(v)[0] if chains > 1 else None for v in z0.values()}
            if chains > 1 and lead != {chains}:
                raise ValueError(
                    f"warm_start: expected positions of {chains} chains, got leading sizes {lead}"
                )
        else:
            z = z_start
            z0 = _every_chain(z, chains)
            if init_scatter > 0:
                z0 = _scattered(z_start, np.asarray(inverse_mass_matrix), init_scatter, chains, key)
        keys = key if chains == 1 else jax.random.split(key, chains)
        # A kernel of its own: with a batch of keys, `init` swaps in a vmapped sample function.
        kernel = _kernel(problem, start, max_tree_depth, target_accept, **adapted)
        state = _initial_state(kernel, problem, keys, warmup, z0, chains)
        _save(init_file, {"state": jax.device_get(state), "seconds": time.perf_counter() - t0})
    run_piece = _piece_runner(
        problem,
        start,
        z_start,
        max_tree_depth,
        target_accept,
        adapted,
        warmup,
        chains,
        method,
        _piece_length_bound(chunk),
    )
    pieces = sorted(directory.glob("piece_*.pkl"))
    state = _load(pieces[-1] if pieces else init_file)["state"]
    while True:
        done = int(np.min(np.asarray(state.i)))
        if done >= warmup + draws:
            break
        n = min(chunk, warmup - done) if done < warmup else min(chunk, warmup + draws - done)
        if share_step_size and done == warmup and chains > 1:  # the first piece of draws
            state = shared_step_size(state)
        t0 = time.perf_counter()
        state, samples, extra = run_piece(state, n)
        piece = {
            "first": done,
            "n": n,
            "phase": "warmup" if done < warmup else "draws",
            "samples": samples,
            "extra": extra,
            "state": state,
            "seconds": time.perf_counter() - t0,
        }
        if progress:
            print(
                f"NUTS {piece['phase']} iterations {done}-{done + n} of {warmup + draws}: "
                f"{piece['seconds']:.0f} s, leapfrog steps per iteration {extra['num_steps'].mean():.1f}, "
                f"divergences {int(extra['diverging'].sum())}",
                flush=True,
            )
        path = directory / f"piece_{len(pieces):04d}.pkl"
        _save(path, piece)
        pieces.append(path)
        if done + n < warmup + draws and hours is not None and time.perf_counter() - t_start > 3600.0 * hours:
            return None
    return _from_pieces(problem, directory, pieces, warmup, draws, method)


def shared_step_size(state):
    """``state`` (an ``HMCState`` batched over chains) with every chain at the geometric
    mean of the chains' step sizes; after warm-up NumPyro samples with that value."""
    a = state.adapt_state
    step = np.asarray(a.step_size)
    shared = np.full_like(step, np.exp(np.mean(np.log(step.astype(float)))))
    return state._replace(adapt_state=a._replace(step_size=shared))


def set_up_kernel(kernel, warmup: int, z) -> None:
    """Sets up ``kernel``'s sample function for a run with ``warmup`` warm-up iterations
    from the one-chain position ``z``. NumPyro builds it in ``init``; here ``init`` is
    traced (``jax.eval_shape``), not compiled or run: op by op it repeats NumPyro's eager
    set-up, and compiling it took ~9 s on the reduced problem, for a state that is not
    used (a run's state is its own, saved, ``init``)."""
    jax.eval_shape(
        lambda z: kernel.init(jax.random.PRNGKey(0), warmup, init_params=z, model_args=(), model_kwargs={}), z
    )


def _scattered(z: dict, cov: np.ndarray, scale: float, chains: int, key) -> dict:
    """``chains`` positions ``z + scale L e`` (``L L^T = cov``, ``e`` standard normal from
    a key folded from ``key``), sites flattened in sorted order as the dense metric;
    batched over chains when ``chains > 1``."""
    from jax.flatten_util import ravel_pytree

    x, unravel = ravel_pytree(z)
    e = jax.random.normal(jax.random.fold_in(key, 0x5CA7), (chains, x.shape[0]), dtype=x.dtype)
    moved = x + scale * e @ jnp.asarray(np.linalg.cholesky(cov)).T
    if chains == 1:
        return unravel(moved[0])
    return jax.vmap(unravel)(moved)


def _piece_length_bound(chunk: int) -> int:
    """The longest piece one compiled loop of :func:`_piece_runner` runs for a run cut
    into pieces of at most ``chunk``: the next power of two, at least 32, so that runs
    with different chunks (10, 20, 25) share the program."""
    return bucket(chunk, 32)


def _digest(x) -> tuple:
    """A hashable stand-in for kernel settings that hold arrays (step sizes, mass
    matrices): their dtypes, shapes and bytes."""
    if isinstance(x, dict):
        return tuple((k, _digest(v)) for k, v in sorted(x.items(), key=lambda kv: repr(kv[0])))
    if isinstance(x, bool | int | float | str | type(None)):
        return (type(x).__name__, x)
    a = np.ascontiguousarray(np.asarray(x))
    return (str(a.dtype), a.shape, hashlib.sha256(a.tobytes()).hexdigest())


def _piece_runner(
    problem, start, z_start, max_tree_depth, target_accept, adapted, warmup, chains, method, longest
):
    """``run(state, n) -> (state, samples, extra)``: ``n`` (at most ``longest``) NUTS
    iterations of every chain from ``state`` (batched over chains when ``chains > 1``),
    the draws constrained and grouped by chain, as NumPy. The kernel's ``num_warmup`` is
    the run's: it adapts while the state's counter is below it, so pieces continue the
    one schedule and draws do not adapt.

    One compiled loop serves every piece: the state and ``n`` are its arguments (NumPyro's
    ``MCMC.run`` closes over its state, so each piece was a new program: ~20 s to compile
    on the reduced problem, ~35 s on the whole one), and the draws go into buffers of
    ``longest`` rows, so a warm-up's last, shorter piece needs no program of its own. The
    runner is kept on ``problem`` per setting, so that a run continued in the same process
    (a notebook, the tests) is not traced and lowered again."""
    settings = (
        _digest(start),
        _digest(z_start),
        max_tree_depth,
        float(target_accept),
        _digest(adapted),
        warmup,
        chains,
        method,
        longest,
    )
    kept = problem._piece_runners.get(settings)
    if kept is not None:
        return kept
    kernel = _kernel(problem, start, max_tree_depth, target_accept, **adapted)
    set_up_kernel(kernel, warmup, z_start)  # its one-chain sample function
    constrain = kernel.postprocess_fn((), {})

    def record(s):
        return s.z, s.diverging, s.num_steps, s.potential_energy, s.accept_prob

    def one_chain(state, n):
        def body(i, carry):
            s, rows = carry
            s = kernel.sample(s, (), {})
            return s, jax.tree.map(lambda b, x: b.at[i].set(x), rows, record(s))

        rows = jax.tree.map(lambda x: jnp.zeros((longest, *jnp.shape(x)), jnp.result_type(x)), record(state))
        state, (z, div, steps, pe, acc) = jax.lax.fori_loop(0, n, body, (state, rows))
        extra = {"diverging": div, "num_steps": steps, "potential_energy": pe, "accept_prob": acc}
        return state, jax.vmap(constrain)(z), extra

    if chains == 1:
        compiled = jax.jit(one_chain)
    elif method == "parallel":
        compiled = jax.pmap(one_chain, in_axes=(0, None))
    else:  # sequential
        compiled = jax.jit(lambda s, n: jax.lax.map(lambda x: one_chain(x, n), s))

    def run(state, n):
        if not 1 <= n <= longest:
            raise ValueError(f"n: a piece runs 1 to {longest} iterations, got {n!r}")
        state, samples, extra = jax.device_get(compiled(state, np.int32(n)))
        # rows beyond n are the buffers' unused ones
        if chains == 1:  # group by chain, as for several
            samples, extra = jax.tree.map(lambda x: np.asarray(x)[None, :n], (samples, extra))
        else:
            samples, extra = jax.tree.map(lambda x: np.asarray(x)[:, :n], (samples, extra))
        return state, samples, {k: np.asarray(v) for k, v in extra.items()}

    run.compiled = compiled  # for tests: one program per setting
    problem._piece_runners[settings] = run
    return run


def _from_pieces(
    problem, directory: Path, pieces: list, warmup: int, draws: int, method: str
) -> az.InferenceData:
    """InferenceData of the first ``draws`` draws per chain (iterations ``warmup`` on)."""
    loaded = [_load(p) for p in pieces]
    kept = [x for x in loaded if x["phase"] == "draws"]

    def cat(get):
        return np.concatenate([get(x) for x in kept], axis=1)[:, :draws]

    posterior = {k: cat(lambda x, k=k: np.asarray(x["samples"][k])) for k in kept[0]["samples"]}
    stats = {
        "diverging": cat(lambda x: x["extra"]["diverging"]),
        "n_steps": cat(lambda x: x["extra"]["num_steps"]),
        "lp": -cat(lambda x: x["extra"]["potential_energy"]),
    }
    if all("accept_prob" in x["extra"] for x in kept):  # pieces saved before it was collected lack it
        stats["acceptance_rate"] = cat(lambda x: x["extra"]["accept_prob"])
    idata = az.from_dict(
        posterior=posterior,
        sample_stats=stats,
        coords={"study": list(problem.study_ids)},
        dims=_dims(problem),
    )
    warm = [x for x in loaded if x["phase"] == "warmup"]
    seconds = _load(directory / "init.pkl")["seconds"] + sum(x["seconds"] for x in loaded)
    attrs = {
        "seconds": seconds,
        "chain_method": method,
        "warmup": warmup,
        "pieces": len(loaded),
        "warmup_divergences": int(sum(np.asarray(x["extra"]["diverging"]).sum() for x in warm)),
    }
    return _with_attrs(idata, problem, attrs)


def problem_of_run(directory) -> CalibrationProblem:
    """The :class:`CalibrationProblem` of a resumable run saved in ``directory`` (by
    :func:`run_nuts_resumable` or ``mscpk fit --state-dir``), rebuilt from the evidence
    library as its config records it (studies, hierarchy, detection-limit SD). A ``ValueError`` if the library
    no longer gives the run's problem (other rows or calibrated parameters), e.g. a run of
    a synthetic problem: pass that problem to :func:`run_progress` instead."""
    from ..evidence import load
    from ..evidence.likelihood import EvidenceLikelihood

    config = _run_config_file(directory)
    table = load()
    studies = list(config["studies"])
    missing = sorted(set(studies) - set(table.study_id))
    if missing:
        raise ValueError(
            f"directory: the run in {directory} was made on a problem that the evidence library no "
            f"longer gives (studies {missing} are not in it); pass its problem explicitly"
        )
    if set(studies) != set(table.study_id):
        table = table[table.study_id.isin(studies)].reset_index(drop=True)
    likelihood = EvidenceLikelihood(
        table, detection_limit_log_sd=float(config.get("detection_limit_log_sd", 0.0))
    )
    problem = CalibrationProblem(likelihood, hierarchical=bool(config["hierarchical"]))
    now = {
        "studies": list(problem.study_ids),
        "evidence_rows": int(len(problem.likelihood.table)),
        "calibrated": list(problem.parameter_names),
    }
    changed = sorted(k for k, v in now.items() if config.get(k) != v)
    if changed:
        raise ValueError(
            f"directory: the run in {directory} was made on a problem that the evidence library no "
            f"longer gives ({', '.join(changed)} differ); pass its problem explicitly"
        )
    return problem


def _run_config_file(directory) -> dict:
    config = Path(directory) / "config.pkl"
    if not config.exists():
        raise ValueError(f"directory: {directory} holds no resumable NUTS run (no config.pkl)")
    return _load(config)


def run_last_state(directory):
    """The last saved NUTS state (``HMCState``, batched over chains) of a resumable run:
    its last piece's, or the initial state before the first; ``None`` if none is saved."""
    directory = Path(directory)
    _run_config_file(directory)
    saved = sorted(directory.glob("piece_*.pkl")) or [directory / "init.pkl"]
    if not saved[-1].exists():
        return None
    return _load(saved[-1]).get("state")


def run_step_sizes(directory) -> np.ndarray | None:
    """Each chain's step size in the last saved state of a resumable run (its last piece,
    or the initial state before the first); ``None`` if none is saved."""
    state = run_last_state(directory)
    return None if state is None else np.atleast_1d(np.asarray(state.adapt_state.step_size, dtype=float))


def run_progress(directory, problem: CalibrationProblem | None = None):
    """Where a resumable run stands: ``(pieces, idata)``.

    ``pieces``: a ``pandas.DataFrame`` with one line per saved piece (``phase``, iterations
    ``first`` to ``last``, ``seconds``, mean ``leapfrog_steps`` per iteration and chain,
    ``divergences`` over its chains, mean ``accept_prob``, NaN for pieces saved before it
    was collected); ``idata``: the ``InferenceData`` of every draw saved
    so far (``None`` before the first), as the run would give them if it stopped there
    (the number of draws a run aims at is not saved: it may be raised). ``problem``: the
    run's problem (default: :func:`problem_of_run`), which names the study coordinates.
    Reads the saved files only; runs nothing.
    """
    import pandas as pd

    directory = Path(directory)
    config = _run_config_file(directory)
    paths = sorted(directory.glob("piece_*.pkl"))
    loaded = [_load(p) for p in paths]
    pieces = pd.DataFrame(
        [
            {
                "piece": i,
                "phase": x["phase"],
                "first": int(x["first"]),
                "last": int(x["first"] + x["n"]),
                "seconds": float(x["seconds"]),
                "leapfrog_steps": float(np.mean(x["extra"]["num_steps"])),
                "divergences": int(np.sum(x["extra"]["diverging"])),
                "accept_prob": float(np.mean(x["extra"].get("accept_prob", np.nan))),
            }
            for i, x in enumerate(loaded)
        ],
        columns=[
            "piece",
            "phase",
            "first",
            "last",
            "seconds",
            "leapfrog_steps",
            "divergences",
            "accept_prob",
        ],
    )
    drawn = [x for x in loaded if x["phase"] == "draws"]
    if not drawn:
        return pieces, None
    problem = problem_of_run(directory) if problem is None else problem
    n_draws = sum(int(x["n"]) for x in drawn)
    return pieces, _from_pieces(problem, directory, paths, config["warmup"], n_draws, "not recorded")


def summary(idata: az.InferenceData, var_names=None, hdi_prob: float = 0.9, round_to="none"):
    """Table of mean, sd, HDI, MCSE, bulk/tail ESS and R-hat (arviz) of the global sites
    (default: every scalar site of the posterior), at full precision by default (arviz's
    usual 2 decimals would show a depot death rate of 1.5e-3 /h as 0); ``round_to=k``
    rounds to k decimals."""
    if var_names is None:
        var_names = [v for v, da in idata.posterior.data_vars.items() if da.ndim == 2]
    return az.summary(idata, var_names=list(var_names), hdi_prob=hdi_prob, round_to=round_to)


def diagnostics(idata: az.InferenceData, var_names=None) -> dict:
    """Worst R-hat, smallest bulk/tail ESS and divergence fraction of a run, unrounded (an
    R-hat of 1.014 is not "<= 1.01", though arviz's table shows it as 1.01)."""
    table = summary(idata, var_names, round_to="none")
    div = np.asarray(idata.sample_stats["diverging"])
    return {
        "max_r_hat": float(table["r_hat"].max()),
        "min_ess_bulk": float(table["ess_bulk"].min()),
        "min_ess_tail": float(table["ess_tail"].min()),
        "divergence_fraction": float(div.mean()),
        "draws": int(div.size),
    }
