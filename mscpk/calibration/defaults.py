"""The shipped posterior as the simulator's defaults.

``mscpk/calibration/data/posterior_draws.csv`` (written by ``mscpk fit --export``, see
:mod:`mscpk.calibration.posterior`) holds a thinned posterior sample of the global
calibrated parameters (study effects at zero: a typical study). When it is present,
:func:`default_kinetic` (what :func:`mscpk.simulate` uses when no ``parameters`` are
given) is :class:`~mscpk.KineticParameters` with every calibrated entry at its posterior
median and everything else at the documented default; :func:`posterior_kinetic` stacks
the sampled parameter sets for ``simulate(..., posterior=True)``.

Radiolabel leakage is calibrated per isotope (an observation parameter); the simulator's
single ``label_leak_rate_per_h`` takes the 111In value, the isotope its default is
stated for.

This module imports no sampler library, so ``import mscpk`` stays light.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from ..model.parameters import KineticParameters
from ..observation.parameters import ISOTOPES, ObservationParameters
from .registry import REGISTRY, Calibrated, apply

DATA_DIR = Path(__file__).parent / "data"
DRAWS_FILE = "posterior_draws.csv"
SUMMARY_FILE = "posterior_summary.csv"
META_FILE = "posterior_meta.json"
#: The isotope whose calibrated label leak the simulator uses.
SIMULATION_ISOTOPE = "in111"


@lru_cache(maxsize=1)
def _read_shipped() -> pd.DataFrame | None:
    path = DATA_DIR / DRAWS_FILE
    return pd.read_csv(path) if path.exists() else None


def shipped_draws() -> pd.DataFrame | None:
    """The shipped thinned posterior sample (a copy), or ``None`` if none is shipped."""
    draws = _read_shipped()
    return None if draws is None else draws.copy()


def entries_of(draws: pd.DataFrame) -> tuple[Calibrated, ...]:
    """Registry entries with a column in ``draws``."""
    if not isinstance(draws, pd.DataFrame):
        raise TypeError(f"draws: expected a DataFrame, got {type(draws).__name__}")
    entries = tuple(c for c in REGISTRY if c.name in draws.columns)
    if not entries:
        raise ValueError("draws: no column names a calibrated parameter of the registry")
    return entries


def _draws(draws) -> pd.DataFrame:
    if draws is not None:
        return draws
    shipped = _read_shipped()
    if shipped is None:
        raise ValueError(
            "no posterior is shipped: run `mscpk fit --out posterior.nc --export mscpk/calibration/data`"
        )
    return shipped


def _for_simulation(kinetic: KineticParameters, observation: ObservationParameters) -> KineticParameters:
    leak = observation.label_leak_rate_per_h[ISOTOPES.index(SIMULATION_ISOTOPE)]
    return eqx.tree_at(lambda k: k.label_leak_rate_per_h, kinetic, leak)


def calibrated_parameters(
    draws: pd.DataFrame | None = None,
) -> tuple[KineticParameters, ObservationParameters]:
    """Kinetic and observation parameters with every calibrated entry at its posterior
    median (per parameter) over ``draws`` (default: the shipped sample)."""
    draws = _draws(draws)
    entries = entries_of(draws)
    values = {c.name: float(np.median(draws[c.name])) for c in entries}
    return apply(values, entries)


def default_kinetic() -> KineticParameters:
    """What :func:`mscpk.simulate` uses by default: the posterior median if a posterior is
    shipped, else :meth:`KineticParameters.default`."""
    if _read_shipped() is None:
        return KineticParameters.default()
    return _for_simulation(*calibrated_parameters())


def source() -> str:
    """One line saying where the default parameters come from."""
    draws = _read_shipped()
    if draws is None:
        return "documented literature defaults (no calibrated posterior shipped)"
    meta_path = DATA_DIR / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    when = meta.get("created", "date unknown")
    return (
        f"posterior median of the shipped calibration ({len(draws)} draws kept, "
        f"{len(entries_of(draws))} calibrated parameters, fit {when})"
    )


def posterior_kinetic(n: int | None = None, draws: pd.DataFrame | None = None) -> KineticParameters:
    """Kinetic parameter sets of ``n`` posterior draws (default: all), stacked along a
    leading axis (for ``jax.vmap``)."""
    draws = _draws(draws)
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(draws):
            raise ValueError(f"n: expected an int in [1, {len(draws)}] (draws available), got {n!r}")
        draws = draws.iloc[np.linspace(0, len(draws) - 1, n).round().astype(int)]
    entries = entries_of(draws)
    values = {c.name: jnp.asarray(draws[c.name].to_numpy(dtype=float)) for c in entries}
    return jax.vmap(lambda v: _for_simulation(*apply(v, entries)))(values)
