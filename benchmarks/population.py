"""Virtual-population throughput: N subjects x 30 days, in chunks.

Run: ``python benchmarks/population.py [--n 1 100 10000 --chunk 64 --days 30]``
(``make bench-gpu`` runs it with 1,000,000 subjects on the first accelerator).

Mouse, BM-MSC, 1e6 cells IV at time 0, daily outputs (viable cells in lung and whole
body) over ``--days``, :class:`mscpk.population.Variability` defaults, the default
:class:`mscpk.SolverConfig`. Each N is run once after a warm-up call that compiles the
chunk (compile time reported apart). Writes ``benchmarks/results/gpu-<device>.json`` on
an accelerator, ``population-cpu.json`` on the CPU, with machine, versions and device.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _common import device_tag, environment, peak_memory_bytes  # noqa: E402

import mscpk  # noqa: E402
from mscpk.population import chunk_for, population_slots, simulate_population  # noqa: E402


def scenario(days: float):
    """The benchmark's model, regimen, daily output times (h) and horizon (h)."""
    t_end = 24.0 * days
    times = np.arange(0.0, t_end + 1e-9, 24.0)
    return mscpk.build_model("mouse", "bm_msc"), mscpk.Regimen.bolus(1e6), times, t_end


def run_record(result, wall: float, compile_s: float | None) -> dict:
    """What every population run records: size, slots, time, steps, success, memory."""
    return {
        "subjects": result.n,
        "slots": result.meta["slots"],
        "wall_s": wall,
        "subjects_per_s": result.n / wall,
        "first_call_with_compile_s": compile_s,
        "mean_steps": float(result.n_steps.mean()),
        "max_steps": int(result.n_steps.max()),
        "all_solved": bool(result.success.all()),
        "peak_memory_bytes": peak_memory_bytes(),
    }


