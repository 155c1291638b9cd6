"""Matplotlib figures of simulation results (imported lazily)."""

from __future__ import annotations

import numpy as np

from .observation.assays import OUTPUT_ORGANS

DEFAULT_PLOT_ORGANS = ("blood", "lung", "liver", "spleen", "bone_marrow", "kidneys", "heart", "brain")


def plot_time_course(result, path=None, quantity="viable_cells", organs=None, ax=None):
    import matplotlib

    if path is not None and ax is None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    organs = list(organs or DEFAULT_PLOT_ORGANS)
    for organ in organs:
        if organ not in OUTPUT_ORGANS:
            raise ValueError(f"organs: unknown organ {organ!r}; allowed: {', '.join(OUTPUT_ORGANS)}")
    values = result.observations[quantity]
    unit = result.units[quantity]
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    else:
        fig = ax.figure
    t = result.times_h
    floor = None
    for organ in organs:
        y = values[:, OUTPUT_ORGANS.index(organ)]
        if np.any(y > 0):
            floor = np.min(y[y > 0]) if floor is None else min(floor, np.min(y[y > 0]))
        (line,) = ax.plot(t, y, label=organ)
        if result.bands is not None:  # 90% posterior band
            band = result.bands[quantity][:, :, OUTPUT_ORGANS.index(organ)]
            ax.fill_between(t, band[0], band[2], color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_yscale("log")
    top = float(np.max(values[:, [OUTPUT_ORGANS.index(o) for o in organs]]))
    if top > 0:
        ax.set_ylim(max(top * 1e-6, floor or top * 1e-6), top * 2)
    ax.set_xlabel("time (h)")
    ax.set_ylabel(f"{quantity} ({unit})")
    ax.set_title(f"{result.model.species.name}, {result.model.product.name}: {quantity}")
    ax.legend(fontsize=8, ncol=2)
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
