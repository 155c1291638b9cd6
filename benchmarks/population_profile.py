"""Where a virtual-population chunk spends its time on an accelerator.

Run: ``python benchmarks/population_profile.py --chunk 100000 --variants tsit5:1e-8:full
tsit5:1e-8 dopri8:1e-8 --profile tsit5:1e-8 --out DIR`` (on a GPU; works on the CPU too).

The scenario is ``benchmarks/population.py``'s (mouse, BM-MSC, 1e6 cells IV, 30 days,
daily outputs). Every variant (``solver:rtol``) solves one chunk of the same subjects
after a compiling warm-up, side by side in one process: wall time, throughput, mean and
largest step count, and the largest deviation of its outputs from the first variant's
(relative to each output's largest value). ``--profile`` records a JAX profiler trace of
one variant's chunk and sums the device's kernel times by kernel name (the launches per
solver step follow from the step count), written to ``DIR/kernels.txt``; ``--dump-hlo``
writes the chunk's optimised HLO to ``DIR/hlo`` (XLA's own dump). Results go to
``DIR/profile.json`` with machine, versions and device.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import sys
import time
from pathlib import Path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--chunk", type=int, default=100_000)
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["tsit5:1e-8"],
        help="solver:rtol, or solver:rtol:full to integrate every state slot (reduced=False)",
    )
    parser.add_argument("--profile", default=None, help="the variant to trace")
    parser.add_argument("--dump-hlo", action="store_true")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--out", required=True)
    return parser.parse_args(argv)


def kernel_table(trace_dir: Path) -> tuple[list[tuple[str, int, float]], dict]:
    """``[(kernel, launches, total_us)]`` by total time from the perfetto trace under
    ``trace_dir`` (device stream lines only), and total microseconds per trace line."""
    (path,) = sorted(trace_dir.rglob("perfetto_trace.json.gz"))[-1:]
    with gzip.open(path, "rt") as f:
        events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    process, thread = {}, {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") == "process_name":
            process[e["pid"]] = e["args"]["name"]
        elif e.get("ph") == "M" and e.get("name") == "thread_name":
            thread[(e["pid"], e["tid"])] = e["args"]["name"]
    per_line = collections.Counter()
    kernels: dict[str, list] = collections.defaultdict(lambda: [0, 0.0])
    for e in events:
        if e.get("ph") != "X":
            continue
        pname = process.get(e["pid"], "")
        tname = thread.get((e["pid"], e.get("tid")), "")
        if "GPU" not in pname and "TPU" not in pname:
            continue
        per_line[f"{pname} | {tname}"] += e.get("dur", 0.0)
        if "Stream" in tname:
            k = kernels[e["name"]]
            k[0] += 1
            k[1] += e.get("dur", 0.0)
    table = sorted(((n, c, t) for n, (c, t) in kernels.items()), key=lambda r: -r[2])
    return table, dict(per_line)


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.dump_hlo:
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + f" --xla_dump_to={out / 'hlo'} --xla_dump_hlo_as_text --xla_dump_hlo_module_re=.*_chunk.*"
        )
    import jax

    jax.config.update("jax_enable_x64", True)
    import numpy as np

    sys.path.insert(0, str(Path(__file__).parent))
    from _common import environment
    from population import run_record, scenario

    import mscpk
    from mscpk.population import simulate_population

    model, regimen, times, t_end = scenario(args.days)
    n = args.chunk
    records, reference = [], None
    for variant in args.variants:
        name, rtol, *mode = variant.split(":")
        if mode not in ([], ["full"]):
            raise ValueError(f"--variants: {variant!r}; expected solver:rtol or solver:rtol:full")
        solver = mscpk.SolverConfig(solver=name, rtol=float(rtol))
        reduced = not mode

        def run(key, solver=solver, reduced=reduced):
            return simulate_population(
                model, regimen, times, t_end, n, key, chunk_size=n, solver=solver, reduced=reduced
            )

        t0 = time.perf_counter()
        run(jax.random.PRNGKey(1))
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = run(jax.random.PRNGKey(0))
        wall = time.perf_counter() - t0
        values = np.stack([result.values[k] for k in sorted(result.values)])
        if reference is None:
            reference = values
        deviation = float(
            np.max(np.abs(values - reference) / np.max(np.abs(reference), axis=-1, keepdims=True))
        )
        record = {
            "variant": variant,
            **run_record(result, wall, compile_s),
            "max_deviation_from_first_variant": deviation,
        }
        if variant == args.profile:
            trace_dir = out / "trace"
            with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
                t0 = time.perf_counter()
                run(jax.random.PRNGKey(0))
                record["profiled_wall_s"] = time.perf_counter() - t0
            table, lines = kernel_table(trace_dir)
            total = sum(t for _, _, t in table)
            launches = sum(c for _, c, _ in table)
            record["kernel_total_s"] = total * 1e-6
            record["kernel_launches"] = launches
            with open(out / "kernels.txt", "w") as f:
                f.write(f"{variant}: {n} subjects, largest step count {record['max_steps']}\n")
                f.write(f"kernels: {launches} launches, {total * 1e-6:.3f} s in all\n")
                for line, us in sorted(lines.items(), key=lambda kv: -kv[1]):
                    f.write(f"line {line}: {us * 1e-6:.3f} s\n")
                f.write(f"{'total s':>9} {'share':>6} {'launches':>9} {'us each':>9}  kernel\n")
                for kname, count, us in table[: args.top * 5]:
                    f.write(
                        f"{us * 1e-6:9.3f} {us / total:6.1%} {count:9d} {us / count:9.1f}  {kname[:160]}\n"
                    )
        records.append(record)
        print(
            f"{variant:>19}: {record['slots']:3d} slots {wall:8.3f} s  {n / wall:10.0f} subjects/s  steps {record['mean_steps']:.0f} "
            f"(max {record['max_steps']})  compile {compile_s:.1f} s  deviation {deviation:.2e}",
            flush=True,
        )
    (out / "profile.json").write_text(
        json.dumps({"scenario": "population.py", "chunk": n, "runs": records, **environment()}, indent=2)
        + "\n"
    )
    if args.profile:
        print((out / "kernels.txt").read_text()[:6000])


if __name__ == "__main__":
    main()
