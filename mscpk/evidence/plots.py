"""Figures of the evidence against model predictions, one per study."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import schema


def comparison_table(lik, predictions, observation=None) -> pd.DataFrame:
    """Rows of ``lik.table`` with what was reported (canonical units) and predicted;
    detection rows without their own limit show the assay family's default limit."""
    from ..observation.parameters import ObservationParameters

    observation = ObservationParameters.default() if observation is None else observation
    t = lik.table
    r = lik.rows
    limit = np.asarray(observation.detection_limit_cells)[np.asarray(r.family)]
    out = pd.DataFrame(
        {
            "row_id": t.row_id,
            "study_id": t.study_id,
            "quantity": t.quantity,
            "organ": t.organ,
            "time_h": t.time_h,
            "censoring": t.censoring,
            "reported": np.where(np.asarray(r.term) == 0, np.asarray(r.y), np.nan),
            "lower": np.where(
                np.isin(np.asarray(r.term), (1, 3)), np.nan_to_num(np.asarray(r.lower), nan=limit), np.nan
            ),
            "upper": np.where(
                np.isin(np.asarray(r.term), (2, 3)), np.nan_to_num(np.asarray(r.upper), nan=limit), np.nan
            ),
            "route": t.route,
            "unit": [next(iter(schema.UNITS[q])) for q in t.quantity],
            "predicted": np.asarray(predictions.predicted),
            "sigma_log": np.asarray(predictions.sigma),
            "log_lik": np.asarray(predictions.log_lik),
        }
    )
    return out


def plot_study(table: pd.DataFrame, study_id: str, path=None, ax=None):
    """Reported values (points), ranges and bounds (bars/arrows) of one study against the
    prediction (crosses, with the +-1 SD band of the error model), on a log scale."""
    import matplotlib.pyplot as plt

    rows = table[table.study_id == study_id]
    if rows.empty:
        raise ValueError(f"study_id: unknown {study_id!r}; allowed: {', '.join(sorted(set(table.study_id)))}")
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(rows) + 2.5), 4.0))
    x = np.arange(len(rows))
    pred = np.maximum(rows.predicted.to_numpy(), 1e-12)
    band = np.exp(rows.sigma_log.to_numpy())
    ax.errorbar(
        x + 0.12,
        pred,
        yerr=[pred - pred / band, pred * band - pred],
        fmt="x",
        color="C1",
        label="model (±1 SD)",
    )
    ax.plot(x - 0.12, rows.reported, "o", color="C0", label="reported")
    for xi, lo, hi in zip(x, rows.lower, rows.upper, strict=True):
        if np.isfinite(lo) and np.isfinite(hi):
            ax.vlines(xi - 0.12, lo, hi, color="C0", lw=3, alpha=0.7)
        elif np.isfinite(lo):
            ax.annotate(
                "", (xi - 0.12, lo * 3), (xi - 0.12, lo), arrowprops=dict(arrowstyle="->", color="C0")
            )
            ax.plot(xi - 0.12, lo, "_", color="C0", ms=14)
        elif np.isfinite(hi):
            ax.annotate(
                "", (xi - 0.12, hi / 3), (xi - 0.12, hi), arrowprops=dict(arrowstyle="->", color="C0")
            )
            ax.plot(xi - 0.12, hi, "_", color="C0", ms=14)
    labels = [
        f"{rt} {q}\n{o} @ {t:g} h [{u}]"
        for rt, q, o, t, u in zip(rows.route, rows.quantity, rows.organ, rows.time_h, rows.unit, strict=True)
    ]
    ax.set_xticks(x, labels, fontsize=7, rotation=30, ha="right")
    ax.set_yscale("log")
    ax.set_title(f"{study_id}: evidence vs default model (log-lik {rows.log_lik.sum():.1f})", fontsize=9)
    ax.legend(fontsize=7)
    if own:
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=120)
            plt.close(fig)
    return ax


def plot_all(table: pd.DataFrame, out_dir) -> list[Path]:
    """One PNG per study in ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for sid in sorted(set(table.study_id)):
        p = out / f"{sid}.png"
        plot_study(table, sid, p)
        paths.append(p)
    return paths
