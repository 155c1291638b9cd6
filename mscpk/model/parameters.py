"""Calibratable kinetic parameters of the core model, with documented defaults.

Every default is a row of ``model/data/kinetic_defaults.csv`` with its basis: a
literature value (V: read in the source; I: derived by arithmetic from read values, the
arithmetic given) or an assumption with its reasoning (A). Rates are for the reference
species (25 g mouse); :meth:`KineticParameters.scaled_to` applies allometric scaling to
the clearance-type rates listed in :data:`ALLOMETRIC_RATES`.
"""

from __future__ import annotations

import functools
from importlib import resources

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jaxtyping import Array, Float

from .._validation import check_positive, check_range
from .layout import DEPOTS, N_DEPOTS, N_ORGANS, ORGANS

#: Parameters with one value per organ (in ORGANS order); all others are scalars.
PER_ORGAN: tuple[str, ...] = (
    "adhesion_extraction",
    "release_rate_per_h",
    "death_rate_per_h",
)
#: Parameters with one value per local site (in DEPOTS order).
PER_DEPOT: tuple[str, ...] = ("depot_death_rate_per_h", "depot_exit_rate_per_h")
#: Fractions (must lie in [0, 1]); all other parameters must be > 0 (rates may be 0).
FRACTIONS: tuple[str, ...] = (
    "adhesion_extraction",
    "blood_debris_to_liver_fraction",
    "ibmir_max_kill_fraction",
    "ibmir_thrombus_fraction",
    "hla_matched_response_fraction",
    "athymic_response_fraction",
    "lung_resident_engulfment_fraction",
    "device_retention_fraction",
    "microgravity_plasma_volume_loss_fraction",
)
#: Rates that may be exactly 0 (a process switched off).
MAY_BE_ZERO: tuple[str, ...] = (
    "release_rate_per_h",
    "death_rate_per_h",
    "blood_death_rate_per_h",
    "thaw_death_rate_per_h",
    "label_leak_rate_per_h",
    "label_residual_loss_rate_per_h",
    "dna_degradation_rate_per_h",
    "phagocyte_migration_rate_per_h",
    "il10_yield_pg_per_cell",
    "tat_yield_ng_per_cell",
    "alloimmune_decay_rate_per_h",
    "alloimmune_memory_rate_per_h",
    "alloimmune_memory_boost",
    "alloimmune_kill_rate_per_h",
    "homing_strength",
    "inflammation_death_factor",
    "inflammation_resolution_rate_per_h",
    "inflammation_relapse_rate_per_h",
    "depot_death_rate_per_h",
    "depot_exit_rate_per_h",
    "secretion_rate_ng_per_cell_h",
)
#: Clearance-type rates that scale with body weight**-1/4 from the reference mouse.
#: Cell-intrinsic rates (death, release) are not scaled (assumption: a cell's survival
#: programme does not depend on the host's body size).
ALLOMETRIC_RATES: tuple[str, ...] = (
    "debris_clearance_rate_per_h",
    "blood_debris_clearance_rate_per_h",
    "dna_degradation_rate_per_h",
    "label_residual_loss_rate_per_h",
    "digestion_rate_per_h",
    "il10_clearance_rate_per_h",
    "tat_clearance_rate_per_h",
)
#: Multipliers that must be >= 1.
AT_LEAST_ONE: tuple[str, ...] = (
    "cryo_death_multiplier",
    "microgravity_coagulation_multiplier",
    "aggregate_diameter_ratio",
    "stasis_coagulation_multiplier",
    "microgravity_cardiac_output_multiplier",
)


