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
from ..model.layout import N_COMPARTMENTS, N_DEPOTS
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
#: Suspension volume (mL) the loaded cells are in, which sets their concentration and
#: so Brownian aggregation. ASSUMPTIONS: a 50 mL syringe and a 100 mL bag, the usual
#: sizes for clinical MSC infusions (recalled, R).
DEVICE_VOLUME_ML: dict[str, float] = {"syringe": 50.0, "bag": 100.0}
#: A device infusion is split into this many equal sub-infusions, each with its own
#: delivered fraction and aggregate share (settling and aggregation progress during
#: the infusion, so the delivered dose rate changes over it).
DEVICE_SUBINTERVALS = 4
#: Venous access sites of intravascular doses.
SITES: tuple[str, ...] = ("peripheral", "central", "jugular")


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
      settle and aggregate in the device during an infusion (see
      :meth:`mscpk.Model.device_profile`).
    - ``site``: venous access for intravascular doses: ``"peripheral"`` (default),
      ``"central"`` or ``"jugular"``; central and jugular lines meet the host's jugular
      venous stasis (:class:`~mscpk.Host`).
    """

    time_h: float
    cells: float
    route: str | AbstractRoute = "iv"
    infusion_h: float | None = None
    device: str | None = None
    site: str = "peripheral"

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
        object.__setattr__(self, "site", check_choice("Dose.site", self.site, SITES))

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
    device_elapsed_h: Float[Array, " N"]  # time since the device infusion began
    device_cells_per_ml: Float[Array, " N"]  # cell concentration loaded in the device
    central_line: Float[Array, " N"]  # 1 for a central or jugular line, 0 for peripheral
    depot_entry: Float[Array, "N D"]  # fraction placed at each local site


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
    def bolus(cls, cells: float, *, time_h: float = 0.0, route="iv", site: str = "peripheral") -> "Regimen":
        return cls([Dose(time_h, cells, route, site=site)])

    @classmethod
    def infusion(
        cls,
        cells: float,
        infusion_h: float,
        *,
        time_h: float = 0.0,
        route="iv",
        device: str | None = None,
        site: str = "peripheral",
    ) -> "Regimen":
        return cls([Dose(time_h, cells, route, infusion_h, device, site)])

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

    def rows(self) -> list[dict]:
        """One row per solver dose: a device infusion becomes
        :data:`DEVICE_SUBINTERVALS` consecutive sub-infusions."""
        out = []
        for d in self.doses:
            entry = np.asarray(d.route.entry_distribution())
            depot = np.asarray(d.route.depot_distribution())
            central = 1.0 if d.site in ("central", "jugular") else 0.0
            if d.device is None or d.infusion_h is None:
                out.append(
                    dict(
                        time_h=d.time_h,
                        cells=d.cells,
                        duration_h=d.infusion_h or 0.0,
                        entry=entry,
                        depth=0.0,
                        elapsed=0.0,
                        conc=0.0,
                        central=central,
                        depot=depot,
                    )
                )
                continue
            k = DEVICE_SUBINTERVALS
            step = d.infusion_h / k
            for i in range(k):
                out.append(
                    dict(
                        time_h=d.time_h + i * step,
                        cells=d.cells / k,
                        duration_h=step,
                        entry=entry,
                        depth=DEVICE_DEPTH_MM[d.device],
                        elapsed=i * step,
                        conc=d.cells / DEVICE_VOLUME_ML[d.device],
                        central=central,
                        depot=depot,
                    )
                )
        return out

    @property
    def n_rows(self) -> int:
        """Length of :meth:`table` without padding."""
        return len(self.rows())

    def table(self, n_max: int | None = None) -> DoseTable:
        """Padded :class:`DoseTable` of length ``n_max`` (default: :attr:`n_rows`)."""
        rows = self.rows()
        n = len(rows)
        n_max = n if n_max is None else n_max
        if not isinstance(n_max, int) or n_max < n:
            raise ValueError(f"n_max: must be an int >= number of dose rows ({n}), got {n_max!r}")
        pad = n_max - n
        entry = np.zeros((n_max, N_COMPARTMENTS))
        depot = np.zeros((n_max, N_DEPOTS))
        for i, r in enumerate(rows):
            entry[i] = r["entry"]
            depot[i] = r["depot"]
        if pad:
            entry[n:, 0] = 1.0  # padding doses carry no cells; any valid distribution

        def column(key):
            return jnp.asarray([r[key] for r in rows] + [0.0] * pad, dtype=float)

        return DoseTable(
            time_h=column("time_h"),
            cells=column("cells"),
            duration_h=column("duration_h"),
            entry_distribution=jnp.asarray(entry),
            device_depth_mm=column("depth"),
            device_elapsed_h=column("elapsed"),
            device_cells_per_ml=column("conc"),
            central_line=column("central"),
            depot_entry=jnp.asarray(depot),
        )
