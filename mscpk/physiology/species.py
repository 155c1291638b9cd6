"""Species physiology: body size, cardiac output, blood, organ volumes, flows, capillaries.

Values live in ``physiology/data/physiology.csv``, one row per number with its source,
locator, how it was obtained and its verification level (V read in source, I derived
from V numbers, A assumption with reasoning). :func:`species` assembles them into a
:class:`Species`, an immutable pytree whose numbers may be differentiated or sampled.
"""

from __future__ import annotations

import functools
from importlib import resources

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jaxtyping import Array, Float

from .._validation import check_choice, check_positive, check_range, concrete
from ..model.layout import N_ORGANS, ORGANS

SPECIES: tuple[str, ...] = ("mouse", "rat", "human")

#: Reference species for rate constants (see :func:`allometric_factor`).
REFERENCE_BODY_WEIGHT_G = 25.0


class Species(eqx.Module):
    """Physiology of one species (or one virtual subject).

    **Arguments:**

    - ``name``: species name (static).
    - ``body_weight_g``: body weight (g).
    - ``cardiac_output_ml_per_h``: cardiac output (mL/h).
    - ``blood_volume_ml``: total blood volume (mL).
    - ``haematocrit``: fraction of blood volume that is red cells.
    - ``organ_volume_ml``: organ volumes in :data:`~mscpk.model.layout.ORGANS` order (mL,
      tissue density taken as 1 g/mL).
    - ``arterial_supply_fraction``: fraction of cardiac output each organ receives from
      arterial blood (lung 0, liver = hepatic artery only; sums to 1).
    - ``capillary_diameter_um``: representative capillary diameter of each organ (µm).
    """

    name: str = eqx.field(static=True)
    body_weight_g: Float[Array, ""]
    cardiac_output_ml_per_h: Float[Array, ""]
    blood_volume_ml: Float[Array, ""]
    haematocrit: Float[Array, ""]
    organ_volume_ml: Float[Array, " O"]
    arterial_supply_fraction: Float[Array, " O"]
    capillary_diameter_um: Float[Array, " O"]

    def __check_init__(self):
        for field in ("body_weight_g", "cardiac_output_ml_per_h", "blood_volume_ml"):
            check_positive(f"Species.{field}", getattr(self, field))
        check_range("Species.haematocrit", self.haematocrit, 0.0, 1.0)
        for field in ("organ_volume_ml", "arterial_supply_fraction", "capillary_diameter_um"):
            value = getattr(self, field)
            if np.shape(value) != (N_ORGANS,):
                raise ValueError(
                    f"Species.{field}: expected shape ({N_ORGANS},) in organ order "
                    f"{ORGANS}, got shape {np.shape(value)}"
                )
        check_positive("Species.organ_volume_ml", self.organ_volume_ml)
        check_positive("Species.capillary_diameter_um", self.capillary_diameter_um)
        check_range("Species.arterial_supply_fraction", self.arterial_supply_fraction, 0.0, 1.0)
        supply = concrete(self.arterial_supply_fraction)
        if supply is not None:
            total = float(np.sum(supply))
            if abs(total - 1.0) > 1e-6:
                raise ValueError(
                    f"Species.arterial_supply_fraction: must sum to 1 over organs, sums to {total:.6g}"
                )


def allometric_factor(body_weight_g, exponent: float = -0.25, reference_g: float = REFERENCE_BODY_WEIGHT_G):
    """Scale factor ``(BW / BW_ref) ** exponent`` for a rate constant.

    Rate constants of physiological clearance processes scale with body weight to about
    the -1/4 power (West GB, Brown JH, Enquist BJ (1997) Science 276:122,
    doi:10.1126/science.276.5309.122; the basis of interspecies scaling in PBPK). The
    reference is a 25 g mouse, the species most kinetic data come from.
    """
    return (body_weight_g / reference_g) ** exponent


@functools.cache
def physiology_table() -> pd.DataFrame:
    """The shipped physiology table, one cited number per row."""
    with resources.files("mscpk.physiology").joinpath("data/physiology.csv").open() as f:
        table = pd.read_csv(f, comment="#")
    required = {"species", "organ", "quantity", "value", "unit", "set", "source", "locator", "verification"}
    missing = required - set(table.columns)
    if missing:
        raise ValueError(f"physiology.csv: missing columns {sorted(missing)}")
    return table


def _value(table: pd.DataFrame, species_name: str, organ: str, quantity: str) -> float:
    rows = table[
        (table.set == "primary")
        & (table.species == species_name)
        & (table.organ == organ)
        & (table.quantity == quantity)
    ]
    if len(rows) != 1:
        raise ValueError(
            f"physiology.csv: expected one row for species={species_name!r}, organ={organ!r}, "
            f"quantity={quantity!r}; found {len(rows)}"
        )
    return float(rows.value.iloc[0])


def _has(table: pd.DataFrame, species_name: str, organ: str, quantity: str) -> bool:
    return bool(
        (
            (table.set == "primary")
            & (table.species == species_name)
            & (table.organ == organ)
            & (table.quantity == quantity)
        ).any()
    )


def species(name: str) -> Species:
    """Reference physiology of ``name`` (one of :data:`SPECIES`) from the shipped table."""
    key = check_choice("species", name, SPECIES)
    table = physiology_table()
    bw = _value(table, key, "whole_body", "body_weight")
    co_ml_min = _value(table, key, "whole_body", "cardiac_output")
    blood_ml = _value(table, key, "whole_body", "blood_volume_fraction") * bw
    hct = _value(table, key, "whole_body", "haematocrit")
    volume = np.array([_value(table, key, o, "volume_fraction_bw") * bw for o in ORGANS])
    supply = np.array(
        [
            0.0
            if o == "lung"
            else _value(table, key, o, "hepatic_artery_flow_fraction_co")
            if o == "liver"
            else _value(table, key, o, "blood_flow_fraction_co")
            for o in ORGANS
        ]
    )
    systemic_cap = _value(table, key, "whole_body", "capillary_diameter_um")
    capillary = np.array(
        [
            _value(table, key, o, "capillary_diameter_um")
            if _has(table, key, o, "capillary_diameter_um")
            else systemic_cap
            for o in ORGANS
        ]
    )
    return Species(
        name=key,
        body_weight_g=jnp.asarray(bw),
        cardiac_output_ml_per_h=jnp.asarray(co_ml_min * 60.0),
        blood_volume_ml=jnp.asarray(blood_ml),
        haematocrit=jnp.asarray(hct),
        organ_volume_ml=jnp.asarray(volume),
        arterial_supply_fraction=jnp.asarray(supply),
        capillary_diameter_um=jnp.asarray(capillary),
    )


__all__ = ["SPECIES", "Species", "species", "allometric_factor", "physiology_table"]
