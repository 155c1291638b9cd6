"""Time per evaluation of the whole evidence likelihood (value, value + gradient), and
what solving each scenario only for the slots its rows need saves (``reduced``).

Run: ``python benchmarks/likelihood.py [--repeat 5]``. Prints a table and writes
``benchmarks/results/likelihood-<device>.json`` with machine, versions and device.

- ``value_s`` ... ``compile_*``: the likelihood as it ships
  (``EvidenceLikelihood()``, reduced), at the default parameters; medians over repeats
  after one compile, compile times apart.
- ``reduced_vs_full``: the calibration potential (``CalibrationProblem``, as NUTS and MAP
  evaluate it) with ``EvidenceLikelihood(reduced=True)`` and ``reduced=False``, timed
  side by side in one process, alternating, at the prior median and at three draws of
  NumPyro's ``init_to_uniform(radius=1)`` (where fast rates make some scenarios stiff);
  the potential and gradient differences between the two; the solver steps summed over
  the scenarios at the defaults. ``posterior`` does the same for the likelihood
  function itself (``lik.function()``, gradient in the kinetic and observation
  parameters) at four draws of the shipped posterior, where the calibration spends its
  sampling time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

sys.path.insert(0, str(Path(__file__).parent))
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _common import environment, timed  # noqa: E402

import mscpk  # noqa: E402
from mscpk.evidence.likelihood import EvidenceLikelihood  # noqa: E402
from mscpk.observation.parameters import ObservationParameters  # noqa: E402


def total_steps(lik: EvidenceLikelihood) -> int:
    """Accepted solver steps over all scenarios at the default parameters."""
    from mscpk.solve.segments import solve

    b = lik.batch
    models = b.with_parameters(mscpk.KineticParameters.default(), ObservationParameters.default())
    masks = b.integrate if b.integrate is not None else jnp.ones((b.n, models.n_states), bool)

    @jax.jit
    def steps(models, tables, times, t_end, masks):
        return jax.lax.map(
            lambda a: solve(*a[:4], lik.solver, mask=a[4]).n_steps, (models, tables, times, t_end, masks)
        )

    return int(jnp.sum(steps(models, b.tables, b.times_h, b.t_end_h, masks)))


def alternating_medians(fns: dict, points: list, repeat: int) -> dict:
    """Median seconds of each ``(value, value_and_grad)`` pair in ``fns`` at each point
    (a tuple of arguments), the variants timed in turn at every point and repeat, so
    that all of them see the same machine state (after one untimed, compiling call of each)."""
    for pair in fns.values():
        for f in pair:
            jax.block_until_ready(f(*points[0]))
    times = {(name, kind, i): [] for name in fns for kind in (0, 1) for i in range(len(points))}
    for _ in range(repeat):
        for i, args in enumerate(points):
            for name, pair in fns.items():
                for kind in (0, 1):
                    start = time.perf_counter()
                    jax.block_until_ready(pair[kind](*args))
                    times[(name, kind, i)].append(time.perf_counter() - start)
    return {
        name: {
            key: [float(np.median(times[(name, kind, i)])) for i in range(len(points))]
            for kind, key in ((0, "value_s"), (1, "value_and_grad_s"))
        }
        for name in fns
    }


def reduced_vs_full(repeat: int) -> dict:
    from numpyro.infer import init_to_median, init_to_uniform
    from numpyro.infer.util import initialize_model

    from mscpk.calibration.problem import CalibrationProblem

    fns, points, steps = {}, None, {}
    for name in ("reduced", "full"):
        lik = EvidenceLikelihood(reduced=name == "reduced")
        steps[name] = total_steps(lik)
        model = CalibrationProblem(lik).model

        def init(key, strategy, model=model):
            return initialize_model(key, model, init_strategy=strategy, validate_grad=False)

        if points is None:
            points = [init(jax.random.PRNGKey(0), init_to_median).param_info.z] + [
                init(jax.random.PRNGKey(k), init_to_uniform(radius=1.0)).param_info.z for k in (1, 2, 3)
            ]
        potential = init(jax.random.PRNGKey(0), init_to_median).potential_fn
        fns[name] = (jax.jit(potential), jax.jit(jax.value_and_grad(potential)))

    def flat(g):
        return np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(g)])

    per_point = []
    for z in points:
        (u_r, g_r), (u_f, g_f) = (fns[n][1](z) for n in ("reduced", "full"))
        per_point.append(
            {
                "potential_full": float(u_f),
                "potential_difference": float(u_r - u_f),
                "gradient_rel_difference": float(
                    np.linalg.norm(flat(g_r) - flat(g_f)) / np.linalg.norm(flat(g_f))
                ),
            }
        )
    medians = alternating_medians(fns, [(z,) for z in points], repeat)
    result = {
        "points": ["prior median", "uniform(1) #1", "uniform(1) #2", "uniform(1) #3"],
        "per_point": per_point,
    }
    for n in fns:
        result[n] = {**medians[n], "steps_at_defaults": steps[n]}
        result[n]["value_s_total"] = sum(result[n]["value_s"])
        result[n]["value_and_grad_s_total"] = sum(result[n]["value_and_grad_s"])
    result["full_over_reduced"] = {
        key: result["full"][key] / result["reduced"][key]
        for key in ("value_s_total", "value_and_grad_s_total", "steps_at_defaults")
    }
    result["posterior"] = at_posterior_draws(repeat)
    return result


def at_posterior_draws(repeat: int, n: int = 4) -> dict:
    from mscpk.calibration.defaults import entries_of, shipped_draws
    from mscpk.calibration.registry import apply

    draws = shipped_draws()
    if draws is None:
        return {"reason": "no posterior shipped"}
    entries = entries_of(draws)
    picked = draws.iloc[np.linspace(0, len(draws) - 1, n).round().astype(int)]
    points = [apply({c.name: float(row[c.name]) for c in entries}, entries) for _, row in picked.iterrows()]
    fns = {}
    for name in ("reduced", "full"):
        f = EvidenceLikelihood(reduced=name == "reduced").function()
        fns[name] = (jax.jit(f), jax.jit(jax.value_and_grad(f, argnums=(0, 1))))
    differences = [float(fns["reduced"][0](*p) - fns["full"][0](*p)) for p in points]
    result = {"draws": [int(i) for i in picked.index], "log_lik_difference": differences}
    result.update(alternating_medians(fns, points, repeat))
    result["full_over_reduced"] = {
        key: sum(result["full"][key]) / sum(result["reduced"][key]) for key in ("value_s", "value_and_grad_s")
    }
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    lik = EvidenceLikelihood()
    f = lik.function()
    k, o = mscpk.KineticParameters.default(), ObservationParameters.default()
    value = jax.jit(f)
    value_grad = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))
    first_v, t_v = timed(value, k, o, repeat=args.repeat)
    first_g, t_g = timed(value_grad, k, o, repeat=args.repeat)
    device = jax.devices()[0]
    result = {
        "benchmark": "evidence likelihood, one jitted call over all scenarios",
        "rows": len(lik.table),
        "scenarios": len(lik.scenarios),
        "value_s": t_v,
        "value_and_grad_s": t_g,
        "grad_over_value": t_g / t_v,
        "compile_and_first_value_s": first_v,
        "compile_and_first_value_and_grad_s": first_g,
    }
    for key in list(result)[3:]:
        print(f"{key:40s} {result[key]:.3f}")
    result["reduced_vs_full"] = comparison = reduced_vs_full(args.repeat)
    result.update(environment())
    print("calibration potential, reduced vs full (s; prior median, 3 uniform(1) draws):")
    for n in ("reduced", "full"):
        r = comparison[n]
        print(
            f"  {n:8s} value {r['value_s_total']:.4f}  value+grad {r['value_and_grad_s_total']:.4f}  "
            f"steps at defaults {r['steps_at_defaults']}   per point v+g {[round(x, 4) for x in r['value_and_grad_s']]}"
        )
    print("  full / reduced:", {k: round(v, 2) for k, v in comparison["full_over_reduced"].items()})
    print("  differences:", comparison["per_point"])
    post = comparison["posterior"]
    if "full_over_reduced" in post:
        print(
            "likelihood at shipped posterior draws, full / reduced:",
            {k: round(v, 2) for k, v in post["full_over_reduced"].items()},
            "per draw v+g reduced",
            [round(x, 4) for x in post["reduced"]["value_and_grad_s"]],
            "full",
            [round(x, 4) for x in post["full"]["value_and_grad_s"]],
            "log-lik differences",
            post["log_lik_difference"],
        )
    out = Path(__file__).parent / "results" / f"likelihood-{device.platform}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
