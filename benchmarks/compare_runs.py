"""Two resumable NUTS runs of the same problem, compared at equal draws per chain.

Run: ``python benchmarks/compare_runs.py RUN_A RUN_B [--draws 120 190 240]
[--stem compare-NAME]``. Reads the runs' saved pieces only
(``mscpk.calibration.fit.run_progress``); nothing is sampled.

For each cut (the first ``n`` draws per chain of both runs) and each run: worst R-hat,
lowest and median bulk ESS, lowest tail ESS over the global (2-D) sites, divergences,
mean leapfrog steps per iteration and chain, the pieces' seconds for those draws, and
the ESS per 1,000 leapfrog steps of a chain and per 1,000 s. With ``--stem`` the figures go to
``benchmarks/results/<stem>-<device>.json`` (machine and versions with them). ``B / A`` ratios of the
per-step and per-second figures are printed beside them. The runs' seconds are
comparable only if both ran on the same machine with nothing else heavy running (their
logs say).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
from _common import environment, write_result  # noqa: E402

from mscpk.calibration import fit  # noqa: E402


def cut(pieces, idata, n: int) -> dict:
    """Figures of the first ``n`` draws per chain of one run."""
    drawn = pieces[pieces["phase"] == "draws"]
    have = int((drawn["last"] - drawn["first"]).sum())
    if n > have:
        raise ValueError(f"draws: the run has {have} draws per chain, fewer than {n}")
    sub = idata.isel(draw=slice(0, n))
    table = fit.summary(sub)
    steps = np.asarray(sub.sample_stats["n_steps"], dtype=float)  # (chains, n)
    # seconds of the pieces that hold those draws, the last one pro rata
    first = int(drawn["first"].iloc[0])
    seconds = 0.0
    for _, p in drawn.iterrows():
        k = min(int(p["last"]), first + n) - int(p["first"])
        if k > 0:
            seconds += float(p["seconds"]) * k / (int(p["last"]) - int(p["first"]))
    per_chain_steps = steps.sum(axis=1).mean()
    out = {
        "draws_per_chain": n,
        "max_r_hat": float(table["r_hat"].max()),
        "min_ess_bulk": float(table["ess_bulk"].min()),
        "min_ess_bulk_site": str(table["ess_bulk"].idxmin()),
        "median_ess_bulk": float(table["ess_bulk"].median()),
        "min_ess_tail": float(table["ess_tail"].min()),
        "divergences": int(np.asarray(sub.sample_stats["diverging"]).sum()),
        "leapfrog_steps_per_iteration": float(steps.mean()),
        "seconds": seconds,
    }
    for key in ("min_ess_bulk", "median_ess_bulk", "min_ess_tail"):
        out[f"{key}_per_1000_steps"] = 1000.0 * out[key] / per_chain_steps
        out[f"{key}_per_1000_s"] = 1000.0 * out[key] / seconds
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_a")
    parser.add_argument("run_b")
    parser.add_argument("--draws", type=int, nargs="+", default=None)
    parser.add_argument("--stem", default=None)
    args = parser.parse_args(argv)
    runs = {}
    for name in (args.run_a, args.run_b):
        pieces, idata = fit.run_progress(name)
        if idata is None:
            parser.error(f"{name}: no draws saved yet")
        runs[name] = (pieces, idata)
    most = min(int(idata.posterior.sizes["draw"]) for _, idata in runs.values())
    draws = args.draws or [most]
    if any(n < 4 or n > most for n in draws):
        parser.error(f"--draws: each must lie in [4, {most}] (draws per chain both runs have), got {draws}")
    rows = []
    for n in draws:
        a, b = (cut(*runs[name], n) for name in (args.run_a, args.run_b))
        ratio = {k: b[k] / a[k] for k in a if k.endswith(("_per_1000_steps", "_per_1000_s"))}
        rows.append({"draws_per_chain": n, "a": a, "b": b, "b_over_a": ratio})
        print(f"\nfirst {n} draws per chain      A: {args.run_a}   B: {args.run_b}")
        for k in a:
            extra = f"   B/A {ratio[k]:.2f}" if k in ratio else ""
            fa, fb = (f"{x:.4g}" if isinstance(x, float) else str(x) for x in (a[k], b[k]))
            print(f"  {k:36s} {fa:>14s} {fb:>14s}{extra}")
    if args.stem:
        write_result(
            args.stem,
            {"environment": environment(), "run_a": args.run_a, "run_b": args.run_b, "cuts": rows},
        )


if __name__ == "__main__":
    main()
