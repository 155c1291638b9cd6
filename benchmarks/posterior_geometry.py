"""Why NUTS takes long trajectories in the calibration: the local curvature of the
potential at a saved run's last states, against the run's metric and its draws.

Run: ``python benchmarks/posterior_geometry.py [--run benchmarks/runs/statement_masked]
[--centre STUDY ...] [--h 0.01]``. Prints a table and writes
``benchmarks/results/posterior-geometry[-centred]-<device>.json`` with machine and
versions.

For each chain's last saved position ``x`` (NumPyro's unconstrained scale) the Hessian
of the potential is taken by central differences of its gradient (the problem's shared
``value_and_grad``) along the columns of a whitening matrix ``L`` (``L L^T`` the
covariance of the run's draws), and reported whitened two ways:

- by the run's own dense inverse mass matrix (``metric.npy``): what the sampler met.
  Leapfrog is unstable where ``step size > 2 / sqrt(largest eigenvalue)``;
- by the covariance of the run's draws (the best single metric the run could have had).

Eigenvalues near 1 mean the metric matches the local shape; large ones mean directions
where the posterior is locally narrower than the metric says, which caps the step size;
negative ones mean the density is not log-concave there. Also reported: the eigenvalues
of the run's metric against the draws' covariance, and each chain's step size and mean
leapfrog steps per draw. Along each point's most curved direction (largest eigenvalue,
draws' covariance) and least curved one, the curvature is split over the evidence rows by
second differences of each row's log-likelihood term (step 0.05, whitened units); the
rest is the prior's and the transforms'.

``--centre STUDY`` samples that study's effects centred (``e = tau * z`` in place of
``z``, for each effect; the potential gains ``+log tau`` per centred effect, the log
Jacobian) and reports the curvature in those coordinates instead, whitened by the
draws' covariance mapped to them (the centred entries keep their ``z_*`` names).

``--detection-limit-log-sd S`` takes the curvature of another model at the same points:
the run's evidence with the assay families' assumed detection limits integrated out
(``EvidenceLikelihood(detection_limit_log_sd=S)``); written to
``posterior-geometry-dl<S>-<device>.json``.
"""

from __future__ import annotations

import argparse
import pickle
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

sys.path.insert(0, str(Path(__file__).parent))

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _common import environment, write_result  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

from mscpk.calibration import fit  # noqa: E402
from mscpk.calibration.problem import EFFECTS  # noqa: E402


def flat_names(z: dict) -> list[str]:
    """Names of the entries of ``ravel_pytree(z)`` (sorted sites, vectors by index)."""
    out = []
    for k in sorted(z):
        size = np.asarray(z[k]).size
        out += [k] if np.ndim(z[k]) == 0 else [f"{k}[{i}]" for i in range(size)]
    return out


def run_draws(run: Path) -> dict:
    """The draws-phase samples of a resumable run, chains and draws flattened together."""
    out = {}
    for f in sorted(run.glob("piece_*.pkl")):
        piece = pickle.loads(f.read_bytes())
        if piece["phase"] != "draws":
            continue
        for k, v in piece["samples"].items():
            out.setdefault(k, []).append(np.asarray(v))
    if not out:
        raise ValueError(f"run: {str(run)!r} holds no draws-phase piece")
    return {k: np.concatenate(v, 1).reshape(-1, *v[0].shape[2:]) for k, v in out.items()}


def whitened_hessian(grad, y0, L, h: float) -> tuple[np.ndarray, float]:
    """``L^T H L`` at ``y0`` by central differences of ``grad`` along the columns of
    ``L`` (step ``h`` in whitened units), symmetrised; and its relative asymmetry before
    that (a check on the differences)."""
    hw = np.zeros((y0.size, y0.size))
    for k in range(y0.size):
        hw[:, k] = L.T @ (np.asarray(grad(y0 + h * L[:, k])) - np.asarray(grad(y0 - h * L[:, k]))) / (2 * h)
    asymmetry = float(np.abs(hw - hw.T).max() / np.abs(hw).max())
    return (hw + hw.T) / 2, asymmetry


def curvature_by_row(value, row_terms, y0, direction, row_ids, t: float = 0.05, n: int = 4) -> dict:
    """Second differences along ``direction`` of the potential and of minus each row's
    log-likelihood term: the total, the rows' sum, the rest (prior and transforms) and
    the ``n`` rows of largest magnitude."""
    ys = [y0 + s * t * direction for s in (-1.0, 0.0, 1.0)]
    total = (float(value(ys[2])) - 2 * float(value(ys[1])) + float(value(ys[0]))) / t**2
    f = [np.asarray(row_terms(y)) for y in ys]
    rows = -(f[2] - 2 * f[1] + f[0]) / t**2
    return {
        "total": round(total, 2),
        "rows_sum": round(float(rows.sum()), 2),
        "rest": round(total - float(rows.sum()), 2),
        "top_rows": top_components(rows, row_ids, n),
    }


