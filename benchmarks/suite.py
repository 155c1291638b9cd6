"""``make bench``: the benchmark suite. Prints a table and writes
``benchmarks/results/latest.json`` with machine, versions and device.

Keys (each measured in this one run; ratios side by side):

- ``speedup_vs_scipy_lsoda`` (and ``_rk45``): per-subject throughput of
  :func:`mscpk.population.simulate_population` at ``--subjects`` (10,000) over SciPy
  ``solve_ivp`` on the same equations in NumPy (``scipy_reference.py``), same subjects,
  tolerances (``rtol``, ``atol`` and SciPy's error measure, the RMS norm:
  ``SolverConfig(norm="rms")``) and daily outputs, SciPy timed on a subsample
  (``--scipy-subjects``). SciPy runs one subject after another on one core; mscpk shards
  each chunk over every core as a JAX host device (``speedup_vs_scipy_lsoda_one_device``:
  on one device). Both integrate every state slot (``population.py --full``).
  ``speedup_vs_scipy_lsoda_reduced``: both integrate only the slots the outputs need (60
  of 283 here; the same subsystem, ``simulate_population``'s default and
  ``solve_scipy(..., slots=...)``). ``..._max_norm``: mscpk with its default max norm
  (every slot to its own tolerance, stricter than SciPy's control).
- ``scaling``: wall time and peak memory for 1, 100, 10,000, 100,000 subjects, each N in
  a fresh process (``population.py``) so that its peak memory is its own.
- ``grad_over_value``: value + gradient over value of the calibration potential (the
  whole evidence likelihood plus priors, 48 unconstrained coordinates), reverse mode
  (``jax.value_and_grad``) and forward mode (``jax.jacfwd`` with
  ``SolverConfig(adjoint="forward")``).
- ``compile_cold_s`` / ``compile_warm_s``: first call of ``mscpk.simulate()`` in a fresh
  process with an empty / a filled persistent compilation cache (warm: median of three
  fresh processes; also reported for the likelihood's value + gradient).
- ``solver_over_expm``: adaptive solve over the matrix-exponential solution of the
  linear configuration (``Mechanisms.none()``), per subject, vmapped batches.
- ``nuts_s_per_ess``: NUTS wall seconds (warm-up + draws) per bulk effective sample of
  the slowest global parameter, read from a finished calibration (``--posterior``).
- ``jax_versions``: with ``--other-python PY`` the key figures are measured again under
  that interpreter's jax (``--key-figures`` mode) and both sets are stored.
  ``--versions-only --other-python PY`` (``make bench-versions``) measures only these, in
  this interpreter and then in ``PY``, one after the other, and replaces ``jax_versions``
  in an existing ``--out`` (the other keys keep their figures and dates).

Usage: ``python benchmarks/suite.py [--subjects 10000 --scaling 1 100 10000 100000]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from _common import environment, timed  # noqa: E402
from jax.scipy.linalg import expm  # noqa: E402

import mscpk  # noqa: E402
from mscpk.population import Variability, simulate_population, subject, subject_keys  # noqa: E402
from mscpk.solve.segments import event_schedule  # noqa: E402

DAYS = 30.0


def _setting():
    model = mscpk.build_model("mouse", "bm_msc")
    regimen = mscpk.Regimen.bolus(1e6)
    t_end = 24.0 * DAYS
    times = np.arange(0.0, t_end + 1e-9, 24.0)
    return model, regimen, times, t_end


def _subprocess_env(cache_dir=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if cache_dir is not None:  # as `make` sets it up
        env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    return env


def bench_population(
    n: int,
    chunk: int | None = None,
    python=sys.executable,
    host_devices: int | None = None,
    full: bool = True,
    norm: str | None = None,
) -> dict:
    """One ``population.py`` run in a fresh process (its own peak memory). ``host_devices``:
    CPU cores exposed as that many JAX devices (``simulate_population`` shards each chunk
    over them); ``None``: JAX's default (one CPU device). ``full``: every state slot (the
    equations SciPy solves), else only those the outputs need. ``norm``: the solver's error
    norm (``None``: ``SolverConfig``'s default, the max norm; ``"rms"``: SciPy's)."""
    env = _subprocess_env()
    if host_devices:
        env["XLA_FLAGS"] = (
            f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={host_devices}".strip()
        )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pop.json"
        cmd = [python, str(HERE / "population.py"), "--n", str(n), "--out", str(out)]
        if chunk is not None:
            cmd += ["--chunk", str(min(chunk, n))]
        if full:
            cmd.append("--full")
        if norm:
            cmd += ["--norm", norm]
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        data = json.loads(out.read_text())
    keep = ("subjects", "chunk", "wall_s", "subjects_per_s", "mean_steps", "peak_memory_bytes", "all_solved")
    return {**{k: data["runs"][0][k] for k in keep}, "devices": data["device_count"]}


def bench_scipy(n_sub: int, methods=("LSODA", "RK45", "LSODA_reduced")) -> dict:
    """Per-subject SciPy time on subjects 0..n_sub-1 of the population benchmark's key,
    and their agreement with mscpk (viable cells in lung and whole body, daily).
    ``<method>_reduced``: SciPy integrates only the slots ``simulate_population``'s default
    integrates (``meta["slot_indices"]``), the same subsystem."""
    from scipy_reference import solve_scipy

    model, regimen, times, t_end = _setting()
    table = regimen.table()
    keys = subject_keys(jax.random.PRNGKey(0), 0, n_sub)
    subjects = [subject(model, keys[i], Variability()) for i in range(n_sub)]
    ref = simulate_population(model, regimen, times, t_end, n_sub, jax.random.PRNGKey(0), chunk_size=n_sub)
    out = {}
    for name in methods:
        method, _, reduced = name.partition("_")
        slots = ref.meta["slot_indices"] if reduced else None
        wall, nfev, worst = 0.0, [], 0.0
        for i, m in enumerate(subjects):
            run = solve_scipy(m, table, times, t_end, method, slots=slots)
            wall += run["solve_s"]
            if not run["success"]:
                raise RuntimeError(f"SciPy {method} failed on subject {i}")
            nfev.append(run["nfev"])
            obs = m.observe(jnp.asarray(run["ys"]), jnp.zeros((len(times), m.n_size_classes)))
            lung = np.asarray(obs.viable[:, 1])
            mine = ref.values[("viable_cells", "lung")][i]
            big = mine > 1e-3 * mine.max()
            worst = max(worst, float(np.max(np.abs(lung[big] - mine[big]) / mine[big])))
        out[name] = {
            "subjects": n_sub,
            "slots": len(slots) if reduced else None,
            "s_per_subject": wall / n_sub,
            "mean_rhs_evaluations": float(np.mean(nfev)),
            "max_rel_diff_lung_viable_vs_mscpk": worst,
        }
    return out


def bench_grad(repeat: int = 3) -> dict:
    from numpyro.infer import init_to_median
    from numpyro.infer.util import initialize_model

    from mscpk.calibration.problem import CalibrationProblem
    from mscpk.evidence.likelihood import EvidenceLikelihood

    result = {}
    for mode in ("reverse", "forward"):
        base = EvidenceLikelihood().solver  # the likelihood's own settings, in either mode
        lik = EvidenceLikelihood(solver=dataclasses.replace(base, adjoint=mode))
        prob = CalibrationProblem(lik)
        info = initialize_model(
            jax.random.PRNGKey(0), prob.model, init_strategy=init_to_median, validate_grad=False
        )
        potential, z = info.potential_fn, info.param_info.z
        c_v, t_v = timed(jax.jit(potential), z, repeat=repeat)
        grad = jax.value_and_grad(potential) if mode == "reverse" else jax.jacfwd(potential)
        c_g, t_g = timed(jax.jit(grad), z, repeat=repeat)
        result[mode] = {
            "value_s": t_v,
            "value_and_grad_s": t_g,
            "grad_over_value": t_g / t_v,
            "compile_value_s": c_v,
            "compile_grad_s": c_g,
            "dimensions": int(sum(np.size(v) for v in jax.tree_util.tree_leaves(z))),
        }
    return result


_COMPILE_SNIPPET = """
import time, jax
jax.config.update("jax_enable_x64", True)
import mscpk
t0 = time.perf_counter()
{body}
print("SECONDS", time.perf_counter() - t0)
"""
_BODIES = {
    "simulate": "mscpk.simulate('mouse', 'bm_msc', cells=1e6).to_dataframe()",
    "likelihood_value_and_grad": (
        "from mscpk.evidence.likelihood import EvidenceLikelihood\n"
        "from mscpk.observation.parameters import ObservationParameters\n"
        "f = jax.jit(jax.value_and_grad(EvidenceLikelihood().function(), argnums=(0, 1)))\n"
        "jax.block_until_ready(f(mscpk.KineticParameters.default(), ObservationParameters.default()))"
    ),
}


def bench_compile(
    python=sys.executable, what=("simulate", "likelihood_value_and_grad"), warm_runs: int = 3
) -> dict:
    """First call in a fresh process: empty cache (cold), then ``warm_runs`` more fresh
    processes on the same cache (warm: their median; all runs are kept)."""
    out = {}
    for name in what:
        code = _COMPILE_SNIPPET.format(body=_BODIES[name])
        with tempfile.TemporaryDirectory() as cache:
            times = []
            for _ in range(1 + warm_runs):
                run = subprocess.run(
                    [python, "-c", code], capture_output=True, text=True, env=_subprocess_env(cache)
                )
                if run.returncode != 0:
                    raise RuntimeError(f"compile benchmark {name!r} failed:\n{run.stderr[-3000:]}")
                times.append(float(run.stdout.split("SECONDS")[-1]))
            out[name] = {
                "cold_s": times[0],
                "warm_s": float(np.median(times[1:])),
                "warm_runs_s": times[1:],
                "cache_files": len(os.listdir(cache)),
            }
    return out


def bench_expm(n: int = 64, repeat: int = 3) -> dict:
    """Adaptive solver vs the matrix-exponential solution of the linear configuration
    (``Mechanisms.none()``), vmapped over ``n`` virtual subjects, 30 days, daily outputs,
    per subject. The exact side is the cheapest exact method for this grid: one
    propagator ``expm(24 h * A)`` per subject applied 30 times (the bolus at time 0 is
    the initial state); :func:`mscpk.solve_expm`, which takes one exponential per output
    time and segment for arbitrary regimens, is far slower (see RESULTS.md)."""
    _, regimen, times, t_end = _setting()
    linear = mscpk.build_model("mouse", "bm_msc", mechanisms=mscpk.Mechanisms.none())
    table = regimen.table()
    keys = subject_keys(jax.random.PRNGKey(0), 0, n)
    t, te = jnp.asarray(times), jnp.asarray(t_end)
    config = mscpk.SolverConfig()
    step_h = float(times[1] - times[0])

    @jax.jit
    def adaptive(keys):
        return jax.vmap(lambda k: mscpk.solve(subject(linear, k), table, t, te, config).ys)(keys)

    @jax.jit
    def exact(keys):
        def one(k):
            m = subject(linear, k)
            _, jumps, _, _ = event_schedule(table, m, te)
            y0 = jumps.sum(0)
            propagator = expm(m.linear_matrix() * step_h)
            _, ys = jax.lax.scan(
                lambda y, _: (propagator @ y, propagator @ y), y0, None, length=len(times) - 1
            )
            return jnp.concatenate([y0[None], ys])

        return jax.vmap(one)(keys)

    c_a, t_a = timed(adaptive, keys, repeat=repeat)
    c_e, t_e = timed(exact, keys, repeat=repeat)
    ya, ye = np.asarray(adaptive(keys)), np.asarray(exact(keys))
    big = np.abs(ye) > 1e-6 * float(regimen.total_cells)
    return {
        "subjects": n,
        "adaptive_s_per_subject": t_a / n,
        "expm_s_per_subject": t_e / n,
        "solver_over_expm": t_a / t_e,
        "max_rel_diff": float(np.max(np.abs(ya - ye)[big] / np.abs(ye)[big])),
        "compile_adaptive_s": c_a,
        "compile_expm_s": c_e,
        "states": int(linear.n_states),
    }


def nuts_from_posterior(path) -> dict:
    """NUTS wall seconds (warm-up + draws, the ``seconds`` the fit recorded) per bulk
    effective sample of the slowest global parameter. ``path``: a finished calibration
    (netCDF) or a resumable run's directory (``--state-dir``; its draws so far, its
    seconds being the initial state's and every saved piece's; ``partial`` says so)."""
    import arviz as az

    from mscpk.calibration.fit import diagnostics, run_progress
    from mscpk.calibration.posterior import global_sites

    partial = Path(path).is_dir()
    idata = run_progress(path)[1] if partial else az.from_netcdf(path)
    if idata is None:
        raise ValueError(f"--posterior: the run in {path} has no draws yet")
    seconds = float(idata.posterior.attrs.get("seconds", "nan"))
    d = diagnostics(idata, global_sites(idata))
    return {
        "posterior": str(path),
        "partial": partial,
        "draws_per_chain": int(idata.posterior.sizes["draw"]),
        "nuts_wall_s": seconds,
        "min_bulk_ess": d["min_ess_bulk"],
        "nuts_s_per_ess": seconds / d["min_ess_bulk"],
        "max_r_hat": d["max_r_hat"],
        "divergence_fraction": d["divergence_fraction"],
        "draws": d["draws"],
    }


def key_figures(args) -> dict:
    """What is compared across JAX versions (everything but SciPy, scaling and NUTS)."""
    return {
        "population": bench_population(args.subjects, args.chunk, host_devices=os.cpu_count()),
        "grad": bench_grad(),
        "compile": bench_compile(),
        "expm": bench_expm(args.expm_subjects),
        **environment(),
    }


def _other_key_figures(args) -> dict:
    """:func:`key_figures` under ``args.other_python`` (a fresh process of that interpreter)."""
    with tempfile.TemporaryDirectory() as tmp:
        other_out = Path(tmp) / "other.json"
        cmd = [args.other_python, __file__, "--key-figures", "--out", str(other_out)]
        cmd += ["--subjects", str(args.subjects)]
        cmd += ["--chunk", str(args.chunk)] if args.chunk else []
        cmd += ["--expm-subjects", str(args.expm_subjects)]
        subprocess.run(cmd, check=True, env=_subprocess_env())
        return json.loads(other_out.read_text())


def _versions_table(versions: dict) -> None:
    """The key figures side by side, one column per JAX version."""
    rows = [
        ("population subjects/s", lambda f: f["population"]["subjects_per_s"]),
        ("potential value s", lambda f: f["grad"]["reverse"]["value_s"]),
        ("value + gradient s (reverse)", lambda f: f["grad"]["reverse"]["value_and_grad_s"]),
        ("grad_over_value (reverse)", lambda f: f["grad"]["reverse"]["grad_over_value"]),
        ("jacfwd s (forward)", lambda f: f["grad"]["forward"]["value_and_grad_s"]),
        (
            "simulate() cold / warm s",
            lambda f: (f["compile"]["simulate"]["cold_s"], f["compile"]["simulate"]["warm_s"]),
        ),
        ("solver_over_expm", lambda f: f["expm"]["solver_over_expm"]),
    ]
    names = list(versions)
    print(f"{'jax':32s}" + "".join(f"{n:>24s}" for n in names))
    for label, get in rows:
        cells = []
        for n in names:
            try:
                v = get(versions[n])
            except (KeyError, TypeError):
                v = None
            cells.append(
                "-"
                if v is None
                else (" / ".join(f"{x:.4g}" for x in v) if isinstance(v, tuple) else f"{v:.4g}")
            )
        print(f"{label:32s}" + "".join(f"{c:>24s}" for c in cells))


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subjects", type=int, default=10_000)
    parser.add_argument("--chunk", type=int, default=None, help="default: simulate_population's")
    parser.add_argument("--scaling", type=int, nargs="*", default=[1, 100, 10_000, 100_000])
    parser.add_argument("--scipy-subjects", type=int, default=20)
    parser.add_argument("--expm-subjects", type=int, default=64)
    parser.add_argument(
        "--posterior",
        default=None,
        help="finished calibration (netCDF) or a resumable run's directory (its draws so far) for nuts_s_per_ess",
    )
    parser.add_argument("--other-python", default=None, help="interpreter with another jax for jax_versions")
    parser.add_argument(
        "--key-figures", action="store_true", help="only the cross-version figures (JSON to --out)"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="reuse the sections already finished in <out>.partial.json (same machine and settings)",
    )
    parser.add_argument(
        "--nuts-only",
        action="store_true",
        help="with --posterior: only replace nuts_s_per_ess in an existing --out (the other "
        "sections keep their figures and their sections_measured dates)",
    )
    parser.add_argument(
        "--versions-only",
        action="store_true",
        help="with --other-python: only replace jax_versions in an existing --out (the key figures "
        "under this interpreter's jax and then under the other's)",
    )
    parser.add_argument("--out", default=str(HERE / "results" / "latest.json"))
    args = parser.parse_args(argv)
    if args.versions_only:
        if not args.other_python:
            parser.error("--versions-only: needs --other-python")
        out = Path(args.out)
        if not out.exists():
            parser.error(f"--versions-only: {out} does not exist (run the whole suite first)")
        result = json.loads(out.read_text())
        this = key_figures(args)
        other = _other_key_figures(args)
        result["jax_versions"] = {this["versions"]["jax"]: this, other["versions"]["jax"]: other}
        result.setdefault("sections_measured", {})["jax_versions"] = {
            "at": time.strftime("%Y-%m-%d %H:%M"),
            "eqx_on_error": os.environ.get("EQX_ON_ERROR", "raise"),
        }
        out.write_text(json.dumps(result, indent=2) + "\n")
        _versions_table(result["jax_versions"])
        print(f"wrote {out}")
        return
    if args.nuts_only:
        if not args.posterior:
            parser.error("--nuts-only: needs --posterior")
        out = Path(args.out)
        result = json.loads(out.read_text())
        nuts = nuts_from_posterior(args.posterior)
        result["nuts_s_per_ess"] = nuts["nuts_s_per_ess"]
        # reported_on: this process; the run records its own versions in its attrs.
        result["nuts"] = {**nuts, "reported_on": environment()}
        result.setdefault("sections_measured", {})["nuts"] = {"at": time.strftime("%Y-%m-%d %H:%M")}
        out.write_text(json.dumps(result, indent=2) + "\n")
        _table(result)
        print(f"wrote {out}")
        return
    if args.key_figures:
        Path(args.out).write_text(json.dumps(key_figures(args), indent=2) + "\n")
        return
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial.json")
    done = json.loads(partial.read_text()) if args.resume and partial.exists() else {}

    def section(name, compute):
        """Each finished section is saved at once, so a failure later loses nothing."""
        if name in done:
            print(f"[{time.strftime('%H:%M:%S')}] {name}: reused from {partial}", flush=True)
            return done[name]
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
        done[name] = compute()
        # When and how each section was measured: with --resume, latest.json can mix runs.
        done.setdefault("_measured", {})[name] = {
            "at": time.strftime("%Y-%m-%d %H:%M"),
            "eqx_on_error": os.environ.get("EQX_ON_ERROR", "raise"),
        }
        partial.write_text(json.dumps(done, indent=2) + "\n")
        return done[name]

    result = {"benchmark": "mscpk suite (benchmarks/suite.py)", **environment()}
    result["sections_measured"] = done.setdefault("_measured", {})
    scipy = section("scipy", lambda: bench_scipy(args.scipy_subjects))
    sizes = sorted(set(args.scaling) | {args.subjects})
    cores = os.cpu_count()  # every core a JAX device (shard_map over them)
    scaling = [
        section(f"population_{n}", lambda n=n: bench_population(n, args.chunk, host_devices=cores))
        for n in sizes
    ]
    at_n = next(r for r in scaling if r["subjects"] == args.subjects)
    # The comparisons use SciPy's error measure (RMS over the integrated slots, same rtol
    # and atol); the scaling rows and the *_max_norm keys mscpk's default max norm.
    same = section(
        "population_rms",
        lambda: bench_population(args.subjects, args.chunk, host_devices=cores, norm="rms"),
    )
    one = section("population_one_device", lambda: bench_population(args.subjects, args.chunk, norm="rms"))
    reduced = section(
        "population_reduced",
        lambda: bench_population(args.subjects, args.chunk, host_devices=cores, full=False, norm="rms"),
    )
    reduced_max = section(
        "population_reduced_max_norm",
        lambda: bench_population(args.subjects, args.chunk, host_devices=cores, full=False),
    )

    def per_subject(run):
        return run["wall_s"] / run["subjects"]

    lsoda, lsoda_reduced = scipy["LSODA"]["s_per_subject"], scipy["LSODA_reduced"]["s_per_subject"]
    mscpk_per_subject = per_subject(same)
    result["speedup_vs_scipy_lsoda"] = lsoda / mscpk_per_subject
    result["speedup_vs_scipy_rk45"] = scipy["RK45"]["s_per_subject"] / mscpk_per_subject
    result["speedup_vs_scipy_lsoda_one_device"] = lsoda / per_subject(one)
    result["speedup_vs_scipy_lsoda_max_norm"] = lsoda / per_subject(at_n)
    result["speedup_vs_scipy_lsoda_reduced"] = lsoda_reduced / per_subject(reduced)
    result["speedup_vs_scipy_lsoda_reduced_max_norm"] = lsoda_reduced / per_subject(reduced_max)
    result["mscpk_rms"] = same
    result["mscpk_reduced_max_norm"] = reduced_max
    result["mscpk_reduced"] = reduced
    result["scipy"] = scipy
    result["mscpk_s_per_subject"] = mscpk_per_subject
    result["mscpk_one_device"] = one
    result["scaling"] = [r for r in scaling if r["subjects"] in args.scaling]
    grad = section("grad", bench_grad)
    result["grad_over_value"] = {m: grad[m]["grad_over_value"] for m in grad}
    result["grad"] = grad
    comp = section("compile", bench_compile)
    result["compile_cold_s"] = comp["simulate"]["cold_s"]
    result["compile_warm_s"] = comp["simulate"]["warm_s"]
    result["compile"] = comp
    expm = section("expm", lambda: bench_expm(args.expm_subjects))
    result["solver_over_expm"] = expm["solver_over_expm"]
    result["expm"] = expm
    if args.posterior:
        nuts = nuts_from_posterior(args.posterior)
        result["nuts_s_per_ess"] = nuts["nuts_s_per_ess"]
        result["nuts"] = nuts
    else:
        result["nuts_s_per_ess"] = None
        result["nuts"] = {"reason": "no finished calibration given (--posterior)"}
    if args.other_python:
        other = section("other_jax", lambda: _other_key_figures(args))
        this = {
            "population": at_n,
            "grad": grad,
            "compile": comp,
            "expm": expm,
            "versions": result["versions"],
        }
        result["jax_versions"] = {result["versions"]["jax"]: this, other["versions"]["jax"]: other}
    out.write_text(json.dumps(result, indent=2) + "\n")
    _table(result)
    print(f"wrote {out}")


def _table(r):
    grad = r.get("grad_over_value") or {}
    rows = [
        ("speedup_vs_scipy_lsoda", r.get("speedup_vs_scipy_lsoda"), ">= 100"),
        ("speedup_vs_scipy_rk45", r.get("speedup_vs_scipy_rk45"), ""),
        ("speedup_vs_scipy_lsoda_max_norm", r.get("speedup_vs_scipy_lsoda_max_norm"), ""),
        ("speedup_vs_scipy_lsoda_reduced", r.get("speedup_vs_scipy_lsoda_reduced"), ""),
        ("speedup_vs_scipy_lsoda_reduced_max_norm", r.get("speedup_vs_scipy_lsoda_reduced_max_norm"), ""),
        ("grad_over_value (reverse)", grad.get("reverse"), "<= 3"),
        ("grad_over_value (forward)", grad.get("forward"), "<= 3"),
        ("compile_cold_s", r.get("compile_cold_s"), "<= 20"),
        ("compile_warm_s", r.get("compile_warm_s"), "<= 3"),
        ("solver_over_expm", r.get("solver_over_expm"), "<= 3"),
        ("nuts_s_per_ess", r.get("nuts_s_per_ess"), ""),
    ]
    print(f"\n{'key':40s} {'value':>12s}  target")
    for name, value, target in rows:
        shown = "n/a" if value is None else f"{value:12.3f}"
        print(f"{name:40s} {shown:>12s}  {target}")
    for row in r.get("scaling", []):
        print(
            f"scaling N={row['subjects']:>9,d}  {row['wall_s']:10.2f} s  {row['peak_memory_bytes'] / 2**20:9.0f} MiB"
        )


if __name__ == "__main__":
    main()
