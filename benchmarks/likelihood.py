"""Time per evaluation of the whole evidence likelihood (value, value + gradient).

Run: ``python benchmarks/likelihood.py [--repeat 5]``. Prints a table and writes
``benchmarks/results/likelihood-<device>.json`` with machine, versions and device.
Timings are medians over repeats after one compile; compile times are reported apart.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

sys.path.insert(0, str(Path(__file__).parent))
from _common import environment, timed  # noqa: E402

import mscpk  # noqa: E402
from mscpk.evidence.likelihood import EvidenceLikelihood  # noqa: E402
from mscpk.observation.parameters import ObservationParameters  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    lik = EvidenceLikelihood()
    f = lik.function()
    k, o = mscpk.KineticParameters.default(), ObservationParameters.default()
    value = jax.jit(f)
    value_grad = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))
    first_v, t_v = timed(value, k, o, repeat=args.repeat)
    first_g, t_g = timed(value_grad, k, o, repeat=args.repeat)
    device = jax.devices()[0]
    result = {
        "benchmark": "evidence likelihood, one jitted call over all scenarios",
        "rows": len(lik.table),
        "scenarios": len(lik.scenarios),
        "value_s": t_v,
        "value_and_grad_s": t_g,
        "grad_over_value": t_g / t_v,
        "compile_and_first_value_s": first_v,
        "compile_and_first_value_and_grad_s": first_g,
        **environment(),
    }
    for key in (
        "value_s",
        "value_and_grad_s",
        "grad_over_value",
        "compile_and_first_value_s",
        "compile_and_first_value_and_grad_s",
    ):
        print(f"{key:40s} {result[key]:.3f}")
    out = Path(__file__).parent / "results" / f"likelihood-{device.platform}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
