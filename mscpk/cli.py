"""Command-line interface: ``mscpk simulate ...``.

Example::

    mscpk simulate --species mouse --route iv --cells 2e6 --hours 96 --out result.csv --plot result.png
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib

from .dosing.regimen import SITES
from .host.host import GRAVITY, IMMUNE_STATUS
from .model.layout import ORGANS
from .observation.parameters import DETECTION_LIMIT_LOG_SD
from .physiology.species import SPECIES
from .product.cell_product import CULTURES, DONORS, PREPARATIONS, presets
from .routes import IA_TARGETS, ROUTES, VEHICLES

#: Options a scenario file may set (same names as the command-line options, with
#: dashes or underscores).
SCENARIO_KEYS = (
    "species",
    "product",
    "route",
    "cells",
    "hours",
    "infusion_min",
    "repeat_every_h",
    "prep",
    "rescue_h",
    "tf_positive",
    "heparin_iu_per_kg",
    "donor",
    "host_immunity",
    "gravity",
    "injury",
    "device",
    "culture",
    "site",
    "jugular_stasis",
    "target",
    "vehicle",
)

SUMMARY_TIMES_H = (0.25, 1.0, 4.0, 24.0, 72.0)


def _number(name: str, *, allow_zero: bool):
    """argparse type: a finite number > 0 (or >= 0), with a message naming the option."""
    bound = ">= 0" if allow_zero else "> 0"

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: expected a number, got {text!r}") from None
        ok = value >= 0 if allow_zero else value > 0
        if not ok or value == float("inf"):
            raise argparse.ArgumentTypeError(f"{name}: must be a finite number {bound}, got {text!r}")
        return value

    return parse


def _fraction(name):
    def parse(text):
        value = _number(name, allow_zero=True)(text)
        if value > 1:
            raise argparse.ArgumentTypeError(f"{name}: must lie in [0, 1], got {text!r}")
        return value

    return parse


def _positive_float(name):
    return _number(name, allow_zero=False)


def _nonnegative_float(name):
    return _number(name, allow_zero=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mscpk",
        description="Whole-body kinetics of therapeutic cells (MSCs). Units: hours, cells, mL, µm.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser(
        "simulate",
        help="simulate one regimen and write a tidy CSV",
        description=(
            "Simulate a cell product given to a species. Prints viable cells as %% of the dose per organ "
            "at a few times and writes the tidy table (time_h, organ, quantity, value, unit) as CSV."
        ),
    )
    sim.add_argument("--species", default="mouse", choices=SPECIES, help="host species (default: mouse)")
    sim.add_argument(
        "--product", default="bm_msc", choices=presets(), help="cell-product preset (default: bm_msc)"
    )
    sim.add_argument(
        "--route",
        default="iv",
        choices=ROUTES,
        help="route of administration: iv, ia (with --target), im, sc, ip, topical (with --vehicle), extracorporeal (default: iv)",
    )
    sim.add_argument(
        "--cells",
        type=_nonnegative_float("--cells"),
        default=None,
        help="number of cells per dose, e.g. 2e6 (required here or in --scenario)",
    )
    sim.add_argument(
        "--hours",
        type=_positive_float("--hours"),
        default=72.0,
        help="simulated time span in hours (default: 72)",
    )
    sim.add_argument(
        "--infusion-min",
        type=_positive_float("--infusion-min"),
        default=None,
        help="give the dose as an infusion over this many minutes (default: bolus)",
    )
    sim.add_argument(
        "--repeat-every-h",
        type=_positive_float("--repeat-every-h"),
        default=None,
        help="repeat the dose every this many hours within --hours (default: one dose)",
    )
    sim.add_argument(
        "--device",
        choices=("syringe", "bag"),
        default=None,
        help="infusion device in which cells settle during --infusion-min (default: none considered)",
    )
    sim.add_argument(
        "--target",
        choices=tuple(IA_TARGETS),
        default=None,
        help="arterial bed for --route ia (brain: carotid, heart: coronary, limb: femoral, liver: hepatic, kidney: renal)",
    )
    sim.add_argument(
        "--vehicle",
        choices=tuple(VEHICLES),
        default=None,
        help="vehicle of --route topical (default: suspension)",
    )
    sim.add_argument(
        "--site",
        choices=SITES,
        default=None,
        help="venous access of intravascular doses; central and jugular lines meet --jugular-stasis (default: peripheral)",
    )
    sim.add_argument(
        "--jugular-stasis",
        type=_fraction("--jugular-stasis"),
        default=None,
        help="stagnant/retrograde internal jugular flow of the host, 0 (normal) to 1 (stagnant); "
        "seen in 6 of 11 ISS crew (default: 0)",
    )
    sim.add_argument("--prep", choices=PREPARATIONS, default=None, help="preparation state (default: fresh)")
    sim.add_argument(
        "--rescue-h",
        type=_positive_float("--rescue-h"),
        default=None,
        help="hours of culture rescue after thawing (--prep rescued)",
    )
    sim.add_argument(
        "--tf-positive",
        type=_fraction("--tf-positive"),
        default=None,
        help="tissue-factor (CD142) positive fraction, 0-1 (default: preset)",
    )
    sim.add_argument(
        "--heparin-iu-per-kg",
        type=_nonnegative_float("--heparin-iu-per-kg"),
        default=None,
        help="systemic heparin (IU/kg, default 0)",
    )
    sim.add_argument(
        "--culture",
        choices=CULTURES,
        default=None,
        help="expansion condition of an MSC product (default: 2d)",
    )
    sim.add_argument(
        "--donor", choices=DONORS, default=None, help="donor match to the host (default: syngeneic)"
    )
    sim.add_argument(
        "--host-immunity", choices=IMMUNE_STATUS, default=None, help="host immune status (default: competent)"
    )
    sim.add_argument("--gravity", choices=GRAVITY, default=None, help="gravity level (default: 1g)")
    sim.add_argument(
        "--injury",
        default=None,
        metavar="TISSUE:LEVEL",
        help=f"injured organ and level, e.g. kidneys:1 (organs: {', '.join(ORGANS)})",
    )
    sim.add_argument(
        "--scenario",
        default=None,
        help="TOML file with any of these options (command-line options given explicitly win), for reproducible runs",
    )
    sim.add_argument("--out", required=True, help="path of the tidy CSV to write")
    sim.add_argument(
        "--posterior",
        type=_int_at_least("--posterior"),
        nargs="?",
        const=0,
        default=None,
        metavar="N",
        help="also simulate N draws of the shipped posterior (default: all) and report 90%% bands "
        "(CSV columns lower_90, median_draws, upper_90)",
    )
    sim.add_argument("--plot", default=None, help="optional path of a PNG figure of viable cells per organ")
    sim.add_argument(
        "--organs",
        default="blood,lung,liver,spleen,bone_marrow,whole_body",
        help=f"comma-separated organs for the printed table (from blood, {', '.join(ORGANS)}, whole_body)",
    )
    cmp = sub.add_parser(
        "compare-routes",
        help="give the same product and dose by every route and tabulate",
        description=(
            "Give one product and dose by every route (iv, ia into a bed, im, sc, ip, topical suspension/"
            "hydrogel/patch, extracorporeal) and write one row per route: route, viable_cell_hours_total, "
            "viable_cell_hours_target, lung_fraction_1h, days_to_1pct_viable, tat_peak, il10_auc, embolic_risk."
        ),
    )
    cmp.add_argument("--species", default="mouse", choices=SPECIES, help="host species (default: mouse)")
    cmp.add_argument(
        "--product", default="bm_msc", choices=presets(), help="cell-product preset (default: bm_msc)"
    )
    cmp.add_argument(
        "--cells", type=_positive_float("--cells"), required=True, help="cells per dose, e.g. 1e6"
    )
    cmp.add_argument(
        "--target",
        choices=tuple(IA_TARGETS),
        default="limb",
        help="arterial bed of the intra-arterial route (default: limb)",
    )
    cmp.add_argument(
        "--days", type=_positive_float("--days"), default=180.0, help="horizon in days (default: 180)"
    )
    cmp.add_argument("--out", required=True, help="path of the CSV table to write")
    cmp.add_argument("--plot", default=None, help="optional path of a PNG figure")
    evi = sub.add_parser(
        "evidence",
        help="browse the literature evidence library",
        description="List the studies of the evidence library, or plot each study's evidence against the model.",
    )
    evsub = evi.add_subparsers(dest="evidence_command", required=True)
    evsub.add_parser("list", help="one line per study: id, species, routes, assays, rows")
    evp = evsub.add_parser("plot", help="one figure per study: evidence vs the default model prediction")
    evp.add_argument("--out", required=True, help="directory to write <study_id>.png into")
    evp.add_argument("--study", action="append", default=None, help="only this study (repeatable)")
    fit = sub.add_parser(
        "fit",
        help="calibrate to the evidence library (MAP with optax, then NUTS with NumPyro)",
        description=(
            "Bayesian calibration of the registry parameters to the evidence library: MAP from several "
            "starts, then NUTS from the MAP; writes arviz InferenceData (netCDF), a summary table and "
            "posterior predictive checks."
        ),
    )
    fit.add_argument("--out", required=True, help="path of the InferenceData netCDF file to write")
    fit.add_argument("--chains", type=_int_at_least("--chains"), default=4, help="NUTS chains (default: 4)")
    fit.add_argument(
        "--warmup", type=_int_at_least("--warmup"), default=500, help="warm-up steps (default: 500)"
    )
    fit.add_argument(
        "--draws", type=_int_at_least("--draws"), default=1000, help="draws per chain (default: 1000)"
    )
    fit.add_argument(
        "--map-restarts", type=_int_at_least("--map-restarts"), default=4, help="MAP starts (default: 4)"
    )
    fit.add_argument(
        "--map-steps", type=_int_at_least("--map-steps"), default=200, help="Adam steps per start"
    )
    fit.add_argument("--study", action="append", default=None, help="only this study (repeatable)")
    fit.add_argument("--no-hierarchy", action="store_true", help="no study-level effects")
    fit.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    fit.add_argument("--max-tree-depth", type=_int_at_least("--max-tree-depth"), default=8)
    fit.add_argument(
        "--target-accept",
        type=float,
        default=0.8,
        help="NUTS target acceptance probability in (0, 1) (default 0.8; higher: smaller steps, fewer divergences)",
    )
    fit.add_argument("--export", default=None, help="directory to write shipped-defaults files into")
    fit.add_argument(
        "--state-dir",
        default=None,
        help="save the run here as it goes (MAP, warm-up, draws in pieces); the same command continues it",
    )
    fit.add_argument(
        "--hours",
        type=_positive_float("--hours"),
        default=None,
        help="with --state-dir: stop after this many hours (continue later)",
    )
    fit.add_argument(
        "--chunk",
        type=_int_at_least("--chunk"),
        default=25,
        help="with --state-dir: iterations (warm-up or draws) per saved piece (default: 25)",
    )
    fit.add_argument(
        "--warm-start",
        default=None,
        help="with --state-dir: a saved file of an earlier run (its 'state': positions per chain, "
        "step size, mass matrix) to start the chains and the adaptation from",
    )
    fit.add_argument(
        "--dense-mass",
        action="store_true",
        help="adapt a dense mass matrix (default: diagonal) for correlated parameters",
    )
    fit.add_argument(
        "--metric-from",
        action="append",
        default=None,
        help="with --state-dir: keep a dense mass matrix estimated from the draws of a pilot run saved "
        "in this directory (second half of its warm-up and its draws); the warm-up then adapts the step "
        "size only (use --warmup < 20: one adaptation window). Given more than once, the draws of every "
        "run named are pooled. Saved as <state-dir>/metric.npy and reused when the run is continued",
    )
    fit.add_argument(
        "--metric-since",
        type=int,
        default=None,
        help="with --metric-from: use the pilot's iterations from this one on (default: the second half "
        "of its warm-up)",
    )
    fit.add_argument(
        "--metric-laplace",
        action="store_true",
        help="with --state-dir: keep a dense mass matrix from the Laplace approximation at the MAP (the "
        "inverse Hessian of the potential; no pilot run needed; the warm-up then adapts the step size "
        "only, as with --metric-from). Saved as <state-dir>/metric.npy and reused when the run is continued",
    )
    fit.add_argument(
        "--init-scatter",
        type=float,
        default=0.0,
        help="with --metric-laplace or --metric-from: start each chain at the MAP moved by this times a "
        "draw from N(0, the mass matrix's inverse) (1: draws of the Laplace approximation; default 0: "
        "every chain at the MAP)",
    )
    fit.add_argument(
        "--step-size",
        type=_positive_float("--step-size"),
        default=None,
        help="with --state-dir: every chain's leapfrog step size, kept (no step-size adaptation); "
        "e.g. the smallest that an earlier run's chains adapted (mscpk posterior progress shows them)",
    )
    fit.add_argument(
        "--share-step-size",
        action="store_true",
        help="with --state-dir: at the end of warm-up every chain continues with the geometric mean of "
        "the chains' adapted step sizes (default: each its own); the chains run in parallel, and the one "
        "with the smallest step sets the wall time",
    )
    fit.add_argument(
        "--detection-limit-log-sd",
        type=_nonnegative_float("--detection-limit-log-sd"),
        default=DETECTION_LIMIT_LOG_SD,
        help="log-scale SD of the assay families' assumed detection limits, integrated out of the "
        "'below/above detection' rows that have no limit of their own (default: "
        "mscpk.observation.parameters.DETECTION_LIMIT_LOG_SD = 1, their assumed spread, the model of the "
        "shipped calibration; 0: taken as known, the model of the fits shipped before 2026-12)",
    )
    fit.add_argument(
        "--ppc-draws",
        type=_int_at_least("--ppc-draws"),
        default=200,
        help="posterior draws for the predictive checks written to <out>.ppc/ (default: 200)",
    )
    post = sub.add_parser("posterior", help="the calibrated posterior", description="Posterior tables.")
    postsub = post.add_subparsers(dest="posterior_command", required=True)
    summ = postsub.add_parser("summary", help="mean, sd, 90% HDI, ESS and R-hat of every global parameter")
    summ.add_argument("--file", default=None, help="an InferenceData netCDF (default: the shipped posterior)")
    prog = postsub.add_parser(
        "progress",
        help="where a resumable calibration run (mscpk fit --state-dir) stands: pieces, diagnostics "
        "of the draws so far, per-chain medians, optionally predictive coverage",
    )
    prog.add_argument("directory", help="the run's --state-dir")
    prog.add_argument(
        "--ppc",
        type=_int_at_least("--ppc"),
        default=None,
        help="also the 90%% posterior predictive coverage of this many draws (thinned at random)",
    )
    prog.add_argument(
        "--seed", type=int, default=0, help="key of the thinning and the replicates (default: 0)"
    )
    divs = postsub.add_parser(
        "divergences",
        help="replay the divergent transitions of a resumable run's draws and show where and why each "
        "diverged",
    )
    divs.add_argument("directory", help="the run's --state-dir")
    divs.add_argument(
        "--max",
        type=_int_at_least("--max", low=0),
        default=None,
        help="replay at most this many (default: all; 0: only count them)",
    )
    divs.add_argument(
        "--top",
        type=_int_at_least("--top"),
        default=5,
        help="terms and parameters shown per transition (default: 5)",
    )
    return parser


def _int_at_least(name, low=1):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{name}: expected an integer >= {low}, got {value}")
        return value

    return parse


def cmd_fit(args) -> int:
    import jax

    from .calibration import CalibrationProblem
    from .calibration import fit as calfit
    from .calibration.posterior import export, fit_report
    from .evidence import load
    from .evidence.likelihood import EvidenceLikelihood

    if not 0.0 < args.target_accept < 1.0:
        raise ValueError(f"--target-accept: must be in (0, 1), got {args.target_accept!r}")
    if args.hours is not None and not args.state_dir:
        raise ValueError("--hours: only with --state-dir (a stopped run must be saved to continue)")
    if args.warm_start is not None and not args.state_dir:
        raise ValueError("--warm-start: only with --state-dir")
    if args.metric_from is not None and not args.state_dir:
        raise ValueError("--metric-from: only with --state-dir")
    for directory in args.metric_from or ():
        if not os.path.isdir(directory):
            raise ValueError(f"--metric-from: no directory {directory}")
    if args.metric_since is not None and (args.metric_from is None or args.metric_since < 0):
        raise ValueError(f"--metric-since: an iteration >= 0 with --metric-from, got {args.metric_since}")
    if args.metric_laplace and not args.state_dir:
        raise ValueError("--metric-laplace: only with --state-dir")
    if args.metric_laplace and args.metric_from is not None:
        raise ValueError("--metric-laplace: not with --metric-from (one mass matrix)")
    if not (args.init_scatter >= 0 and args.init_scatter < float("inf")):
        raise ValueError(f"--init-scatter: a finite number >= 0, got {args.init_scatter!r}")
    if args.init_scatter > 0 and not (args.metric_laplace or args.metric_from is not None):
        raise ValueError("--init-scatter: only with --metric-laplace or --metric-from (its covariance)")
    if args.step_size is not None and not args.state_dir:
        raise ValueError("--step-size: only with --state-dir")
    if args.share_step_size and not args.state_dir:
        raise ValueError("--share-step-size: only with --state-dir")
    if args.share_step_size and args.step_size is not None:
        raise ValueError("--share-step-size: not with --step-size (every chain already has that step)")
    if args.init_scatter > 0 and args.warm_start is not None:
        raise ValueError("--init-scatter: not with --warm-start (the chains start from its positions)")
    warm_start = _warm_start(args.warm_start)
    table = load()
    if args.study:
        unknown = sorted(set(args.study) - set(table.study_id))
        if unknown:
            raise ValueError(f"--study: unknown {unknown}; allowed: {', '.join(sorted(set(table.study_id)))}")
        table = table[table.study_id.isin(args.study)].reset_index(drop=True)
    likelihood = EvidenceLikelihood(table, detection_limit_log_sd=args.detection_limit_log_sd)
    problem = CalibrationProblem(likelihood, hierarchical=not args.no_hierarchy)
    print(
        f"mscpk fit: {len(table)} rows, {problem.likelihood.n_studies} studies, "
        f"{len(problem.parameter_names)} calibrated parameters: {', '.join(problem.parameter_names)}"
    )
    key_map, key_nuts = jax.random.split(jax.random.PRNGKey(args.seed))
    best = _map_estimate(problem, key_map, args)
    print(f"MAP: log density {best.log_density:.3f} ({best.seconds:.0f} s; restarts {best.restarts})")
    if args.state_dir:
        metric = (
            _pilot_metric(problem, args, best.values)
            if args.metric_from is not None or args.metric_laplace
            else None
        )
        idata = calfit.run_nuts_resumable(
            problem,
            key_nuts,
            args.state_dir,
            args.chains,
            args.warmup,
            args.draws,
            chunk=args.chunk,
            init=best.values,
            max_tree_depth=args.max_tree_depth,
            target_accept=args.target_accept,
            hours=args.hours,
            warm_start=warm_start,
            dense_mass=args.dense_mass or metric is not None,
            inverse_mass_matrix=metric,
            adapt_mass_matrix=metric is None,
            init_scatter=args.init_scatter,
            step_size=args.step_size,
            share_step_size=args.share_step_size,
            progress=True,
        )
        if idata is None:
            print(
                f"stopped after --hours {args.hours:g}; run the same command again to continue ({args.state_dir})"
            )
            return 0
    else:
        idata = calfit.run_nuts(
            problem,
            key_nuts,
            args.chains,
            args.warmup,
            args.draws,
            init=best.values,
            max_tree_depth=args.max_tree_depth,
            target_accept=args.target_accept,
            dense_mass=args.dense_mass,
            progress=True,
        )
    idata.posterior.attrs["map_seconds"] = best.seconds
    # Where the run came from, for the shipped meta file (a continued run's own seconds
    # leave out the pilot whose metric and positions it started from).
    for name in ("state_dir", "warm_start", "metric_from", "metric_since"):
        value = getattr(args, name)
        if value is not None:  # several --metric-from: joined as a search path is (os.pathsep)
            idata.posterior.attrs[name] = os.pathsep.join(value) if name == "metric_from" else str(value)
    idata.posterior.attrs["detection_limit_log_sd"] = args.detection_limit_log_sd  # the likelihood it is of
    idata.to_netcdf(args.out)
    print(fit_report(idata, problem))
    print(f"wrote {args.out}")
    from pathlib import Path

    from .calibration import checks

    ppc_dir = Path(str(args.out) + ".ppc")
    draws = checks.posterior_draws(idata, args.ppc_draws)
    cov = checks.coverage_table(problem, checks.predictive(problem, draws, jax.random.PRNGKey(args.seed + 1)))
    ppc_dir.mkdir(parents=True, exist_ok=True)
    cov.to_csv(ppc_dir / "coverage.csv", index=False)
    checks.plot_predictive(cov, ppc_dir)
    checks.plot_coverage(cov, ppc_dir / "coverage.png")
    print(
        f"posterior predictive: {cov.within.mean():.0%} of {len(cov)} rows within their 90% interval; wrote {ppc_dir}/"
    )
    if args.export:
        # The check behind the shipped defaults goes with them (issue 6: >= 80% of rows).
        idata.posterior.attrs["ppc_draws"] = int(args.ppc_draws)
        idata.posterior.attrs["ppc_within_90"] = float(cov.within.mean())
        for path in export(idata, problem, args.export):
            print(f"wrote {path}")
    return 0


def _pilot_metric(problem, args, map_values):
    """The dense inverse mass matrix of ``--metric-from`` (estimated from the draws of the
    pilot run, or of every run named, pooled) or ``--metric-laplace`` (the Laplace
    approximation at ``map_values``) on the first call, saved in the state directory;
    read from there on continuing (the pilot may have gone on since, and the run keeps
    one matrix)."""
    import time
    from pathlib import Path

    import numpy as np

    from .calibration import fit as calfit

    saved = Path(args.state_dir) / "metric.npy"
    if saved.exists():
        print(f"dense mass matrix: {saved}")
        return np.load(saved)
    t0 = time.perf_counter()
    if args.metric_laplace:
        metric = calfit.laplace_metric(problem, map_values)
        sd = np.sqrt(np.diag(metric))
        source = f"Laplace approximation at the MAP, unconstrained sd {sd.min():.3g} to {sd.max():.3g}"
    else:
        runs = [calfit.pilot_draws(d, since=args.metric_since) for d in args.metric_from]
        # Pooled as one sequence (dense_metric pools every draw), whatever each run's chains.
        draws = {
            k: np.concatenate([np.reshape(r[k], (1, -1, *np.shape(r[k])[2:])) for r in runs], axis=1)
            for k in runs[0]
        }
        metric = calfit.dense_metric(problem, draws)
        source = f"{next(iter(draws.values())).shape[1]} pilot draws in {', '.join(args.metric_from)}"
    Path(args.state_dir).mkdir(parents=True, exist_ok=True)
    np.save(saved, metric)
    print(f"dense mass matrix from {source} ({time.perf_counter() - t0:.0f} s); saved {saved}")
    return metric


def _warm_start(path):
    """The ``state`` saved in ``path`` (a file of an earlier resumable run), or ``None``."""
    if path is None:
        return None
    import pickle
    from pathlib import Path

    if not Path(path).is_file():
        raise ValueError(f"--warm-start: no file {path}")
    try:
        with open(path, "rb") as f:
            saved = pickle.load(f)
    except Exception:  # not a pickle at all (any unpickling error)
        saved = None
    if not (isinstance(saved, dict) and hasattr(saved.get("state"), "adapt_state")):
        raise ValueError(f"--warm-start: {path} holds no saved NUTS state")
    return saved["state"]


def _map_estimate(problem, key, args):
    """MAP from several starts; with --state-dir it is saved there and reused on continuing."""
    import pickle
    from pathlib import Path

    from .calibration import fit as calfit

    saved = Path(args.state_dir) / "map.pkl" if args.state_dir else None
    if saved is not None and saved.exists():
        with open(saved, "rb") as f:
            return pickle.load(f)
    best = calfit.find_map(problem, key, args.map_restarts, args.map_steps, progress=True)
    if saved is not None:
        saved.parent.mkdir(parents=True, exist_ok=True)
        with open(saved, "wb") as f:
            pickle.dump(best, f)
    return best


def cmd_posterior(args) -> int:
    if args.posterior_command == "progress":
        return _posterior_progress(args)
    if args.posterior_command == "divergences":
        return _posterior_divergences(args)
    from .calibration.posterior import summary_table

    print(summary_table(args.file).to_string(float_format=lambda v: f"{v:10.4g}"))
    return 0


def _posterior_progress(args) -> int:
    import jax
    import numpy as np
    import pandas as pd

    from .calibration import checks
    from .calibration import fit as calfit

    if not os.path.isdir(args.directory):
        raise ValueError(f"directory: no directory {args.directory}")
    problem = calfit.problem_of_run(args.directory)
    pieces, idata = calfit.run_progress(args.directory, problem)
    fmt = lambda v: f"{v:10.4g}"  # noqa: E731
    print(f"run {args.directory}: {len(pieces)} pieces, {pieces.seconds.sum():.0f} s")
    print(pieces.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    steps = calfit.run_step_sizes(args.directory)
    if steps is not None:
        print(f"step size per chain (last saved state): {', '.join(f'{v:.4g}' for v in steps)}")
    if idata is None:
        print("no draws yet (still in warm-up)")
        return 0
    div = np.asarray(idata.sample_stats["diverging"])
    print(
        f"draws so far: {div.shape[1]} per chain x {div.shape[0]} chains; divergences {int(div.sum())} "
        f"of {div.size} ({100 * div.mean():.1f}%)"
    )
    table = calfit.summary(idata).sort_values("ess_bulk")
    print(table.to_string(float_format=fmt))
    d = calfit.diagnostics(idata)
    print(
        f"worst over the global parameters: R-hat {d['max_r_hat']:.3f}, bulk ESS {d['min_ess_bulk']:.0f}, "
        f"tail ESS {d['min_ess_tail']:.0f}"
    )
    medians = pd.DataFrame(
        {
            f"chain {c}": [float(np.median(idata.posterior[n][c])) for n in table.index]
            for c in range(div.shape[0])
        },
        index=table.index,
    )
    print("per-chain medians:")
    print(medians.to_string(float_format=fmt))
    if args.ppc:
        draws = checks.posterior_draws(idata, args.ppc, jax.random.PRNGKey(args.seed))
        cov = checks.coverage_table(
            problem, checks.predictive(problem, draws, jax.random.PRNGKey(args.seed + 1))
        )
        outside = list(cov.row_id[~cov.within])
        print(
            f"posterior predictive ({min(args.ppc, div.size)} draws): {cov.within.mean():.0%} of {len(cov)} rows "
            f"within their 90% interval; outside: {', '.join(outside) if outside else 'none'}"
        )
    return 0


def _posterior_divergences(args) -> int:
    from .calibration.divergences import RunReplay, cause

    if not os.path.isdir(args.directory):
        raise ValueError(f"directory: no directory {args.directory}")
    replay = RunReplay(args.directory)
    todo = replay.divergent()
    print(f"run {args.directory}: {len(todo)} divergent transitions in the draws phase")
    fmt = lambda v: f"{v:10.4g}"  # noqa: E731
    for c, i in todo[: args.max]:
        t = replay.replay(c, i)
        print(
            f"\nchain {c}, iteration {i}: {len(t.trajectory)} leapfrog steps, replay "
            f"{'reproduced the saved transition' if t.reproduced else 'differs from the saved transition'}; "
            + (f"diverged at step {t.divergent_step}: {cause(t)}" if t.diverged else cause(t))
        )
        if t.divergent_step is None:
            continue
        x = t.positions[t.divergent_step]
        if "gradient" in cause(t):
            rows = replay.nonfinite_gradient_rows(x)
            print(f"  terms with a non-finite gradient there: {', '.join(rows) if rows else 'none found'}")
        print("  log-density terms that changed most from the start:")
        print(replay.where_diverged(t).head(args.top).to_string(float_format=fmt))
        print("  parameters that moved most (unconstrained, in posterior SDs of the draws):")
        print(replay.moved(t).head(args.top).to_string(float_format=fmt))
    return 0


def cmd_evidence(args) -> int:
    from . import evidence

    table = evidence.load()
    if args.evidence_command == "list":
        studies = evidence.studies(table)
        print(f"mscpk evidence library {evidence.version()}: {len(table)} rows, {len(studies)} studies")
        print(studies[["study_id", "species", "routes", "assays", "rows"]].to_string(index=False))
        return 0
    from .evidence.likelihood import EvidenceLikelihood
    from .evidence.plots import comparison_table, plot_all

    if args.study:
        unknown = sorted(set(args.study) - set(table.study_id))
        if unknown:
            raise ValueError(f"--study: unknown {unknown}; allowed: {', '.join(sorted(set(table.study_id)))}")
        table = table[table.study_id.isin(args.study)]
    lik = EvidenceLikelihood(table)
    from .model.parameters import KineticParameters

    kinetic = KineticParameters.default()
    predictions = lik.terms(kinetic)
    if not bool(predictions.success):
        raise ValueError("the model could not be solved for every evidence scenario")
    for path in plot_all(comparison_table(lik, predictions), args.out):
        print(f"wrote {path}")
    return 0


def cmd_compare_routes(args) -> int:
    from .analysis.routes import compare_routes, plot_routes

    table, results = compare_routes(
        args.species, args.product, args.cells, ia_target=args.target, t_end_h=args.days * 24.0
    )
    table.to_csv(args.out, index=False)
    print(f"mscpk: {args.species}, {args.product}, {args.cells:g} cells by every route, {args.days:g} days")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"wrote {args.out}")
    if args.plot:
        plot_routes(table, results, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _regimen(args):
    from .dosing.regimen import Dose, Regimen

    infusion_h = None if args.infusion_min is None else args.infusion_min / 60.0
    starts = [0.0]
    if args.repeat_every_h is not None:
        t = args.repeat_every_h
        while t + (infusion_h or 0.0) <= args.hours:
            starts.append(t)
            t += args.repeat_every_h
    site = args.site or "peripheral"
    if args.target is not None and args.route != "ia":
        raise ValueError(f"--target: only used with --route ia, got --route {args.route}")
    if args.vehicle is not None and args.route != "topical":
        raise ValueError(f"--vehicle: only used with --route topical, got --route {args.route}")
    route = args.route
    if args.route == "ia" and args.target:
        route = f"ia:{args.target}"
    elif args.route == "topical" and args.vehicle:
        route = f"topical:{args.vehicle}"
    return Regimen([Dose(t, args.cells, route, infusion_h, args.device, site) for t in starts])


def apply_scenario(args, parser) -> None:
    """Fill options not given on the command line from ``--scenario`` (a TOML file).

    The file's values are parsed by the same option parser, so they get the same
    checks (types, ranges, allowed choices) as options typed on the command line.
    """
    if args.scenario is None:
        return
    try:
        with open(args.scenario, "rb") as f:
            scenario = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ValueError(f"--scenario: cannot read {args.scenario!r}: {err}") from None
    argv = ["simulate", "--out", args.out]
    for key, value in scenario.items():
        dest = key.replace("-", "_")
        if dest not in SCENARIO_KEYS:
            raise ValueError(f"--scenario: unknown key {key!r}; allowed: {', '.join(SCENARIO_KEYS)}")
        argv += ["--" + dest.replace("_", "-"), str(value)]
    from_file = parser.parse_args(argv)
    defaults = parser.parse_args(["simulate", "--out", args.out])
    for key in scenario:
        dest = key.replace("-", "_")
        if getattr(args, dest) == getattr(defaults, dest):  # not given on the command line
            setattr(args, dest, getattr(from_file, dest))


def _product(args):
    from .product.cell_product import cell_product

    overrides = {}
    if args.prep is not None:
        overrides["preparation"] = args.prep
    if args.rescue_h is not None:
        overrides["rescue_h"] = args.rescue_h
    if args.tf_positive is not None:
        overrides["tf_positive_fraction"] = args.tf_positive
    if args.donor is not None:
        overrides["donor"] = args.donor
    if args.culture is not None:
        overrides["culture"] = args.culture
    return cell_product(args.product, **overrides)


def _host(args):
    from .host.host import Host

    injury_organ, injury_level = None, 0.0
    if args.injury:
        organ, sep, level = args.injury.partition(":")
        try:
            injury_level = float(level) if sep else 1.0
        except ValueError:
            raise ValueError(
                f"--injury: expected TISSUE:LEVEL such as kidneys:1, got {args.injury!r}"
            ) from None
        injury_organ = organ.strip()
    return Host(
        immune_status=args.host_immunity or "competent",
        injury_organ=injury_organ,
        injury_level=injury_level,
        heparin_iu_per_kg=args.heparin_iu_per_kg or 0.0,
        gravity=args.gravity or "1g",
        jugular_stasis=args.jugular_stasis or 0.0,
    )


def cmd_simulate(args) -> int:
    from .api import simulate

    if args.cells is None:
        raise ValueError("--cells: required (on the command line or in --scenario)")
    regimen = _regimen(args)
    organs = [o.strip() for o in args.organs.split(",") if o.strip()]
    if args.route == "ia" and args.target and IA_TARGETS[args.target] not in organs:
        organs.insert(1, IA_TARGETS[args.target])  # show the target bed
    posterior = False if args.posterior is None else (True if args.posterior == 0 else args.posterior)
    result = simulate(
        args.species, _product(args), regimen, t_end_h=args.hours, host=_host(args), posterior=posterior
    )
    result.to_csv(args.out)
    table = result.summary(SUMMARY_TIMES_H, organs=organs)
    print(
        f"mscpk: {args.species}, {args.product}, {args.route}"
        + (f" into {args.target}" if args.target else "")
        + f", {len(regimen)} dose(s) of {args.cells:g} cells"
        + (f" over {args.infusion_min:g} min" if args.infusion_min else " (bolus)")
    )
    tat_peak = result.observations["tat"][:, 0].max()
    il10_peak = result.observations["il10"][:, 0].max()
    print("viable cells, % of total dose:")
    print(table.to_string(float_format=lambda v: f"{v:9.3f}"))
    if result.bands is not None:
        import numpy as np

        from .observation.assays import OUTPUT_ORGANS

        whole = result.bands["viable_cells"][:, :, OUTPUT_ORGANS.index("whole_body")]
        print("whole-body viable cells, % of total dose, median [90% posterior band]:")
        for t in SUMMARY_TIMES_H:
            if t <= args.hours:
                i = int(np.argmin(np.abs(result.times_h - t)))
                lo, mid, hi = 100.0 * whole[:, i] / regimen.total_cells
                print(f"  {t:g} h: {mid:.3g} [{lo:.3g}, {hi:.3g}]")
    balance = result.mass_balance()
    print(f"peak plasma TAT {tat_peak:.3g} ng/mL, peak IL-10 {il10_peak:.3g} pg/mL (above baseline)")
    host = result.model.host
    if host.injury_organ is not None:
        inflammation = result.observations["inflammation"][:, ORGANS.index(host.injury_organ)]
        print(
            f"inflammation of {host.injury_organ}: {inflammation[0]:.3g} at 0 h, lowest {inflammation.min():.3g}, "
            f"{inflammation[-1]:.3g} at {args.hours:g} h (injury level units)"
        )
    print(f"mass balance (max relative error): {max(balance.values()):.1e}")
    print(f"wrote {args.out}")
    if args.plot:
        result.plot(args.plot)
        print(f"wrote {args.plot}")
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .api import SolveError

    try:
        if args.command == "simulate":
            apply_scenario(args, parser)
            return cmd_simulate(args)
        if args.command == "compare-routes":
            return cmd_compare_routes(args)
        if args.command == "evidence":
            return cmd_evidence(args)
        if args.command == "fit":
            return cmd_fit(args)
        if args.command == "posterior":
            return cmd_posterior(args)
    except (ValueError, TypeError) as err:
        print(f"mscpk: error: {err}", file=sys.stderr)
        return 2
    except SolveError as err:
        print(
            f"mscpk: error: {err}. The command line uses the default solver settings; from Python, "
            "mscpk.simulate(..., solver=mscpk.SolverConfig(max_steps=..., solver=...)) sets them",
            file=sys.stderr,
        )
        return 1
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
