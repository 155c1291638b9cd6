"""Dosing regimens: doses at arbitrary times, boluses or infusions, by any route.

A :class:`Regimen` is a validated list of :class:`Dose` objects. For the solver it
becomes a :class:`DoseTable`: fixed-length arrays (padded with zero-cell doses), so
that regimens of different lengths can share one compiled solve and be batched, and
whose times and durations are traced numbers that gradients can reach.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._validation import check_choice
from ..model.layout import N_COMPARTMENTS
from ..routes.base import AbstractRoute
from ..routes.base import route as make_route


def _number(field: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{field}: expected a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{field}: must be finite, got {value!r}")
    return value


#: Depth of the cell suspension the cells settle through (mm). Assumptions: a syringe
#: lying horizontally in a pump (20-60 mL syringes have 20-27 mm inner diameter; 20 mm
#: taken) and an infusion bag lying flat (about 30 mm of fluid).
DEVICE_DEPTH_MM: dict[str, float] = {"syringe": 20.0, "bag": 30.0}


@dataclass(frozen=True)
class Dose:
    """One administration.

    **Arguments:**

    - ``time_h``: start time (h, >= 0).
    - ``cells``: number of cells administered (>= 0).
    - ``route``: route name (see :data:`mscpk.routes.ROUTES`) or an
      :class:`~mscpk.routes.AbstractRoute`.
    - ``infusion_h``: infusion duration (h, > 0); ``None`` for a bolus.
    - ``device``: ``None`` (no settling considered), ``"syringe"`` or ``"bag"``: cells
      settle in the device during an infusion (see :meth:`mscpk.Model.device_delivery`).
    """

    time_h: float
    cells: float
    route: str | AbstractRoute = "iv"
    infusion_h: float | None = None
    device: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "time_h", _number("Dose.time_h", self.time_h))
        object.__setattr__(self, "cells", _number("Dose.cells", self.cells))
        if self.time_h < 0:
            raise ValueError(f"Dose.time_h: must be >= 0 h, got {self.time_h!r}")
        if self.cells < 0:
            raise ValueError(f"Dose.cells: must be >= 0, got {self.cells!r}")
        if self.infusion_h is not None:
            duration = _number("Dose.infusion_h", self.infusion_h)
            if duration <= 0:
                raise ValueError(
                    f"Dose.infusion_h: infusion duration must be > 0 h (use None for a bolus), got {duration!r}"
                )
            object.__setattr__(self, "infusion_h", duration)
        object.__setattr__(self, "route", make_route(self.route))
        if self.device is not None:
            object.__setattr__(
                self, "device", check_choice("Dose.device", self.device, tuple(DEVICE_DEPTH_MM))
            )

    @property
    def end_h(self) -> float:
        return self.time_h + (self.infusion_h or 0.0)


class DoseTable(eqx.Module):
    """Padded array form of a regimen (all arrays have the same leading length N)."""

    time_h: Float[Array, " N"]
    cells: Float[Array, " N"]
    duration_h: Float[Array, " N"]
    entry_distribution: Float[Array, "N C"]
    device_depth_mm: Float[Array, " N"]


class Regimen:
    """An ordered collection of doses.

    ``Regimen([Dose(0, 1e6), Dose(24, 1e6, infusion_h=0.5)])``, or the shortcuts
    :meth:`bolus` and :meth:`infusion`.
    """

    def __init__(self, doses):
        doses = list(doses)
        if not doses:
            raise ValueError("regimen: needs at least one Dose")
        for i, d in enumerate(doses):
            if not isinstance(d, Dose):
                raise TypeError(f"regimen: item {i} must be a Dose, got {type(d).__name__}")
        self.doses: tuple[Dose, ...] = tuple(doses)

    @classmethod
    def bolus(cls, cells: float, *, time_h: float = 0.0, route="iv") -> "Regimen":
        return cls([Dose(time_h, cells, route)])

    @classmethod
    def infusion(
        cls, cells: float, infusion_h: float, *, time_h: float = 0.0, route="iv", device: str | None = None
    ) -> "Regimen":
        return cls([Dose(time_h, cells, route, infusion_h, device)])

    def __len__(self) -> int:
        return len(self.doses)

    def __repr__(self) -> str:
        return f"Regimen({list(self.doses)!r})"

    @property
    def total_cells(self) -> float:
        return sum(d.cells for d in self.doses)

    @property
    def end_h(self) -> float:
        return max(d.end_h for d in self.doses)

    def check_horizon(self, t_end_h: float) -> None:
        """Raise if any dose starts or ends after ``t_end_h``."""
        for i, d in enumerate(self.doses):
            if d.end_h > t_end_h:
                what = "starts" if d.time_h > t_end_h else "ends"
                raise ValueError(
                    f"regimen: dose {i} {what} at {d.end_h if what == 'ends' else d.time_h:g} h, after "
                    f"t_end_h={t_end_h:g} h; doses must lie within [0, t_end_h]"
                )

    def table(self, n_max: int | None = None) -> DoseTable:
        """Padded :class:`DoseTable` of length ``n_max`` (default: the number of doses)."""
        n = len(self.doses)
        n_max = n if n_max is None else n_max
        if not isinstance(n_max, int) or n_max < n:
            raise ValueError(f"n_max: must be an int >= number of doses ({n}), got {n_max!r}")
        pad = n_max - n
        entry = np.zeros((n_max, N_COMPARTMENTS))
        for i, d in enumerate(self.doses):
            entry[i] = np.asarray(d.route.entry_distribution())
        if pad:
            entry[n:, 0] = 1.0  # padding doses carry no cells; any valid distribution
        return DoseTable(
            time_h=jnp.asarray([d.time_h for d in self.doses] + [0.0] * pad),
            cells=jnp.asarray([d.cells for d in self.doses] + [0.0] * pad),
            duration_h=jnp.asarray([d.infusion_h or 0.0 for d in self.doses] + [0.0] * pad),
            entry_distribution=jnp.asarray(entry),
            device_depth_mm=jnp.asarray(
                [DEVICE_DEPTH_MM[d.device] if d.device else 0.0 for d in self.doses] + [0.0] * pad
            ),
        )
