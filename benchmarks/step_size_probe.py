"""Is a finished calibration's adapted step size too small? NUTS transitions of the final
stage re-run from its own draws at its step size and at larger ones, paired.

Run: ``python benchmarks/step_size_probe.py [--run benchmarks/runs/recalibrate_v2/final]
[--starts 16] [--factors 1 1.15 1.3]``. Prints a table and writes
``benchmarks/results/step-size-probe-<device>.json`` with machine, versions and device.

Each start is a saved draw of the run (spread evenly over its chains and draws). From it
one transition is taken with NumPyro's NUTS kernel, the run's dense inverse mass matrix,
tree depth and target, its chain's key at that iteration (as
:class:`mscpk.calibration.divergences.RunReplay` does), and step size ``factor`` x the
run's adapted (shared) step size, for each factor. The same start and key at every
factor make the comparison paired: what changes is only the step size. Reported per
factor: mean acceptance statistic (what NumPyro's dual averaging steers to the target),
leapfrog steps per transition, divergences, and the steps relative to factor 1.

The starts are evaluated in batches of the host device count (``jax.pmap``; set
``XLA_FLAGS=--xla_force_host_platform_device_count=2`` to use both cores of a 2-core
machine).
"""

from __future__ import annotations

import argparse
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
from numpyro.infer import NUTS  # noqa: E402

from mscpk.calibration import fit  # noqa: E402
from mscpk.calibration.divergences import RunReplay  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", default=str(Path(__file__).parent / "runs" / "recalibrate_v2" / "final"))
    parser.add_argument("--starts", type=int, default=16)
    parser.add_argument("--factors", type=float, nargs="+", default=[1.0, 1.15, 1.3])
    args = parser.parse_args(argv)
    if args.starts < 1:
        parser.error(f"--starts: expected an integer >= 1, got {args.starts}")
    if any(not f > 0 for f in args.factors):
        parser.error(f"--factors: expected numbers > 0, got {args.factors}")
    run = Path(args.run)
    replay = RunReplay(run)  # draws, keys, transforms and the run's final adapted state
    step = float(fit.run_step_sizes(run)[0])
    devices = jax.local_device_count()
    draws = replay.iterations - replay.warmup - 1
    # Starts spread evenly over chains and draws-phase iterations (transition i starts at draw i - 1).
    picks = [
        (s % replay.chains, replay.warmup + 1 + int(round(j)))
        for s, j in enumerate(np.linspace(0, draws - 1, args.starts))
    ]
    kernel = NUTS(
        potential_fn=replay._potential,
        dense_mass=bool(replay.config.get("dense_mass", False)),
        max_tree_depth=int(replay.config["max_tree_depth"]),
        target_accept_prob=float(replay.config["target_accept"]),
    )
    fit.set_up_kernel(kernel, replay.warmup, replay.unconstrained(0, replay.warmup))
    sample = jax.pmap(lambda s: kernel.sample(s, (), {}))

    jobs = [(c, i, f) for f in args.factors for c, i in picks]
    rows = []
    start_time = time.perf_counter()
    for b in range(0, len(jobs), devices):
        batch = jobs[b : b + devices]
        padded = batch + [batch[-1]] * (devices - len(batch))
        states = jax.tree.map(
            lambda *x: jnp.stack(x), *[replay.start_state(c, i, step_size=step * f) for c, i, f in padded]
        )
        new = sample(states)
        for k, (c, i, f) in enumerate(batch):
            rows.append(
                {
                    "chain": c,
                    "iteration": i,
                    "factor": f,
                    "step_size": step * f,
                    "num_steps": int(new.num_steps[k]),
                    "accept_prob": float(new.accept_prob[k]),
                    "diverging": bool(new.diverging[k]),
                }
            )
            if f == 1.0:  # the run's own step size: the kernel must give the run's own draw
                accepted = ravel_pytree(jax.tree.map(lambda x, k=k: x[k], new.z))[0]
                saved = ravel_pytree(replay.unconstrained(c, i))[0]
                rows[-1]["reproduced"] = bool(np.allclose(accepted, saved, rtol=1e-6, atol=1e-8))
        print(
            f"[{time.perf_counter() - start_time:.0f} s] {len(rows)} of {len(jobs)} transitions", flush=True
        )
    summary = {}
    base = {(r["chain"], r["iteration"]): r["num_steps"] for r in rows if r["factor"] == args.factors[0]}
    for f in args.factors:
        sel = [r for r in rows if r["factor"] == f]
        summary[str(f)] = {
            "step_size": step * f,
            "mean_accept_prob": float(np.mean([r["accept_prob"] for r in sel])),
            "mean_num_steps": float(np.mean([r["num_steps"] for r in sel])),
            "divergences": int(sum(r["diverging"] for r in sel)),
            "steps_over_first_factor": float(
                np.sum([r["num_steps"] for r in sel])
                / np.sum([base[(r["chain"], r["iteration"])] for r in sel])
            ),
        }
    checked = [r["reproduced"] for r in rows if "reproduced" in r]
    result = {
        "benchmark": "NUTS transitions of a finished run from its own draws at larger step sizes (paired)",
        "run": str(run),
        "adapted_step_size": step,
        "target_accept": float(replay.config["target_accept"]),
        "run_mean_accept_prob_last_state": np.asarray(replay.final_state.mean_accept_prob).tolist(),
        "starts": picks,
        "summary": summary,
        "factor_1_reproduces_saved_draws": f"{sum(checked)} of {len(checked)}",
        "transitions": rows,
        "wall_s": time.perf_counter() - start_time,
    }
    result.update(environment())
    print(f"adapted step size {step:.4g}; target acceptance {result['target_accept']}")
    print(f"factor 1 reproduces the run's saved draw: {result['factor_1_reproduces_saved_draws']}")
    print(f"{'factor':>8s}{'step':>10s}{'accept':>10s}{'steps':>10s}{'rel. steps':>12s}{'div.':>6s}")
    for f, s in summary.items():
        print(
            f"{f:>8s}{s['step_size']:>10.4g}{s['mean_accept_prob']:>10.3f}{s['mean_num_steps']:>10.1f}"
            f"{s['steps_over_first_factor']:>12.3f}{s['divergences']:>6d}"
        )
    write_result("step-size-probe", result)


if __name__ == "__main__":
    main()
