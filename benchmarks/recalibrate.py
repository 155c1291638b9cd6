"""Re-create the shipped calibration end to end: one command, resumable.

Run: ``python benchmarks/recalibrate.py --root DIR [--hours H] [--export mscpk/calibration/data]``
(``make calibrate [CAL_ROOT=DIR HOURS=H EXPORT=mscpk/calibration/data]``). Stopped by
``--hours`` or killed, the same command continues where it was (each stage is a resumable
``mscpk fit --state-dir`` run, saved in pieces of 10 iterations).

The stages are the runs the shipped posterior came from (``benchmarks/runs/recalibrate_v2``:
``pilot``, ``pooled``, ``final``; ``benchmarks/RESULTS.md``, sessions 31-32), each a
:mod:`benchmarks.calibration` run with its own ``--state-dir`` under ``DIR``:

1. ``pilot``: MAP (2 starts x 800 Adam steps), a dense Laplace mass matrix at the MAP,
   chains started from draws of that Laplace approximation (``--init-scatter 1``), 19
   warm-up iterations (step size only) and 60 draws per chain at target acceptance 0.85.
2. ``pooled``: the dense mass matrix estimated from the pilot's 240 draws, the chains
   continued from the pilot's last state, 19 warm-up iterations and 60 draws per chain at
   target acceptance 0.9.
3. ``final``: the same from the pooled stage's draws; ``--draws`` per chain (default 240),
   raised by ``--extend`` (default 30) until every global parameter has R-hat <= 1.01,
   bulk ESS >= 400 and fewer than 1% divergent draws (or ``--max-draws`` is reached).
   ``--final-metric-from pilot+pooled`` estimates its mass matrix from the pilot's and the
   pooled stage's draws together (480 instead of 240; not the shipped fit's setting: fewer
   leapfrog steps per draw, but in ``recalibrate_v3`` the tail of one site had not mixed
   by 360 draws per chain, nor in ``recalibrate_v4`` (another key) by 240; one of three
   runs converged at 240; ``benchmarks/RESULTS.md``, sessions 37-40). ``--final-seed N``
   keys the final stage's chains from ``mscpk fit --seed N`` (default 0, the shipped
   fit's): a replicate of a final-stage setting from the same pilot and pooled stages.

Every stage uses the shipped fit's model and sampler settings: after warm-up all chains
share the geometric mean of their adapted step sizes (``mscpk fit --share-step-size``;
``--own-step-sizes`` keeps each chain's own), and the assay families' assumed detection
limits are integrated out with log-SD ``--detection-limit-log-sd`` (default
``DETECTION_LIMIT_LOG_SD`` = 1, their assumed spread; 0 takes them as known, the model of
the fit shipped before 2026-12, ``benchmarks/runs/statement_*``). The options are
recorded in ``DIR/pipeline.json``; continuing a root with other options is refused.

The MAP is found once: the later stages get a copy of the pilot's ``map.pkl`` (same
evidence, seed and MAP settings, so the same optimum). With ``--export DIR`` the final
posterior is written there (the package's shipped defaults) only if it meets those
diagnostics and >= 80% of the evidence rows lie inside their 90% predictive interval.
``DIR/pipeline.json`` records each stage's wall time and the final diagnostics.

``--stages-from OLD`` (a new ``--root`` only) starts the root with copies of ``OLD``'s
finished ``pilot`` and ``pooled`` stages and their recorded wall times (``OLD`` must have
run with the same options; neither stage depends on the final stage's settings), so that a
final-stage setting can be tried, or a fit re-exported, without 1.1 h of repeated
sampling; ``pipeline.json`` and the export's metadata name ``OLD`` under ``stages_from``.

Measured for the shipped fit on a 2-core CPU: 10,434 s (2.9 h) in all, 240 final draws per
chain (``recalibrate_v2``; the fit shipped before took 7.1 h; RESULTS.md); the issue aimed
for 30 minutes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from mscpk.observation.parameters import DETECTION_LIMIT_LOG_SD

HERE = Path(__file__).resolve().parent
#: Settings every stage shares (those of the runs behind the shipped posterior).
COMMON = {
    "chains": 4,
    "warmup": 19,
    "map_restarts": 2,
    "map_steps": 800,
    "max_tree_depth": 7,
    "chunk": 10,
}
PILOT_DRAWS = 60
POOLED_DRAWS = 60
POOLED_TARGET_ACCEPT = 0.9
#: The final stage's target acceptance (the default of ``--final-target-accept``).
FINAL_TARGET_ACCEPT = 0.9
#: What a root whose ``pipeline.json`` does not record it ran at (every root before 2026-12-06).
EARLIER_FINAL_TARGET_ACCEPT = 0.9
#: The stages whose draws (from iteration ``warmup`` on) give the final stage's mass matrix,
#: by ``--final-metric-from``; the default is the shipped fit's (and every root's that does
#: not record it).
FINAL_METRIC_SOURCES = {"pooled": ("pooled",), "pilot+pooled": ("pilot", "pooled")}
FINAL_METRIC_FROM = "pooled"
#: The final stage's ``mscpk fit --seed`` (the default of ``--final-seed``): the shipped
#: fit's, ``mscpk fit``'s default; every root that does not record it ran with it.
FINAL_SEED = 0
#: Acceptance levels of issue 6.
MAX_R_HAT, MIN_ESS_BULK, MAX_DIVERGENCE_FRACTION, MIN_PPC_WITHIN_90 = 1.01, 400.0, 0.01, 0.8


def last_piece(directory: Path) -> Path:
    pieces = sorted(Path(directory).glob("piece_*.pkl"))
    if not pieces:
        raise ValueError(f"directory: {directory} holds no saved piece to continue from")
    return pieces[-1]


def stage_args(
    root,
    name: str,
    draws: int | None = None,
    options=(),
    final_target_accept=FINAL_TARGET_ACCEPT,
    final_metric_from=FINAL_METRIC_FROM,
    final_seed=FINAL_SEED,
) -> list[str]:
    """The ``benchmarks/calibration.py`` arguments of stage ``name`` under ``root``
    (``pooled`` and ``final`` need the stage before them finished: they start from its
    last piece), with ``options`` (further arguments, the same for every stage), the
    final stage's target acceptance, the stages its mass matrix is estimated from (a
    key of :data:`FINAL_METRIC_SOURCES`) and its seed (passed on only when it is not
    :data:`FINAL_SEED`, so that the shipped fit's stages keep their arguments)."""
    root = Path(root)
    d = root / name
    args = [f"--{k.replace('_', '-')}={v}" for k, v in COMMON.items()] + list(options)
    args += [f"--state-dir={d}", f"--out={d / 'posterior.nc'}", f"--results={d / 'calibration.json'}"]
    if name == "pilot":
        return args + [
            f"--draws={PILOT_DRAWS}",
            "--target-accept=0.85",
            "--metric-laplace",
            "--init-scatter=1.0",
        ]
    before = {"pooled": "pilot", "final": "pooled"}.get(name)
    if before is None:
        raise ValueError(f"name: unknown stage {name!r}; allowed: pilot, pooled, final")
    sources = (before,)
    if name == "pooled":
        draws = POOLED_DRAWS
    elif draws is None or isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ValueError(f"draws: the final stage needs an integer >= 1, got {draws!r}")
    else:
        if final_metric_from not in FINAL_METRIC_SOURCES:
            raise ValueError(
                f"final_metric_from: expected one of {sorted(FINAL_METRIC_SOURCES)}, got {final_metric_from!r}"
            )
        sources = FINAL_METRIC_SOURCES[final_metric_from]
        if isinstance(final_seed, bool) or not isinstance(final_seed, int) or final_seed < 0:
            raise ValueError(f"final_seed: expected an integer >= 0, got {final_seed!r}")
        if final_seed != FINAL_SEED:
            args.append(f"--seed={final_seed}")
    return args + [
        f"--draws={draws}",
        f"--target-accept={POOLED_TARGET_ACCEPT if name == 'pooled' else final_target_accept!r}",
        *[f"--metric-from={root / s}" for s in sources],
        f"--metric-since={COMMON['warmup']}",
        f"--warm-start={last_piece(root / before)}",
    ]


def run_stage(argv: list[str]) -> None:
    """Runs ``benchmarks/calibration.py`` in its own process (it sets JAX's host device
    count before JAX starts)."""
    subprocess.run([sys.executable, str(HERE / "calibration.py"), *argv], check=True)


def _met(diagnostics: dict) -> bool:
    return (
        diagnostics["max_r_hat"] <= MAX_R_HAT
        and diagnostics["min_ess_bulk"] >= MIN_ESS_BULK
        and diagnostics["divergence_fraction"] < MAX_DIVERGENCE_FRACTION
    )


def _ppc_within(stage_dir: Path) -> float:
    import pandas as pd

    return float(pd.read_csv(stage_dir / "posterior.nc.ppc" / "coverage.csv")["within"].mean())


def record_pipeline(export_dir, record: dict) -> None:
    """Adds the whole calibration's wall time (every stage, this machine's share) and its
    options to the exported posterior's metadata, beside the final stage's own seconds."""
    from mscpk.calibration.defaults import META_FILE

    path = Path(export_dir) / META_FILE
    meta = json.loads(path.read_text())
    meta["pipeline"] = {
        "stages_wall_s": {name: stage["wall_s"] for name, stage in record["stages"].items()},
        "total_wall_s": sum(stage["wall_s"] for stage in record["stages"].values()),
        "options": record["options"],
        "final_target_accept": record["final_target_accept"],
        "final_metric_from": record.get("final_metric_from", FINAL_METRIC_FROM),
        "final_seed": record.get("final_seed", FINAL_SEED),
        "final_draws": record["final_draws"],
    }
    if "stages_from" in record:  # the pilot and pooled stages were copied from there
        meta["pipeline"]["stages_from"] = record["stages_from"]
    path.write_text(json.dumps(meta, indent=2) + "\n")


def _copy_stages(source: Path, root: Path, options: list[str], final: dict) -> None:
    """Starts ``root`` (which must not exist yet) with copies of ``source``'s finished
    ``pilot`` and ``pooled`` stages and their recorded wall times (``stages_from`` in its
    ``pipeline.json`` names where they came from) and the final stage's settings ``final``."""
    if root.exists():
        raise ValueError(f"--stages-from: --root {root} exists; it needs a new --root")
    path = source / "pipeline.json"
    if not path.exists():
        raise ValueError(f"--stages-from: {source} holds no pipeline.json (not a calibration root)")
    earlier = json.loads(path.read_text())
    if earlier.get("options") != options:
        raise ValueError(
            f"--stages-from: {source} ran with the options {earlier.get('options')}, not {options}"
        )
    stages = {}
    for name in ("pilot", "pooled"):
        done = earlier.get("stages", {}).get(name, {})
        if not done.get("finished"):
            raise ValueError(f"--stages-from: {source} has not finished its {name!r} stage")
        stages[name] = {"wall_s": float(done["wall_s"]), "finished": True}
    root.mkdir(parents=True)
    for name in stages:
        shutil.copytree(source / name, root / name)
    record = {"stages": stages, "options": options, "stages_from": str(source), **final}
    (root / "pipeline.json").write_text(json.dumps(record, indent=2) + "\n")


def main(argv=None, runner=run_stage, clock=time.monotonic) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", required=True, help="directory the stages are saved in")
    parser.add_argument(
        "--hours", type=float, default=None, help="stop after about this long (continue later)"
    )
    parser.add_argument("--draws", type=int, default=240, help="final stage: draws per chain to start with")
    parser.add_argument("--extend", type=int, default=30, help="final stage: draws per chain added per round")
    parser.add_argument("--max-draws", type=int, default=1000, help="final stage: give up beyond this")
    parser.add_argument(
        "--export", default=None, help="write the converged posterior here (shipped defaults)"
    )
    parser.add_argument(
        "--own-step-sizes",
        action="store_true",
        help="every stage: each chain keeps its own adapted step size (default: after warm-up all chains "
        "share the geometric mean, as in the shipped fit; --share-step-size is accepted and is the default)",
    )
    parser.add_argument("--share-step-size", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--detection-limit-log-sd",
        type=float,
        default=DETECTION_LIMIT_LOG_SD,
        help="every stage: log-SD of the assumed detection limits (default "
        f"{DETECTION_LIMIT_LOG_SD!r}, as in the shipped fit; 0: known, as in the fits before 2026-12)",
    )
    parser.add_argument(
        "--final-target-accept",
        type=float,
        default=FINAL_TARGET_ACCEPT,
        help=f"final stage: NUTS target acceptance (default {FINAL_TARGET_ACCEPT!r}, as in the shipped fit)",
    )
    parser.add_argument(
        "--final-metric-from",
        choices=sorted(FINAL_METRIC_SOURCES),
        default=FINAL_METRIC_FROM,
        help="final stage: the stages whose draws give its dense mass matrix (default "
        f"{FINAL_METRIC_FROM!r}, as in the shipped fit; 'pilot+pooled': both stages' draws)",
    )
    parser.add_argument(
        "--final-seed",
        type=int,
        default=FINAL_SEED,
        help=f"final stage: key of its chains, as mscpk fit --seed (default {FINAL_SEED}, as in the shipped "
        "fit); another seed from the same pilot and pooled stages (--stages-from) is a replicate",
    )
    parser.add_argument(
        "--stages-from",
        default=None,
        help="a new --root only: copy the finished pilot and pooled stages of this earlier root (run with "
        "the same options; neither depends on the final stage's settings) and run only the final stage",
    )
    args = parser.parse_args(argv)
    for name in ("draws", "extend", "max_draws"):
        if getattr(args, name) < 1:
            raise ValueError(
                f"--{name.replace('_', '-')}: expected an integer >= 1, got {getattr(args, name)}"
            )
    if args.hours is not None and not args.hours > 0:
        raise ValueError(f"--hours: expected hours > 0, got {args.hours!r}")
    if not (0.0 <= args.detection_limit_log_sd < float("inf")):
        raise ValueError(
            f"--detection-limit-log-sd: expected a finite number >= 0, got {args.detection_limit_log_sd!r}"
        )
    if not 0.0 < args.final_target_accept < 1.0:
        raise ValueError(
            f"--final-target-accept: expected a number in (0, 1), got {args.final_target_accept!r}"
        )
    if args.final_seed < 0:
        raise ValueError(f"--final-seed: expected an integer >= 0, got {args.final_seed}")
    if args.own_step_sizes and args.share_step_size:
        raise ValueError("--own-step-sizes: not with --share-step-size")
    options = [] if args.own_step_sizes else ["--share-step-size"]
    options.append(f"--detection-limit-log-sd={float(args.detection_limit_log_sd)!r}")
    root = Path(args.root)
    record_path = root / "pipeline.json"
    if args.stages_from is not None:
        final = {
            "final_target_accept": args.final_target_accept,
            "final_metric_from": args.final_metric_from,
            "final_seed": args.final_seed,
        }
        _copy_stages(Path(args.stages_from), root, options, final)
    root.mkdir(parents=True, exist_ok=True)
    record = json.loads(record_path.read_text()) if record_path.exists() else {"stages": {}}
    if record.setdefault("options", options) != options:
        raise ValueError(
            f"--root: {root} holds a calibration run with the options {record['options']}, not {options}; "
            "use the same options or a new --root"
        )
    target = record.setdefault(
        "final_target_accept",
        args.final_target_accept if not record["stages"] else EARLIER_FINAL_TARGET_ACCEPT,
    )
    if target != args.final_target_accept:
        raise ValueError(
            f"--root: {root} holds a calibration run whose final stage targets acceptance {target!r}, not "
            f"{args.final_target_accept!r}; use --final-target-accept {target!r} or a new --root"
        )
    metric_from = record.setdefault(
        "final_metric_from", args.final_metric_from if not record["stages"] else FINAL_METRIC_FROM
    )
    if metric_from != args.final_metric_from:
        raise ValueError(
            f"--root: {root} holds a calibration run whose final stage's mass matrix comes from "
            f"{metric_from!r}, not {args.final_metric_from!r}; use --final-metric-from {metric_from} or a new --root"
        )
    seed = record.setdefault("final_seed", args.final_seed if not record["stages"] else FINAL_SEED)
    if seed != args.final_seed:
        raise ValueError(
            f"--root: {root} holds a calibration run whose final stage was keyed by seed {seed}, not "
            f"{args.final_seed}; use --final-seed {seed} or a new --root"
        )
    started = clock()

    def left() -> list[str]:
        if args.hours is None:
            return []
        hours = args.hours - (clock() - started) / 3600.0
        return [f"--hours={max(hours, 1e-9):.6g}"]

    def run(name: str, draws: int | None = None) -> bool:
        """Runs (or continues) a stage; True once it has written its posterior."""
        d = root / name
        if name != "pilot" and not (d / "map.pkl").exists():
            d.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / "pilot" / "map.pkl", d / "map.pkl")
        out = d / "posterior.nc"
        out.unlink(missing_ok=True)  # written again only when the stage finishes
        t0 = clock()
        runner(stage_args(root, name, draws, options, target, metric_from, seed) + left())
        done = record["stages"].setdefault(name, {"wall_s": 0.0})
        done["wall_s"] += clock() - t0
        record_path.write_text(json.dumps(record, indent=2) + "\n")
        return out.exists()

    def out_of_time() -> bool:
        return args.hours is not None and clock() - started >= args.hours * 3600.0

    for name in ("pilot", "pooled"):
        if record["stages"].get(name, {}).get("finished"):
            continue
        if out_of_time() or not run(name):
            print(f"stopped in stage {name!r}; run the same command again to continue ({root})")
            return 0
        record["stages"][name]["finished"] = True
        record_path.write_text(json.dumps(record, indent=2) + "\n")
    draws = max(args.draws, int(record.get("final_draws", 0)))
    while True:
        record["final_draws"] = draws
        if out_of_time() or not run("final", draws):
            print(f"stopped in stage 'final' at {draws} draws per chain; run the same command again ({root})")
            return 0
        diagnostics = json.loads((root / "final" / "calibration.json").read_text())["diagnostics"]
        record["final_diagnostics"] = diagnostics
        record["ppc_within_90"] = _ppc_within(root / "final")
        record_path.write_text(json.dumps(record, indent=2) + "\n")
        print(f"final stage at {draws} draws per chain: {diagnostics}")
        if _met(diagnostics):
            break
        if draws + args.extend > args.max_draws:
            print(f"not converged by --max-draws {args.max_draws}: {diagnostics}")
            return 1
        draws += args.extend
    total = sum(s["wall_s"] for s in record["stages"].values())
    print(f"converged at {draws} draws per chain; {total:.0f} s in all stages (this machine's share)")
    if args.export:
        if record["ppc_within_90"] < MIN_PPC_WITHIN_90:
            print(f"not exported: {record['ppc_within_90']:.0%} of rows within their 90% interval (< 80%)")
            return 1
        runner(
            stage_args(root, "final", draws, options, target, metric_from, seed) + [f"--export={args.export}"]
        )
        record_pipeline(args.export, record)
        print(f"exported to {args.export}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
