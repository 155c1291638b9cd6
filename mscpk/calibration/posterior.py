"""The calibrated posterior shipped inside the package, and writing it from a fit.

Files in ``mscpk/calibration/data/`` (written by ``mscpk fit --export DIR`` or
:func:`export`):

- ``posterior_draws.csv``: a thinned sample (``chain``, ``draw`` and one column per
  global parameter, natural units);
- ``posterior_summary.csv``: mean, sd, 90% HDI, MCSE, ESS and R-hat of the full run;
- ``posterior_meta.json``: how the fit was run (versions, evidence version, chains,
  draws, wall time, diagnostics).

Until a fit that meets the acceptance diagnostics has been exported there, nothing is
shipped and :func:`shipped` returns ``None``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .defaults import DATA_DIR, DRAWS_FILE, META_FILE, SUMMARY_FILE, shipped_draws
from .fit import diagnostics, summary

#: Draws kept in the shipped sample.
SHIPPED_DRAWS = 200


def data_dir() -> Path:
    return DATA_DIR


def shipped() -> pd.DataFrame | None:
    """The shipped thinned posterior sample, or ``None`` if none is shipped."""
    return shipped_draws()


def global_sites(idata) -> list[str]:
    return [v for v, da in idata.posterior.data_vars.items() if da.ndim == 2]


def export(idata, problem, out_dir, n_draws: int = SHIPPED_DRAWS, seed: int = 0) -> list[Path]:
    """Write the three shipped-posterior files into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = global_sites(idata)
    post = idata.posterior
    n_chain, n_draw = post.sizes["chain"], post.sizes["draw"]
    chain, draw = np.meshgrid(np.arange(n_chain), np.arange(n_draw), indexing="ij")
    frame = pd.DataFrame({"chain": chain.ravel(), "draw": draw.ravel()})
    for n in names:
        frame[n] = np.asarray(post[n]).ravel()
    if n_draws < len(frame):
        frame = frame.sample(n=n_draws, random_state=seed).sort_values(["chain", "draw"])
    paths = [out / DRAWS_FILE, out / SUMMARY_FILE, out / META_FILE]
    frame.to_csv(paths[0], index=False, float_format="%.10g")
    summary(idata, names).to_csv(paths[1], float_format="%.6g")
    meta = dict(post.attrs)
    meta["diagnostics"] = diagnostics(idata, names)
    meta["calibrated_entries"] = [
        {
            "name": c.name,
            "sets": f"{c.target}.{c.field}",
            "index": c.index,
            "scale": c.scale,
            "units": c.units,
        }
        for c in problem.entries
    ]
    paths[2].write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return paths


def fit_report(idata, problem) -> str:
    """Diagnostics and the summary table of a run, as text."""
    names = global_sites(idata)
    d = diagnostics(idata, names)
    head = (
        f"NUTS: {d['draws']} draws, max R-hat {d['max_r_hat']:.4f}, min bulk ESS {d['min_ess_bulk']:.0f}, "
        f"min tail ESS {d['min_ess_tail']:.0f}, divergences {100 * d['divergence_fraction']:.2f}%"
    )
    seconds = idata.posterior.attrs.get("seconds")
    if seconds is not None:
        head += f", {float(seconds):.0f} s"
    table = summary(idata, names).to_string(float_format=lambda v: f"{v:10.4g}")
    return head + "\n" + table


def summary_table(path=None) -> pd.DataFrame:
    """Summary of an InferenceData file, or of the shipped posterior (``path=None``)."""
    if path is not None:
        from ._arviz import az

        p = Path(path)
        if not p.exists():
            raise ValueError(f"file: {str(p)!r} does not exist")
        idata = az.from_netcdf(p)
        return summary(idata, global_sites(idata))
    shipped_summary = data_dir() / SUMMARY_FILE
    if not shipped_summary.exists():
        raise ValueError(
            "no posterior is shipped yet: run `mscpk fit --out posterior.nc --export mscpk/calibration/data` "
            "or give --file"
        )
    return pd.read_csv(shipped_summary, index_col=0)