class KineticParameters(eqx.Module):
    """Rate constants and arrest parameters (units: hours, µm, dimensionless fractions).

    **Arguments:**

    - ``critical_diameter_ratio``: cell diameter, in capillary diameters, at which half
      of the cells are arrested on one pass (see :mod:`mscpk.model.transport`).
    - ``arrest_steepness``: steepness (Hill exponent) of size-dependent arrest.
    - ``adhesion_extraction``: size-independent capture per pass, per organ.
    - ``release_rate_per_h``: release of arrested viable cells back into blood, per organ.
    - ``death_rate_per_h``: death of arrested viable cells, per organ.
    - ``blood_death_rate_per_h``: death of circulating viable cells.
    - ``debris_clearance_rate_per_h``: engulfment/clearance of dead cells in tissue.
    - ``blood_debris_clearance_rate_per_h``: clearance of dead cells from blood.
    - ``blood_debris_to_liver_fraction``: share of blood-borne debris taken up by the
      liver (the rest by the spleen).
    - ``dna_degradation_rate_per_h``: degradation of donor DNA left after clearance.
    - ``label_leak_rate_per_h``: leakage of radiolabel from cells (viable or dead).
    - ``label_residual_loss_rate_per_h``: elution of label retained by phagocytes.
    - ``cryo_death_multiplier``: death-rate multiplier of freshly thawed cells (>= 1).
    - ``cryo_recovery_time_h``: time constant of recovery from cryo-injury in culture.
    - ``thaw_death_rate_per_h``: extra death rate of cryo-injured cells at every site
      (organs, blood, local depots), added to the site's own rate and scaled by the
      product's cryo-injury index (apoptosis of injured cells, independent of host
      immunity).
    - ``efferocytosis_capacity_per_g``: dead cells per g of organ at which engulfment
      runs at half its low-load rate (saturation).
    - ``digestion_rate_per_h``: digestion of engulfed cells.
    - ``phagocyte_migration_rate_per_h``: departure of lung phagocytes (with what they
      engulfed) to liver and spleen.
    - ``lung_resident_engulfment_fraction``: share of the dead cells engulfed in the lung
      that is taken up by lung-resident macrophages, which keep what they engulfed (and
      its digested DNA and label) in the lung; the rest is taken up by migratory
      phagocytes (``phagocyte_migration_rate_per_h``).
    - ``il10_yield_pg_per_cell``: IL-10 released into plasma per engulfed cell (pg).
    - ``il10_clearance_rate_per_h``: clearance of plasma IL-10.
    - ``ibmir_max_kill_fraction``: largest fraction of entering cells destroyed by IBMIR.
    - ``tf_reference_fraction``: TF+ fraction at which procoagulant activity is log(2).
    - ``ibmir_half_activity``: procoagulant activity giving half the maximal kill.
    - ``ibmir_saturation_cells_per_ml``: incoming cell concentration at which per-cell kill halves (consumption).
    - ``heparin_half_iu_per_kg``: heparin dose halving procoagulant activity.
    - ``ibmir_thrombus_fraction``: share of IBMIR-destroyed cells lodged in lung as thrombi.
    - ``tat_yield_ng_per_cell``: TAT generated per destroyed cell (ng).
    - ``tat_clearance_rate_per_h``: clearance of plasma TAT.
    - ``microgravity_coagulation_multiplier``: procoagulant activity multiplier in microgravity (>= 1).
    - ``alloimmune_activation_rate_per_h``: activation of anti-donor effectors under full antigen exposure.
    - ``alloimmune_decay_rate_per_h``: waning of effectors.
    - ``alloimmune_memory_rate_per_h``: build-up of memory while effectors are active.
    - ``alloimmune_memory_boost``: fold faster activation with full memory.
    - ``alloimmune_kill_rate_per_h``: killing of arrested donor cells at full effector level.
    - ``antigen_half_cells_per_g``: donor cells per g body weight giving half-maximal antigen stimulus.
    - ``hla_matched_response_fraction``: response to HLA-matched cells relative to allogeneic.
    - ``athymic_response_fraction``: response in athymic hosts (NK only) relative to competent.
    - ``homing_strength``: increase of capture in injured tissue per unit injury level.
    - ``cell_density_g_per_ml``: density of the cells.
    - ``medium_density_g_per_ml``: density of the suspension medium.
    - ``medium_viscosity_mpa_s``: viscosity of the suspension medium.
    - ``device_retention_fraction``: share of settled cells that stay in the device.
    - ``microgravity_plasma_volume_loss_fraction``: plasma volume lost in spaceflight.
    """

    critical_diameter_ratio: Float[Array, ""]
    arrest_steepness: Float[Array, ""]
    adhesion_extraction: Float[Array, " O"]
    release_rate_per_h: Float[Array, " O"]
    death_rate_per_h: Float[Array, " O"]
    blood_death_rate_per_h: Float[Array, ""]
    debris_clearance_rate_per_h: Float[Array, ""]
    blood_debris_clearance_rate_per_h: Float[Array, ""]
    blood_debris_to_liver_fraction: Float[Array, ""]
    dna_degradation_rate_per_h: Float[Array, ""]
    label_leak_rate_per_h: Float[Array, ""]
    label_residual_loss_rate_per_h: Float[Array, ""]
    cryo_death_multiplier: Float[Array, ""]
    cryo_recovery_time_h: Float[Array, ""]
    thaw_death_rate_per_h: Float[Array, ""]
    efferocytosis_capacity_per_g: Float[Array, ""]
    digestion_rate_per_h: Float[Array, ""]
    phagocyte_migration_rate_per_h: Float[Array, ""]
    lung_resident_engulfment_fraction: Float[Array, ""]
    il10_yield_pg_per_cell: Float[Array, ""]
    il10_clearance_rate_per_h: Float[Array, ""]
    ibmir_max_kill_fraction: Float[Array, ""]
    tf_reference_fraction: Float[Array, ""]
    ibmir_half_activity: Float[Array, ""]
    ibmir_saturation_cells_per_ml: Float[Array, ""]
    heparin_half_iu_per_kg: Float[Array, ""]
    ibmir_thrombus_fraction: Float[Array, ""]
    tat_yield_ng_per_cell: Float[Array, ""]
    tat_clearance_rate_per_h: Float[Array, ""]
    microgravity_coagulation_multiplier: Float[Array, ""]
    alloimmune_activation_rate_per_h: Float[Array, ""]
    alloimmune_decay_rate_per_h: Float[Array, ""]
    alloimmune_memory_rate_per_h: Float[Array, ""]
    alloimmune_memory_boost: Float[Array, ""]
    alloimmune_kill_rate_per_h: Float[Array, ""]
    antigen_half_cells_per_g: Float[Array, ""]
    hla_matched_response_fraction: Float[Array, ""]
    athymic_response_fraction: Float[Array, ""]
    homing_strength: Float[Array, ""]
    cell_density_g_per_ml: Float[Array, ""]
    medium_density_g_per_ml: Float[Array, ""]
    medium_viscosity_mpa_s: Float[Array, ""]
    device_retention_fraction: Float[Array, ""]
    aggregate_diameter_ratio: Float[Array, ""]
    stasis_coagulation_multiplier: Float[Array, ""]
    microgravity_cardiac_output_multiplier: Float[Array, ""]
    inflammation_death_factor: Float[Array, ""]
    il10_half_effect_pg_per_ml: Float[Array, ""]
    inflammation_resolution_rate_per_h: Float[Array, ""]
    inflammation_relapse_rate_per_h: Float[Array, ""]
    capillary_flow_ml_per_h: Float[Array, ""]
    embolus_resolution_rate_per_h: Float[Array, ""]
    depot_death_rate_per_h: Float[Array, " D"]
    depot_exit_rate_per_h: Float[Array, " D"]
    secretion_rate_ng_per_cell_h: Float[Array, ""]
    secreted_factor_clearance_rate_per_h: Float[Array, ""]
    cartridge_blood_flow_ml_per_h: Float[Array, ""]
    cartridge_permeability_surface_ml_per_h: Float[Array, ""]
    cartridge_effluent_flow_ml_per_h: Float[Array, ""]
    microgravity_plasma_volume_loss_fraction: Float[Array, ""]

    def __check_init__(self):
        for name in parameter_names():
            value = getattr(self, name)
            field = f"KineticParameters.{name}"
            expected = (N_ORGANS,) if name in PER_ORGAN else (N_DEPOTS,) if name in PER_DEPOT else ()
            if (
                isinstance(value, jax.Array | np.ndarray)
                and value.shape != expected
                and value.ndim <= len(expected)
            ):
                raise ValueError(f"{field}: expected shape {expected}, got {value.shape}")
            if name in FRACTIONS:
                check_range(field, value, 0.0, 1.0)
            elif name in AT_LEAST_ONE:
                check_range(field, value, 1.0, float("inf"))
            else:
                check_positive(field, value, allow_zero=name in MAY_BE_ZERO)

    @classmethod
    def default(cls) -> "KineticParameters":
        """The shipped defaults (reference species: 25 g mouse)."""
        return cls(**{k: jnp.asarray(v) for k, v in _default_values().items()})

    def replace(self, **changes) -> "KineticParameters":
        """A copy with some parameters changed. Per-organ parameters accept either a full
        array or a dict ``{organ: value}`` that updates only those organs."""
        values = {k: getattr(self, k) for k in parameter_names()}
        for key, new in changes.items():
            if key not in values:
                raise ValueError(
                    f"parameter: unknown parameter {key!r}; allowed: {', '.join(parameter_names())}"
                )
            if isinstance(new, dict):
                if key not in PER_ORGAN + PER_DEPOT:
                    raise TypeError(
                        f"{key}: a dict of organ or site values is only allowed for {PER_ORGAN + PER_DEPOT}"
                    )
                names = ORGANS if key in PER_ORGAN else DEPOTS
                arr = jnp.asarray(values[key])
                for where, v in new.items():
                    if where not in names:
                        what = "organ" if key in PER_ORGAN else "site"
                        raise ValueError(f"{key}: unknown {what} {where!r}; allowed: {', '.join(names)}")
                    arr = arr.at[names.index(where)].set(v)
                new = arr
            values[key] = jnp.asarray(new, dtype=float)
        return KineticParameters(**values)

    def scaled_to(self, body_weight_g) -> "KineticParameters":
        """Apply allometric scaling (BW/25 g)**-0.25 to :data:`ALLOMETRIC_RATES`."""
        from ..physiology.species import allometric_factor

        factor = allometric_factor(body_weight_g)
        return eqx.tree_at(
            lambda p: [getattr(p, n) for n in ALLOMETRIC_RATES],
            self,
            [getattr(self, n) * factor for n in ALLOMETRIC_RATES],
        )


