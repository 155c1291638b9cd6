"""The calibration's chains with their own adapted step sizes against one shared step
size, side by side: what the spread of the step sizes costs in wall time.

Run: ``python benchmarks/shared_step.py [--run benchmarks/runs/statement_masked]
[--iterations 10] [--rounds 2]``. Prints a table and writes
``benchmarks/results/shared-step-<device>.json`` with machine, versions and device.

Both variants continue the run's last saved state (4 chains, its dense metric, tree
depth and target, past warm-up so nothing adapts) through the run's own piece runner,
the chains in parallel on one host device each, as the calibration runs them. ``own``
keeps each chain's adapted step size; ``shared`` gives every chain their geometric mean
(what a new stage starts its adaptation from). Rounds alternate the variants; each
variant continues from its own previous round, with the same keys. Reported per round:
seconds, each chain's leapfrog steps, divergences, and NumPyro's running mean acceptance
probability of each chain (since the run's first iteration).
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import time
from pathlib import Path


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", default=str(Path(__file__).parent / "runs" / "statement_masked"))
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    run = Path(args.run)
    config = pickle.loads((run / "config.pkl").read_bytes())
    chains = int(config["chains"])
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={chains}".strip()
    os.environ.setdefault("EQX_ON_ERROR", "nan")
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np

    sys.path.insert(0, str(Path(__file__).parent))
    from _common import environment, write_result

    from mscpk.calibration import fit

    problem = fit.problem_of_run(run)
    state = fit.run_last_state(run)
    own = np.asarray(state.adapt_state.step_size, dtype=float)
    shared_state = fit.shared_step_size(state)  # what `mscpk fit --share-step-size` does
    shared = float(np.asarray(shared_state.adapt_state.step_size).flat[0])
    metric = np.load(run / "metric.npy")
    start = problem.prior_median()
    adapted = {
        "step_size": shared,
        "dense_mass": True,
        "inverse_mass_matrix": {tuple(sorted(state.z)): jnp.asarray(metric)},
        "adapt_mass_matrix": False,
    }
    z_start = problem.unconstrain(start)
    run_piece = fit._piece_runner(
        problem,
        start,
        z_start,
        int(config["max_tree_depth"]),
        float(config["target_accept"]),
        adapted,
        int(config["warmup"]),
        chains,
        "parallel",
        args.iterations,
    )
    states = {
        "own": state,
        "shared": shared_state,
    }
    # Compiles and runs one piece, not timed or kept. (A huge step size, to make it
    # cheap, sends the solves into parameter regions where they take their maximum
    # number of steps: slower, not faster.)
    start_time = time.perf_counter()
    run_piece(state, args.iterations)
    compile_s = time.perf_counter() - start_time
    rounds = {name: [] for name in states}
    for _ in range(args.rounds):
        for name in states:
            t0 = time.perf_counter()
            new, _, extra = run_piece(states[name], args.iterations)
            seconds = time.perf_counter() - t0
            states[name] = new
            rounds[name].append(
                {
                    "seconds": seconds,
                    "leapfrog_steps_per_chain": extra["num_steps"].sum(axis=1).tolist(),
                    "divergences": int(extra["diverging"].sum()),
                    # NumPyro's running mean since the run's first iteration, not this round's
                    "running_mean_accept_prob_per_chain": np.asarray(new.mean_accept_prob).round(3).tolist(),
                }
            )
            print(name, rounds[name][-1], flush=True)
    total = {
        name: {
            "seconds": sum(r["seconds"] for r in v),
            "leapfrog_steps": int(sum(sum(r["leapfrog_steps_per_chain"]) for r in v)),
            "slowest_chain_steps": int(sum(max(r["leapfrog_steps_per_chain"]) for r in v)),
        }
        for name, v in rounds.items()
    }
    result = {
        "benchmark": "calibration chains: own adapted step sizes vs one shared step size",
        "run": str(run),
        "iterations_per_round": args.iterations,
        "own_step_sizes": own.tolist(),
        "shared_step_size": shared,
        "first_piece_with_compile_s": compile_s,
        "rounds": rounds,
        "total": total,
        "own_over_shared_seconds": total["own"]["seconds"] / total["shared"]["seconds"],
    }
    result.update(environment())
    for name, t in total.items():
        print(
            f"{name}: {t['seconds']:.0f} s, {t['leapfrog_steps']} leapfrog steps, slowest chain {t['slowest_chain_steps']}"
        )
    print(f"own / shared, seconds: {result['own_over_shared_seconds']:.3f}")
    write_result("shared-step", result)


if __name__ == "__main__":
    main()