def combine(records: list[dict], names=None) -> dict:
    """One record of a population simulated as index ranges in separate runs (``--first``):
    the ranges must tile ``[0, N)`` without gaps or overlaps and share the benchmark and
    solver. Wall time is the sum over the parts (the machine ran them one after another),
    peak memory the largest part's."""
    names = list(names) if names is not None else [str(i) for i in range(len(records))]
    runs = []
    for name, rec in zip(names, records, strict=True):
        if len(rec.get("runs", ())) != 1:
            raise ValueError(f"{name}: expected one run (one --n) per part, got {len(rec.get('runs', ()))}")
        runs.append((rec["runs"][0], rec, name))
    for key in ("benchmark", "solver"):
        values = {json.dumps(rec[key], sort_keys=True) for _, rec, _ in runs}
        if len(values) != 1:
            raise ValueError(f"parts: differ in {key!r}: {sorted(values)}")
    runs.sort(key=lambda r: r[0]["first_subject"])
    end = 0
    for run, _, name in runs:
        if run["first_subject"] != end:
            raise ValueError(
                f"{name}: starts at subject {run['first_subject']}, expected {end} (gap or overlap)"
            )
        end += run["subjects"]
    wall = sum(r["wall_s"] for r, _, _ in runs)
    peaks = [r["peak_memory_bytes"] for r, _, _ in runs if r.get("peak_memory_bytes") is not None]
    return {
        "benchmark": runs[0][1]["benchmark"],
        "solver": runs[0][1]["solver"],
        "subjects": end,
        "parts": len(runs),
        "wall_s": wall,
        "subjects_per_s": end / wall,
        "all_solved": all(r["all_solved"] for r, _, _ in runs),
        "mean_steps": sum(r["mean_steps"] * r["subjects"] for r, _, _ in runs) / end,
        "max_peak_memory_bytes": max(peaks) if peaks else None,
        "parts_detail": [
            {k: r[k] for k in ("first_subject", "subjects", "wall_s", "subjects_per_s", "peak_memory_bytes")}
            | {"date": rec.get("date"), "file": name}
            for r, rec, name in runs
        ],
        "machine": runs[0][1].get("machine"),
        "versions": runs[0][1].get("versions"),
        "device": runs[0][1].get("device"),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, nargs="+", default=[1, 100, 10_000])
    parser.add_argument("--chunk", type=int, default=None, help="default: simulate_population's")
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--solver", default=None, help="default: SolverConfig's (tsit5)")
    parser.add_argument("--rtol", type=float, default=None, help="default: SolverConfig's")
    parser.add_argument(
        "--atol", type=float, default=None, help="fraction of the dose; default: SolverConfig's"
    )
    parser.add_argument(
        "--norm", default=None, help="max or rms (SciPy's error measure); default: SolverConfig's (max)"
    )
    parser.add_argument(
        "--first",
        type=int,
        default=0,
        help="index of the first subject: a large N run as index ranges in separate processes "
        "(the union is the population of one run)",
    )
    parser.add_argument(
        "--full", action="store_true", help="integrate every state slot (simulate_population reduced=False)"
    )
    parser.add_argument("--out", default=None)
    parser.add_argument(
        "--combine",
        nargs="+",
        default=None,
        help="instead of simulating: combine the result files of index ranges (--first) of one "
        "population into one record written to --out",
    )
    args = parser.parse_args(argv)
    if args.combine:
        if not args.out:
            raise ValueError("--combine: give --out, the combined record's path")
        combined = combine([json.loads(Path(p).read_text()) for p in args.combine], args.combine)
        Path(args.out).write_text(json.dumps(combined, indent=2) + "\n")
        print(json.dumps({k: v for k, v in combined.items() if k != "parts"}, indent=2))
        print(f"wrote {args.out}")
        return
    model, regimen, times, t_end = scenario(args.days)
    key = jax.random.PRNGKey(0)
    base = mscpk.SolverConfig()
    solver = mscpk.SolverConfig(
        solver=args.solver or base.solver,
        rtol=args.rtol if args.rtol else base.rtol,
        atol=args.atol if args.atol else base.atol,
        norm=args.norm or base.norm,
    )
    runs = []
    compiled = set()
    slots = population_slots(model, regimen, reduced=not args.full)
    n_slots = model.n_states if slots is None else len(slots)
    for n in args.n:
        chunk = chunk_for(n, args.chunk, n_slots=n_slots)
        compile_s = None
        if chunk not in compiled:  # warm-up: compiles the chunk function for this size
            t0 = time.perf_counter()
            simulate_population(
                model,
                regimen,
                times,
                t_end,
                chunk,
                jax.random.PRNGKey(1),
                chunk_size=chunk,
                solver=solver,
                reduced=not args.full,
            )
            compile_s = time.perf_counter() - t0
            compiled.add(chunk)
        t0 = time.perf_counter()
        result = simulate_population(
            model,
            regimen,
            times,
            t_end,
            n,
            key,
            chunk_size=chunk,
            solver=solver,
            first=args.first,
            reduced=not args.full,
        )
        wall = time.perf_counter() - t0
        lung = result.quantiles((0.05, 0.5, 0.95))[("viable_cells", "lung")]
        runs.append(
            {
                **run_record(result, wall, compile_s),
                "first_subject": args.first,
                "chunk": chunk,
                "lung_viable_day1_p05_p50_p95": lung[:, 1].tolist() if lung.shape[1] > 1 else None,
            }
        )
        r = runs[-1]
        print(
            f"N={n:>9,d} chunk={chunk:>7,d} wall {wall:9.3f} s  {r['subjects_per_s']:12.1f} subjects/s  "
            f"steps {r['mean_steps']:.0f}  compile {compile_s if compile_s is not None else float('nan'):.1f} s",
            flush=True,
        )
    out = {
        "benchmark": f"virtual population, mouse BM-MSC 1e6 IV, {args.days:g} days, daily outputs",
        "solver": {
            "solver": solver.solver,
            "rtol": solver.rtol,
            "atol_fraction_of_dose": solver.atol,
            "norm": solver.norm,
            "reduced": not args.full,
        },
        "runs": runs,
        **environment(),
    }
    tag = device_tag()
    path = (
        Path(args.out)
        if args.out
        else Path(__file__).parent
        / "results"
        / ("population-cpu.json" if tag == "cpu" else f"gpu-{tag}.json")
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