@functools.cache
def parameter_names() -> tuple[str, ...]:
    return tuple(f.name for f in KineticParameters.__dataclass_fields__.values())


@functools.cache
def default_table() -> pd.DataFrame:
    """The shipped defaults, one row per value, with basis and source."""
    with resources.files("mscpk.model").joinpath("data/kinetic_defaults.csv").open() as f:
        return pd.read_csv(f, comment="#")


def _default_values() -> dict[str, np.ndarray]:
    table = default_table()
    out: dict[str, np.ndarray] = {}
    for name in parameter_names():
        rows = table[table.parameter == name]
        if name in PER_DEPOT:
            by_site = dict(zip(rows.organ, rows.value, strict=True))
            missing = [d for d in DEPOTS if d not in by_site]
            if missing:
                raise ValueError(f"kinetic_defaults.csv: {name} has no value for sites {missing}")
            out[name] = np.array([by_site[d] for d in DEPOTS], dtype=float)
        elif name in PER_ORGAN:
            by_organ = dict(zip(rows.organ, rows.value, strict=True))
            fallback = by_organ.get("all")
            missing = [o for o in ORGANS if o not in by_organ and fallback is None]
            if missing:
                raise ValueError(f"kinetic_defaults.csv: {name} has no value for organs {missing}")
            out[name] = np.array([by_organ.get(o, fallback) for o in ORGANS], dtype=float)
        else:
            if len(rows) != 1:
                raise ValueError(f"kinetic_defaults.csv: expected one row for {name}, found {len(rows)}")
            out[name] = np.asarray(float(rows.value.iloc[0]))
    return out
