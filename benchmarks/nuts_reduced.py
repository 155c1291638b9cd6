"""NUTS transitions of the shipped calibration with the reduced and the full likelihood,
side by side: what ``EvidenceLikelihood(reduced=True)`` saves where the final stage samples.

Run: ``python benchmarks/nuts_reduced.py [--run benchmarks/runs/statement_masked]
[--transitions 8] [--rounds 2]``. Prints a table and writes
``benchmarks/results/nuts-reduced-<device>.json`` with machine, versions and device.

Both kernels start from the run's last saved position of chain 0, with the run's dense
inverse mass matrix (``metric.npy``), its adapted step size, its tree depth and target,
no adaptation, and the same random key, so they build nearly the same trees (the two
log-densities differ by ~1e-6 nats). Each round runs ``--transitions`` transitions with
one kernel, then with the other (one chain, after a first, compiling run of each).
Reported: seconds, leapfrog steps and seconds per leapfrog step of each.
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

import numpy as np  # noqa: E402
from _common import environment, write_result  # noqa: E402
from numpyro.infer import MCMC, NUTS  # noqa: E402

from mscpk.calibration import fit  # noqa: E402
from mscpk.calibration.problem import CalibrationProblem  # noqa: E402
from mscpk.evidence.likelihood import EvidenceLikelihood  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", default=str(Path(__file__).parent / "runs" / "statement_masked"))
    parser.add_argument("--transitions", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    run = Path(args.run)
    config = pickle.loads((run / "config.pkl").read_bytes())
    state = fit.run_last_state(run)
    reduced = fit.problem_of_run(run)
    full = CalibrationProblem(
        EvidenceLikelihood(reduced.likelihood.table, reduced=False), hierarchical=bool(config["hierarchical"])
    )
    z0 = {k: np.asarray(v)[0] for k, v in state.z.items()}
    step = float(fit.run_step_sizes(run)[0])
    metric = np.load(run / "metric.npy")

    def mcmc(problem, n):
        kernel = NUTS(
            problem.model,
            max_tree_depth=int(config["max_tree_depth"]),
            target_accept_prob=float(config["target_accept"]),
            dense_mass=True,
            inverse_mass_matrix={tuple(sorted(z0)): jax.numpy.asarray(metric)},
            adapt_mass_matrix=False,
            adapt_step_size=False,
            step_size=step,
        )
        return MCMC(kernel, num_warmup=0, num_samples=n, num_chains=1, progress_bar=False)

    key = jax.random.PRNGKey(int(config["key"][0]))
    samplers = {name: mcmc(p, args.transitions) for name, p in (("reduced", reduced), ("full", full))}
    for m in samplers.values():  # compiles; not timed
        m.run(key, init_params=z0, extra_fields=("num_steps",))
    rounds = {name: [] for name in samplers}
    for _ in range(args.rounds):
        for name, m in samplers.items():
            start = time.perf_counter()
            m.run(key, init_params=z0, extra_fields=("num_steps",))
            seconds = time.perf_counter() - start
            steps = int(np.sum(m.get_extra_fields()["num_steps"]))
            rounds[name].append(
                {"seconds": seconds, "leapfrog_steps": steps, "s_per_leapfrog": seconds / steps}
            )
    result = {
        "benchmark": "NUTS transitions at the shipped calibration's last state, reduced vs full likelihood",
        "run": str(run),
        "transitions_per_round": args.transitions,
        "step_size": step,
        "rounds": rounds,
    }
    per = {
        name: sum(r["seconds"] for r in v) / sum(r["leapfrog_steps"] for r in v) for name, v in rounds.items()
    }
    result["s_per_leapfrog"] = per
    result["full_over_reduced"] = per["full"] / per["reduced"]
    result.update(environment())
    for name, v in rounds.items():
        print(
            name,
            [(round(r["seconds"], 1), r["leapfrog_steps"]) for r in v],
            f"{per[name]:.4f} s per leapfrog step",
        )
    print(f"full / reduced, per leapfrog step: {result['full_over_reduced']:.3f}")
    write_result("nuts-reduced", result)


if __name__ == "__main__":
    main()
