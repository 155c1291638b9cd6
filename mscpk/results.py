"""Simulation results: tidy tables, percent-of-dose summaries, plots, invariants.

The tidy output contract (CSV and DataFrame) has the columns
``time_h, organ, quantity, value, unit``. ``organ`` is ``blood``, an organ of
:data:`~mscpk.model.layout.ORGANS` or ``whole_body``; ``quantity`` is one of
:data:`~mscpk.observation.assays.QUANTITIES`. Later versions add quantities and never
rename these.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .dosing.regimen import Regimen
from .model.model import Model
from .observation.assays import DEFAULT_ASSAYS, OUTPUT_ORGANS

TIDY_COLUMNS = ("time_h", "organ", "quantity", "value", "unit")
#: Quantiles of :attr:`SimulationResult.bands` (a 90% band and its median).
BAND_QUANTILES = (0.05, 0.5, 0.95)
BAND_COLUMNS = ("lower_90", "median_draws", "upper_90")


@eqx.filter_jit
def _observations(model: Model, states, blood_input) -> dict:
    """Every default assay's view of ``states``, in one compiled call (op by op, the
    first call of a session would compile each small operation separately)."""
    observed = model.observe(states, blood_input)
    return {a.quantity: a(observed) for a in DEFAULT_ASSAYS}


@dataclass(frozen=True, eq=False)
class SimulationResult:
    """States of one simulation at the requested times, and what assays see of them."""

    model: Model
    regimen: Regimen
    times_h: np.ndarray
    states: np.ndarray
    blood_input: np.ndarray
    t_end_h: float
    n_steps: int
    #: ``{quantity: array (3, T, K)}``: pointwise 5%, 50% and 95% quantiles over posterior
    #: draws (``simulate(..., posterior=True)``), else ``None``.
    bands: dict[str, np.ndarray] | None = None

    @cached_property
    def observations(self) -> dict[str, np.ndarray]:
        """``{quantity: array (T, K)}`` over :data:`OUTPUT_ORGANS`."""
        observed = _observations(self.model, jnp.asarray(self.states), jnp.asarray(self.blood_input))
        return {k: np.asarray(v) for k, v in observed.items()}

    @property
    def units(self) -> dict[str, str]:
        return {a.quantity: a.unit for a in DEFAULT_ASSAYS}

    @staticmethod
    def organs_of(quantity: str) -> tuple[str, ...]:
        """Output organs reported for ``quantity``."""
        for a in DEFAULT_ASSAYS:
            if a.quantity == quantity:
                return a.organs
        raise ValueError(
            f"quantity: unknown {quantity!r}; allowed: {', '.join(a.quantity for a in DEFAULT_ASSAYS)}"
        )

    def to_dataframe(self) -> pd.DataFrame:
        """Tidy long table with columns ``time_h, organ, quantity, value, unit``; with
        posterior :attr:`bands`, also ``lower_90, median_draws, upper_90``."""
        frames = []
        n_t = len(self.times_h)
        for quantity, values in self.observations.items():
            organs = self.organs_of(quantity)
            frame = pd.DataFrame(
                {
                    "time_h": np.repeat(self.times_h, len(organs)),
                    "organ": np.tile(organs, n_t),
                    "quantity": quantity,
                    "value": values.reshape(-1),
                    "unit": self.units[quantity],
                }
            )
            if self.bands is not None:
                for column, band in zip(BAND_COLUMNS, self.bands[quantity], strict=True):
                    frame[column] = band.reshape(-1)
            frames.append(frame)
        columns = list(TIDY_COLUMNS) + (list(BAND_COLUMNS) if self.bands is not None else [])
        return pd.concat(frames, ignore_index=True)[columns]

    def to_csv(self, path) -> None:
        self.to_dataframe().to_csv(path, index=False)

    def value(self, quantity: str, organ: str, time_h: float) -> float:
        """One number: ``quantity`` in ``organ`` at an output time (nearest stored time)."""
        if quantity not in self.observations:
            raise ValueError(f"quantity: unknown {quantity!r}; allowed: {', '.join(self.observations)}")
        organs = self.organs_of(quantity)
        if organ not in organs:
            raise ValueError(f"organ: unknown {organ!r} for {quantity}; allowed: {', '.join(organs)}")
        i = self._time_index(time_h)
        return float(self.observations[quantity][i, organs.index(organ)])

    def _time_index(self, time_h: float) -> int:
        i = int(np.argmin(np.abs(self.times_h - time_h)))
        if abs(self.times_h[i] - time_h) > 1e-9 * max(1.0, abs(time_h)):
            raise ValueError(
                f"time_h: {time_h} h is not an output time of this result; pass it in simulate(times_h=...)"
            )
        return i

    def percent_of_dose(self, quantity: str = "viable_cells", times_h=None) -> pd.DataFrame:
        """``quantity`` as % of all cells administered, one row per time, one column per organ."""
        if quantity not in ("viable_cells", "dead_cells", "donor_dna"):
            raise ValueError(
                f"quantity: percent of dose is defined for cell counts and DNA, got {quantity!r}"
            )
        table = pd.DataFrame(
            100.0 * self.observations[quantity] / self.regimen.total_cells,
            index=pd.Index(self.times_h, name="time_h"),
            columns=list(OUTPUT_ORGANS),
        )
        if times_h is not None:
            table = table.iloc[[self._time_index(t) for t in times_h]]
        return table

    def mass_balance(self) -> dict[str, float]:
        """Largest relative error of the conserved totals (cells, DNA, label) over time.

        Every administered cell is viable, dead or cleared; every genome is in a cell, in
        the residual pool or degraded; every unit of label is somewhere or eliminated.
        """
        totals = {k: np.asarray(v) for k, v in self.model.totals(jnp.asarray(self.states)).items()}
        administered = np.array([self._administered_by(t) for t in self.times_h])
        scale = max(self.regimen.total_cells, 1.0)
        return {k: float(np.max(np.abs(v - administered)) / scale) for k, v in totals.items()}

    def _administered_by(self, t: float) -> float:
        total = 0.0
        for d in self.regimen.doses:
            if d.infusion_h is None:
                total += d.cells if t >= d.time_h else 0.0
            else:
                total += d.cells * min(max((t - d.time_h) / d.infusion_h, 0.0), 1.0)
        return total

    def summary(self, times_h=(0.25, 1.0, 24.0, 72.0), organs=None) -> pd.DataFrame:
        """Viable cells as % of dose at a few times for the main organs (a compact table)."""
        times = [t for t in times_h if t <= self.t_end_h + 1e-12 and np.any(np.isclose(self.times_h, t))]
        organs = organs or ["blood", "lung", "liver", "spleen", "bone_marrow", "whole_body"]
        table = self.percent_of_dose("viable_cells", times)[organs]
        table.index = [f"{t:g} h" for t in times]
        return table

    def plot(self, path=None, quantity: str = "viable_cells", organs=None, ax=None):
        """Time course of ``quantity`` per organ (log scale). Saves to ``path`` if given."""
        from .plotting import plot_time_course

        return plot_time_course(self, path=path, quantity=quantity, organs=organs, ax=ax)
