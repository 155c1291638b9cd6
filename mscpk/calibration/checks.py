"""Checks of a calibration: posterior predictive checks and recovery of known parameters.

**Posterior predictive.** For thinned posterior draws, every evidence row's prediction
and error model give a replicated measurement ``y_rep = prediction * exp(sigma * eps)``.
A row is *covered* when what was reported is consistent with the central 90% predictive
interval ``[q5, q95]``: a point value inside it; a range or interval overlapping it; a
lower bound ``>= L`` with ``q95 >= L``; an upper bound ``<= U`` with ``q5 <= U``
(detection rows use the assay's detection limit as bound).

**Recovery / simulation-based calibration.** Parameters are drawn from the prior,
synthetic point data are simulated from them through the same error model, and NUTS is
run on each data set (one compilation serves every replicate: the data are traced model
arguments). The truth's rank among the posterior draws is uniform if the inference is
calibrated (Talts et al. 2018, arXiv:1804.06788); the fraction of truths inside their
central 90% posterior interval should be near 0.9.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
from numpyro.infer import NUTS, init_to_value
from numpyro.infer.util import ParamInfo, initialize_model

from ..evidence.likelihood import TERMS
from .problem import EFFECTS, CalibrationProblem


# ---------------------------------------------------------------------- posterior draws
def posterior_draws(idata, n: int | None = None, key=None) -> dict:
    """Posterior samples as a dict of arrays with one leading draw axis (chains merged),
    optionally thinned at random to ``n`` draws."""
    post = idata.posterior
    out = {}
    for name, da in post.data_vars.items():
        a = np.asarray(da)
        out[name] = a.reshape((-1,) + a.shape[2:])
    total = next(iter(out.values())).shape[0]
    if n is not None and n < total:
        key = jax.random.PRNGKey(0) if key is None else key
        idx = np.sort(np.asarray(jax.random.choice(key, total, (n,), replace=False)))
        out = {k: v[idx] for k, v in out.items()}
    return out


def _site_values(problem: CalibrationProblem, draws: dict) -> dict:
    names = list(problem.parameter_names)
    if problem.hierarchical:
        names += [f"tau_{e}" for e in EFFECTS] + [f"z_{e}" for e in EFFECTS]
    missing = [n for n in names if n not in draws]
    if missing:
        raise ValueError(f"draws: missing sites {missing} needed by the problem")
    return {n: jnp.asarray(draws[n]) for n in names}


def predictive(problem: CalibrationProblem, draws: dict, key) -> dict:
    """Per draw and row: ``predicted`` (D, R), ``sigma`` (D, R) and a replicated
    measurement ``replicated`` (D, R); ``success`` (D,)."""
    values = _site_values(problem, draws)
    f = jax.jit(lambda v: problem.predictions(v))
    out = _map(f, values)
    eps = jax.random.normal(key, out.predicted.shape)
    rep = out.predicted * jnp.exp(out.sigma * eps)
    return {
        "predicted": np.asarray(out.predicted),
        "sigma": np.asarray(out.sigma),
        "replicated": np.asarray(rep),
        "success": np.asarray(out.success),
    }


def _map(f, values):
    """Evaluate ``f`` draw by draw (one compiled function; bounded memory)."""
    n = next(iter(values.values())).shape[0]
    outs = [f({k: v[i] for k, v in values.items()}) for i in range(n)]
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *outs)


def coverage_table(problem: CalibrationProblem, pred: dict, interval: float = 0.9) -> pd.DataFrame:
    """One line per evidence row: what was reported, the central predictive interval and
    whether they are consistent (see the module docstring)."""
    if not 0 < interval < 1:
        raise ValueError(f"interval: must be in (0, 1), got {interval!r}")
    rows = problem.likelihood.rows
    table = problem.likelihood.table
    ok = pred["success"]
    rep = pred["replicated"][ok]
    if rep.shape[0] == 0:
        raise ValueError("pred: no successful draws")
    a = (1 - interval) / 2
    lo, hi = np.quantile(rep, [a, 1 - a], axis=0)
    med = np.median(rep, axis=0)
    term = np.asarray(rows.term)
    y, lower, upper = (np.asarray(x) for x in (rows.y, rows.lower, rows.upper))
    limit = np.asarray(problem.observation.detection_limit_cells)[np.asarray(rows.family)]
    lower = np.where(np.isnan(lower), limit, lower)
    upper = np.where(np.isnan(upper), limit, upper)
    kind = np.array(TERMS)[term]
    within = np.select(
        [kind == "point", kind == "lower", kind == "upper"],
        [(y >= lo) & (y <= hi), hi >= lower, lo <= upper],
        (upper >= lo) & (lower <= hi),
    )
    return pd.DataFrame(
        {
            "row_id": table.row_id,
            "study_id": table.study_id,
            "term": kind,
            "reported": np.where(kind == "point", y, np.nan),
            "lower": np.where((kind == "lower") | (kind == "interval"), lower, np.nan),
            "upper": np.where((kind == "upper") | (kind == "interval"), upper, np.nan),
            "pred_median": med,
            "pred_lo": lo,
            "pred_hi": hi,
            "within": within,
        }
    )


# ---------------------------------------------------------------------- recovery / SBC
def synthetic_data(problem: CalibrationProblem, truth: dict, key) -> jnp.ndarray:
    """Point data simulated at ``truth`` through the error model (canonical units)."""
    term = np.asarray(problem.likelihood.rows.term)
    if not np.all(term == TERMS.index("point")):
        raise ValueError("problem: synthetic data need a table of point rows only (no bounds or intervals)")
    out = problem.predictions(truth)
    if not bool(out.success):
        raise ValueError("truth: the solve failed at these parameters")
    return out.predicted * jnp.exp(out.sigma * jax.random.normal(key, out.predicted.shape))


def recovery(
    problem: CalibrationProblem,
    key,
    replicates: int = 10,
    warmup: int = 200,
    draws: int = 200,
    interval: float = 0.9,
    max_tree_depth: int = 5,
    map_steps: int = 150,
    progress: bool = False,
) -> pd.DataFrame:
    """Fit ``replicates`` synthetic data sets drawn at prior draws; one line per replicate
    and calibrated parameter with the truth, its rank among the draws, the central
    ``interval`` and whether it covers the truth."""
    from .fit import _check_int

    if problem.hierarchical:
        raise ValueError("problem: recovery runs on a non-hierarchical (reduced) problem")
    for name, value in (
        ("replicates", replicates),
        ("warmup", warmup),
        ("draws", draws),
        ("map_steps", map_steps),
    ):
        _check_int(name, value, 1)
    if not 0 < interval < 1:
        raise ValueError(f"interval: must be in (0, 1), got {interval!r}")
    a = (1 - interval) / 2
    names = problem.parameter_names
    start = problem.prior_median()
    # Each replicate starts NUTS from its MAP, as the real calibration does: from the prior
    # median, a short warm-up left chains short of truths far in the prior's tails (their
    # ranks piled up at one end).
    info = initialize_model(
        jax.random.PRNGKey(0),
        problem.model,
        model_args=(problem.likelihood.rows.y,),
        init_strategy=init_to_value(values=start),
        dynamic_args=True,
        validate_grad=False,
    )
    optimiser = optax.adam(0.1)

    def mode(data):
        """The MAP (unconstrained, NUTS's start) with the potential and its gradient
        there: ``map_steps`` Adam steps and one more gradient in one loop, so the program
        holds one gradient of the potential, not also one for NUTS's initial state."""
        value_and_grad = jax.value_and_grad(info.potential_fn(data))

        def step(carry, i):
            z, state, _, _ = carry
            pe, g = value_and_grad(z)
            updates, new_state = optimiser.update(g, state, z)
            moved = i < map_steps  # the last pass only evaluates
            z_new, state = jax.tree.map(
                lambda a, b: jnp.where(moved, a, b), (optax.apply_updates(z, updates), new_state), (z, state)
            )
            return (z_new, state, pe, g), None

        z0 = info.param_info.z
        carry = (z0, optimiser.init(z0), jnp.zeros(()), z0)
        (z, _, pe, g), _ = jax.lax.scan(step, carry, jnp.arange(map_steps + 1))
        return ParamInfo(z, pe, g)

    kernel = NUTS(problem.model, max_tree_depth=max_tree_depth)

    @jax.jit
    def fit(key, data):
        # One program for every replicate: the data and key are its arguments (NumPyro's
        # MCMC.run embeds its start in the compiled loop, a new ~20 s compilation each).
        args = (data,)
        state = kernel.init(key, warmup, init_params=mode(data), model_args=args, model_kwargs={})

        def step(s, _):
            s = kernel.sample(s, args, {})
            return s, (s.z, s.diverging)

        # Warm-up and draws in one loop (the kernel adapts while its counter is below
        # ``warmup``): one copy of the sampler in the program, not two (~15 s less to
        # compile on the reduced problem); the warm-up's positions are dropped.
        _, (z, diverging) = jax.lax.scan(step, state, None, length=warmup + draws)
        z, diverging = jax.tree.map(lambda x: x[warmup:], (z, diverging))
        return jax.vmap(kernel.postprocess_fn(args, {}))(z), diverging.sum()

    lines = []
    for i, k in enumerate(jax.random.split(key, replicates)):
        k_truth, k_data, k_run = jax.random.split(k, 3)
        truth = problem.prior_sample(k_truth)
        data = synthetic_data(problem, truth, k_data)
        t0 = time.perf_counter()
        samples, divergent = jax.device_get(fit(k_run, data))
        divergent = int(divergent)
        if progress:
            print(
                f"recovery replicate {i + 1} of {replicates}: {time.perf_counter() - t0:.1f} s, "
                f"divergences {divergent}",
                flush=True,
            )
        for n in names:
            s = np.asarray(samples[n])
            t = float(truth[n])
            lo, hi = np.quantile(s, [a, 1 - a])
            lines.append(
                {
                    "replicate": i,
                    "parameter": n,
                    "truth": t,
                    "posterior_median": float(np.median(s)),
                    "lower": float(lo),
                    "upper": float(hi),
                    "covered": bool(lo <= t <= hi),
                    "rank": int(np.sum(s < t)),
                    "draws": int(s.size),
                    "divergences": divergent,
                }
            )
    return pd.DataFrame(lines)


#: Template of the reduced recovery problem: a mouse IV experiment re-culturing cells
#: from the lung (Eggenhofer 2012's design); only its structure is used.
RECOVERY_TEMPLATE_ROW = "eggenhofer2012_culture_lung_24h"


def reduced_problem(
    times_h=(0.5, 1.0, 2.0, 4.0, 6.0, 9.0, 12.0, 18.0, 24.0, 30.0, 36.0, 48.0),
    entries=("death_rate_scale", "sigma_flow"),
    n_size_classes: int = 1,
    rtol: float = 1e-6,
    values=None,
):
    """A small, fast problem for recovery tests: viable lung cells of one mouse IV
    scenario at ``times_h`` (values are placeholders, replaced by synthetic data),
    calibrating the registry ``entries`` only, without study effects. Reduced numerics
    (one diameter class, ``rtol`` 1e-6) make a gradient ~4x cheaper (4 ms with jax 0.4.31);
    data are simulated with the same model, so recovery is unaffected. ``values``: the
    rows' values (viable cells, one per time); default placeholders of 1 cell, which
    functions given their own data (:func:`recovery`) replace."""
    from ..evidence import load
    from ..evidence.likelihood import EvidenceLikelihood
    from ..solve.segments import SolverConfig
    from .registry import REGISTRY

    table = load()
    template = table[table.row_id == RECOVERY_TEMPLATE_ROW].iloc[0]
    values = np.ones(len(times_h)) if values is None else np.asarray(values, dtype=float)
    if values.shape != (len(times_h),) or not np.all(values > 0):
        raise ValueError(f"values: expected {len(times_h)} positive values (one per time), got {values!r}")
    rows = []
    for t, value in zip(times_h, values, strict=True):
        r = template.copy()
        r["row_id"] = f"synthetic_lung_{float(t):g}h"
        r["study_id"] = "synthetic"
        r["time_h"] = float(t)
        r["censoring"] = "none"
        r["value"] = float(value)
        r["detection_limit"] = float("nan")
        r["notes"] = (
            f"SYNTHETIC row for recovery tests: the design of {RECOVERY_TEMPLATE_ROW}, value a placeholder "
            "replaced by simulated data; not evidence."
        )
        rows.append(r)
    by_name = {c.name: c for c in REGISTRY}
    unknown = [e for e in entries if e not in by_name]
    if unknown:
        raise ValueError(f"entries: unknown registry names {unknown}; allowed: {', '.join(by_name)}")
    solver = SolverConfig(rtol=rtol, atol=1e-10, max_steps=4096)
    lik = EvidenceLikelihood(pd.DataFrame(rows).reset_index(drop=True), solver, n_size_classes)
    return CalibrationProblem(lik, tuple(by_name[e] for e in entries), hierarchical=False)


# ---------------------------------------------------------------------- figures
def plot_predictive(cov: pd.DataFrame, out_dir, units: pd.Series | None = None) -> list:
    """One figure per study: for every row, the central predictive interval (bar), its
    median (dot) and what was reported (cross for a value, triangle for a bound, line for
    an interval), each row on its own log axis. Returns the written paths."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from pathlib import Path

    import matplotlib.pyplot as plt

    needed = {
        "row_id",
        "study_id",
        "term",
        "reported",
        "lower",
        "upper",
        "pred_median",
        "pred_lo",
        "pred_hi",
        "within",
    }
    missing = needed - set(cov.columns)
    if missing:
        raise ValueError(f"cov: not a coverage table (missing columns {sorted(missing)})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for study, rows in cov.groupby("study_id", sort=True):
        n = len(rows)
        ncol = min(4, n)
        nrow = -(-n // ncol)
        fig, axes = plt.subplots(
            nrow, ncol, figsize=(3.0 * ncol, 2.6 * nrow), squeeze=False, constrained_layout=True
        )
        for ax, (_, r) in zip(axes.ravel(), rows.iterrows(), strict=False):
            ax.vlines(0, r.pred_lo, r.pred_hi, lw=6, color="C0", alpha=0.4, label="90% predictive")
            ax.plot(0, r.pred_median, "o", color="C0")
            colour = "k" if r.within else "C3"
            if r.term == "point":
                ax.plot(0.25, r.reported, "x", color=colour, ms=9, mew=2, label="reported")
            elif r.term == "lower":
                ax.plot(0.25, r.lower, "^", color=colour, ms=8, label="reported lower bound")
            elif r.term == "upper":
                ax.plot(0.25, r.upper, "v", color=colour, ms=8, label="reported upper bound")
            else:
                ax.vlines(0.25, r.lower, r.upper, color=colour, lw=2, label="reported interval")
            ax.set_yscale("log")
            ax.set_xlim(-0.5, 0.75)
            ax.set_xticks([])
            unit = "" if units is None else f" ({units.get(r.row_id, '')})"
            ax.set_title(f"{r.row_id}{unit}", fontsize=7)
        for ax in axes.ravel()[n:]:
            ax.axis("off")
        fig.suptitle(f"{study}: evidence vs posterior predictive (red: outside)", fontsize=9)
        path = out / f"ppc_{study}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_coverage(cov: pd.DataFrame, path, interval: float = 0.9):
    """Fraction of rows consistent with their predictive interval, per study and overall."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    per = cov.groupby("study_id")["within"].mean().sort_index()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.55 * len(per) + 2), 3.2), constrained_layout=True)
    ax.bar(range(len(per)), per.to_numpy(), color="C0")
    ax.axhline(interval, color="k", ls=":", label=f"nominal {interval:.0%}")
    ax.axhline(float(cov["within"].mean()), color="C3", ls="--", label=f"all rows {cov['within'].mean():.0%}")
    ax.set_xticks(range(len(per)), per.index, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("rows within predictive interval")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
