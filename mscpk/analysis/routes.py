"""Route comparison: the same product and dose by every route, one row per route.

Units: hours, cells, days for ``days_to_1pct_viable``; ``viable_cell_hours_*`` are cell-hours
(the area under the viable-cell curve, an exposure measure of living donor cells);
``lung_fraction_1h`` is the fraction of the administered cells viable in the lung at 1 h;
``tat_peak`` ng/mL and ``il10_auc`` pg·h/mL above baseline; ``embolic_risk`` is the index of
:meth:`mscpk.Model.embolic_risk` (0 for routes that do not enter blood or an arterial bed).
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pandas as pd

from ..api import build_model, simulate
from ..dosing.regimen import Regimen
from ..model.layout import ORGANS
from ..routes.base import IA_TARGETS

#: Columns of the comparison table, in order.
COLUMNS: tuple[str, ...] = (
    "route",
    "viable_cell_hours_total",
    "viable_cell_hours_target",
    "lung_fraction_1h",
    "days_to_1pct_viable",
    "tat_peak",
    "il10_auc",
    "embolic_risk",
)


def route_names(ia_target: str = "limb") -> tuple[str, ...]:
    """Every route (and topical vehicle) compared, as route strings."""
    return (
        "iv",
        f"ia:{ia_target}",
        "im",
        "sc",
        "ip",
        "topical:suspension",
        "topical:hydrogel",
        "topical:patch",
        "extracorporeal",
    )


def _grid(t_end_h: float) -> np.ndarray:
    early = np.geomspace(1.0 / 60.0, t_end_h, 400)
    return np.unique(np.concatenate([[0.0, 1.0], early, [t_end_h]]))


def compare_routes(
    species="mouse",
    product="bm_msc",
    cells: float = 1e6,
    *,
    host=None,
    parameters=None,
    ia_target: str = "limb",
    target_organ: str | None = None,
    t_end_h: float = 180.0 * 24.0,
    infusion_h: float | None = None,
):
    """Give ``cells`` of ``product`` to ``species`` by every route and tabulate.

    ``target_organ`` (for ``viable_cell_hours_target``) defaults to the host's injured
    organ, else the organ of the intra-arterial ``ia_target`` bed. ``infusion_h`` applies
    to the intravascular routes (IV, IA); the other routes are given at once. The horizon
    ``t_end_h`` (default 180 days) should exceed the longest dwell; a route whose viable
    cells never fall below 1 % within it gets ``days_to_1pct_viable = inf``.

    Returns ``(table, results)``: a DataFrame with :data:`COLUMNS` and a dict of
    :class:`~mscpk.SimulationResult` by route.
    """
    if target_organ is None:
        injured = None if host is None else host.injury_organ
        target_organ = injured or IA_TARGETS[ia_target]
    if target_organ not in ORGANS:
        raise ValueError(f"target_organ: unknown organ {target_organ!r}; allowed: {', '.join(ORGANS)}")
    times = _grid(t_end_h)
    rows, results = [], {}
    for name in route_names(ia_target):
        intravascular = name == "iv" or name.startswith("ia:")
        if intravascular and infusion_h is not None:
            regimen = Regimen.infusion(cells, infusion_h, route=name)
        else:
            regimen = Regimen.bolus(cells, route=name)
        r = simulate(
            species, product, regimen, t_end_h=t_end_h, times_h=times, parameters=parameters, host=host
        )
        results[name] = r
        viable = r.observations["viable_cells"]
        whole = viable[:, r.organs_of("viable_cells").index("whole_body")]
        target = viable[:, r.organs_of("viable_cells").index(target_organ)]
        below = np.flatnonzero((whole < 0.01 * cells) & (times > 0))
        if np.all(whole < 0.01 * cells):  # never above 1 % in the body (extracorporeal)
            days = 0.0
        else:
            days = times[below[0]] / 24.0 if below.size else math.inf
        model = build_model(species, product, parameters, mechanisms=None, host=host)
        risk = float(jax.vmap(model.embolic_risk)(regimen.table()).sum())
        rows.append(
            dict(
                route=name,
                viable_cell_hours_total=float(np.trapezoid(whole, times)),
                viable_cell_hours_target=float(np.trapezoid(target, times)),
                lung_fraction_1h=r.value("viable_cells", "lung", 1.0) / cells,
                days_to_1pct_viable=days,
                tat_peak=float(r.observations["tat"][:, 0].max()),
                il10_auc=float(np.trapezoid(r.observations["il10"][:, 0], times)),
                embolic_risk=risk,
            )
        )
    return pd.DataFrame(rows, columns=list(COLUMNS)), results


def plot_routes(table: pd.DataFrame, results: dict, path=None):
    """Figure: whole-body viable cells over time per route, and the table's key columns."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), constrained_layout=True)
    ax = axes[0]
    for name, r in results.items():
        whole = r.observations["viable_cells"][:, r.organs_of("viable_cells").index("whole_body")]
        total = r.regimen.total_cells
        t = r.times_h[1:] / 24.0
        ax.plot(t, np.maximum(100.0 * whole[1:] / total, 1e-4), label=name)
    ax.axhline(1.0, color="k", ls=":", lw=0.8)
    ax.set(xscale="log", yscale="log", xlabel="time (days)", ylabel="viable donor cells in body (% of dose)")
    ax.set_ylim(1e-3, 150)
    ax.legend(fontsize=7)
    x = np.arange(len(table))
    axes[1].bar(x, table.viable_cell_hours_total)
    axes[1].set_yscale("log")
    axes[1].set_xticks(x, table.route, rotation=60, ha="right", fontsize=8)
    axes[1].set_ylabel("viable cell-hours in body")
    days = table.days_to_1pct_viable.replace(np.inf, np.nan)
    axes[2].bar(x, days)
    axes[2].set_xticks(x, table.route, rotation=60, ha="right", fontsize=8)
    axes[2].set_ylabel("days until < 1 % viable")
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