def top_components(vector, names, n=4) -> list:
    order = np.argsort(-np.abs(vector))[:n]
    return [[names[i], round(float(vector[i]), 2)] for i in order]


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", default=str(Path(__file__).parent / "runs" / "statement_masked"))
    parser.add_argument("--centre", action="append", default=[], help="study whose effects are centred")
    parser.add_argument("--h", type=float, default=1e-2, help="difference step, whitened units")
    parser.add_argument(
        "--detection-limit-log-sd", type=float, default=None, help="the model with uncertain detection limits"
    )
    args = parser.parse_args(argv)
    run = Path(args.run)
    problem = fit.problem_of_run(run)
    if args.detection_limit_log_sd is not None:
        from mscpk.calibration import CalibrationProblem
        from mscpk.evidence.likelihood import EvidenceLikelihood

        likelihood = EvidenceLikelihood(
            problem.likelihood.table, detection_limit_log_sd=args.detection_limit_log_sd
        )
        problem = CalibrationProblem(likelihood, hierarchical=problem.hierarchical)
    for s in args.centre:
        if s not in problem.study_ids:
            raise ValueError(f"--centre: {s!r} is not a study of the run; allowed: {list(problem.study_ids)}")
    last = fit.run_last_state(run)
    chains = np.asarray(last.adapt_state.step_size).size
    starts = [{k: np.asarray(v)[c] for k, v in last.z.items()} for c in range(chains)]
    names = flat_names(starts[0])
    _, unravel = ravel_pytree(starts[0])
    index = {n: i for i, n in enumerate(names)}
    pairs = [
        (index[f"tau_{e}"], index[f"z_{e}[{problem.study_ids.index(s)}]"])
        for s in args.centre
        for e in EFFECTS
    ]
    tau_i = np.array([p[0] for p in pairs], dtype=int)
    z_i = np.array([p[1] for p in pairs], dtype=int)

    def to_y(x):  # z_j -> e_j = tau * z_j for the centred entries
        return x.at[z_i].set(x[z_i] * jnp.exp(x[tau_i])) if pairs else x

    def to_x(y):
        return y.at[z_i].set(y[z_i] / jnp.exp(y[tau_i])) if pairs else y

    def potential(y):
        return problem.potential(unravel(to_x(y))) + jnp.sum(y[tau_i])

    grad = jax.jit(jax.grad(potential))
    row_ids = list(problem.likelihood.table.row_id)
    row_terms = jax.jit(lambda y: problem.predictions(problem.constrain(unravel(to_x(y)))).log_lik)
    value = jax.jit(potential)
    draws = run_draws(run)
    zs = jax.jit(jax.vmap(problem.unconstrain))(draws)
    y_draws = np.asarray(jax.vmap(lambda d: to_y(ravel_pytree(d)[0]))(zs))
    cov = np.cov(y_draws, rowvar=False)
    L = np.linalg.cholesky(cov)
    L_inv = np.linalg.inv(L)
    metric = np.load(run / "metric.npy")
    metric_l = np.linalg.cholesky(metric)
    steps = np.concatenate(
        [
            np.asarray(pickle.loads(f.read_bytes())["extra"]["num_steps"])
            for f in sorted(run.glob("piece_*.pkl"))
        ],
        axis=1,
    )
    result = {
        "benchmark": "local curvature of the calibration potential at a run's last states",
        "run": str(run),
        "centred_studies": list(args.centre),
        "detection_limit_log_sd": problem.likelihood.detection_limit_log_sd,
        "dimensions": len(names),
        "draws": len(y_draws),
        "h": args.h,
        "step_size": np.asarray(last.adapt_state.step_size).tolist(),
        "mean_leapfrog_steps_per_iteration": steps.mean(axis=1).round(1).tolist(),
        "points": [],
    }
    if not pairs:
        m = np.linalg.inv(metric_l) @ cov @ np.linalg.inv(metric_l).T
        w = np.linalg.eigvalsh(m)
        result["draws_cov_over_metric_eigenvalues"] = [float(w[0]), float(w[-1])]
        print(f"draws' covariance against the run's metric: eigenvalues {w[0]:.2f} to {w[-1]:.2f}")
    start = time.perf_counter()
    grad(to_y(jnp.asarray(ravel_pytree(starts[0])[0]))).block_until_ready()
    result["compile_s"] = time.perf_counter() - start
    for c, z in enumerate(starts):
        y0 = np.asarray(to_y(jnp.asarray(ravel_pytree(z)[0])))
        hw, asymmetry = whitened_hessian(grad, y0, L, args.h)
        point = {"chain": c, "asymmetry": asymmetry}
        whitenings = {"draws_cov": hw}
        if not pairs:
            hessian = L_inv.T @ hw @ L_inv
            whitenings["run_metric"] = metric_l.T @ hessian @ metric_l
        for label, h_white in whitenings.items():
            w, v = np.linalg.eigh(h_white)
            if label == "draws_cov":
                point["rows"] = {
                    name: curvature_by_row(value, row_terms, y0, L @ v[:, j], row_ids)
                    for name, j in (("most_curved", -1), ("least_curved", 0))
                }
                print(f"chain {c}, rows: {point['rows']}")
            point[label] = {
                "largest": w[-3:][::-1].round(2).tolist(),
                "smallest": w[:2].round(2).tolist(),
                "stable_step_below": float(2.0 / np.sqrt(w[-1])),
                "top_direction": top_components(v[:, -1], names),
            }
            print(
                f"chain {c}, whitened by {label}: largest {point[label]['largest']}, smallest "
                f"{point[label]['smallest']}, leapfrog stable below {point[label]['stable_step_below']:.3f}; "
                f"top direction {point[label]['top_direction']}"
            )
        result["points"].append(point)
    result.update(environment())
    dl = args.detection_limit_log_sd
    name = "posterior-geometry" + ("-centred" if pairs else "") + (f"-dl{dl:g}" if dl is not None else "")
    write_result(name, result)


if __name__ == "__main__":
    main()
