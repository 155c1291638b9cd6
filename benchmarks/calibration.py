"""Re-run the literature calibration end to end and record how long it took.

Run: ``python benchmarks/calibration.py [--chains 4 --warmup 500 --draws 1000] [--export DIR]
[--state-dir DIR --hours H]`` (a resumable run: the same command continues it)

It gives JAX one CPU host device per chain (so NumPyro runs the chains in parallel; the
flag must be set before JAX starts), runs ``mscpk fit`` (MAP from several starts, then
NUTS), writes the InferenceData to ``--out`` and ``benchmarks/results/calibration-<device>.json``
with wall time, diagnostics, machine and versions. ``--export mscpk/calibration/data``
replaces the shipped posterior (only do that with a run that meets the diagnostics).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--map-restarts", type=int, default=4)
    parser.add_argument("--map-steps", type=int, default=200)
    parser.add_argument("--max-tree-depth", type=int, default=8)
    parser.add_argument("--target-accept", type=float, default=0.8)
    parser.add_argument("--study", action="append", default=None)
    parser.add_argument("--no-hierarchy", action="store_true")
    parser.add_argument("--out", default="posterior.nc")
    parser.add_argument("--export", default=None)
    parser.add_argument("--state-dir", default=None, help="resumable run saved here (see mscpk fit)")
    parser.add_argument("--hours", type=float, default=None, help="with --state-dir: stop after this long")
    parser.add_argument("--chunk", type=int, default=25, help="with --state-dir: iterations per saved piece")
    parser.add_argument(
        "--warm-start", default=None, help="with --state-dir: start from an earlier run's saved state"
    )
    parser.add_argument("--dense-mass", action="store_true", help="adapt a dense mass matrix")
    parser.add_argument(
        "--metric-from",
        action="append",
        default=None,
        help="with --state-dir: a pilot run's directory; repeat to pool several runs' draws (see mscpk fit)",
    )
    parser.add_argument("--metric-since", type=int, default=None, help="with --metric-from (see mscpk fit)")
    parser.add_argument("--metric-laplace", action="store_true", help="with --state-dir (see mscpk fit)")
    parser.add_argument("--init-scatter", type=float, default=0.0, help="(see mscpk fit)")
    parser.add_argument("--step-size", type=float, default=None, help="with --state-dir (see mscpk fit)")
    parser.add_argument("--share-step-size", action="store_true", help="with --state-dir (see mscpk fit)")
    parser.add_argument(
        "--detection-limit-log-sd", type=float, default=None, help="(see mscpk fit; default: its default)"
    )
    parser.add_argument("--seed", type=int, default=None, help="(see mscpk fit; default: its default, 0)")
    parser.add_argument(
        "--results",
        default=None,
        help="where to write the timing and diagnostics (default: benchmarks/results/calibration-<device>.json)",
    )
    return parser


def fit_command(args: argparse.Namespace) -> list[str]:
    """The ``mscpk fit`` arguments of this script's parsed ``args``."""
    cmd = [
        "fit",
        "--out",
        args.out,
        "--chains",
        str(args.chains),
        "--warmup",
        str(args.warmup),
        "--draws",
        str(args.draws),
        "--map-restarts",
        str(args.map_restarts),
        "--map-steps",
        str(args.map_steps),
        "--max-tree-depth",
        str(args.max_tree_depth),
        "--target-accept",
        str(args.target_accept),
    ]
    for s in args.study or []:
        cmd += ["--study", s]
    if args.no_hierarchy:
        cmd += ["--no-hierarchy"]
    if args.export:
        cmd += ["--export", args.export]
    if args.state_dir:
        cmd += ["--state-dir", args.state_dir, "--chunk", str(args.chunk)]
        if args.hours:
            cmd += ["--hours", str(args.hours)]
        if args.warm_start:
            cmd += ["--warm-start", args.warm_start]
        for directory in args.metric_from or ():
            cmd += ["--metric-from", directory]
        if args.metric_since is not None:
            cmd += ["--metric-since", str(args.metric_since)]
        if args.metric_laplace:
            cmd += ["--metric-laplace"]
    if args.init_scatter:
        cmd += ["--init-scatter", str(args.init_scatter)]
    if args.step_size is not None:
        cmd += ["--step-size", repr(args.step_size)]
    if args.share_step_size:
        cmd += ["--share-step-size"]
    if args.detection_limit_log_sd is not None:
        cmd += ["--detection-limit-log-sd", repr(args.detection_limit_log_sd)]
    if args.dense_mass:
        cmd += ["--dense-mass"]
    if args.seed is not None:
        cmd += ["--seed", str(args.seed)]
    return cmd


def main(argv=None):
    args = build_parser().parse_args(argv)
    # Equinox's runtime checks as NaN, not host callbacks: lets the persistent compilation
    # cache keep the sampler's programs between the pieces of a resumable run (see README).
    os.environ.setdefault("EQX_ON_ERROR", "nan")
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.chains}".strip()

    import jax

    jax.config.update("jax_enable_x64", True)
    import arviz as az

    from mscpk.calibration.fit import diagnostics
    from mscpk.calibration.posterior import global_sites
    from mscpk.cli import main as cli

    cmd = fit_command(args)
    t0 = time.perf_counter()
    rc = cli(cmd)
    wall = time.perf_counter() - t0
    if rc != 0:
        return rc
    if not Path(args.out).exists():  # a resumable run stopped by --hours: nothing to report yet
        return 0
    idata = az.from_netcdf(args.out)
    d = diagnostics(idata, global_sites(idata))
    sys.path.insert(0, str(Path(__file__).parent))
    from _common import environment

    device = jax.devices()[0]
    result = {
        "benchmark": "literature calibration end to end (mscpk fit: MAP + NUTS)",
        "command": "mscpk " + " ".join(cmd),
        "wall_s": wall,
        "nuts_s": float(idata.posterior.attrs.get("seconds", float("nan"))),
        "map_s": float(idata.posterior.attrs.get("map_seconds", float("nan"))),
        "chains": args.chains,
        "warmup": args.warmup,
        "draws": args.draws,
        "diagnostics": d,
        "nuts_s_per_ess": float(idata.posterior.attrs.get("seconds", float("nan")))
        / max(d["min_ess_bulk"], 1e-9),
        **environment(),
    }
    out = (
        Path(args.results)
        if args.results
        else Path(__file__).parent / "results" / f"calibration-{device.platform}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
