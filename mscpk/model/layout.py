"""Compartments, cell-state pools and the layout of the one flat state vector.

The model's state is a single flat ``float64`` array. This module is the only place
that knows how it is laid out, so mechanisms added later append pools here and every
other module keeps working with named views.

Compartments (``C`` of them) are blood followed by the organs, in the fixed order of
:data:`ORGANS`:

    0 blood, 1 lung, 2 heart, ... , C-1 rest_of_body

Viable cells in blood are not a state: blood transit takes seconds to a minute, so
circulating viable cells are quasi-steady and computed from the fluxes into blood
(see :mod:`mscpk.model.transport`). Pools:

- size-resolved, per organ (one row per cell-diameter class ``S``, one column per organ
  ``O``): ``viable`` (arrested viable cells) and ``label_viable`` (radiolabel they carry);
- per compartment ``C``: ``dead`` (dead cells, intact, not yet engulfed), ``dna_residual``
  (donor DNA left in phagocytes/tissue after dead cells are cleared), ``label_dead``
  (label in dead cells), ``label_residual`` (label retained after clearance);
- cumulative scalars: ``cells_cleared``, ``dna_degraded``, ``label_eliminated``;
- lung-resident macrophage pools (scalars): engulfed cells and their label, residual DNA
  and label; they stay in the lung, while the per-compartment phagocyte pools migrate.

Units: cells (and cell-equivalents of DNA or label), see :mod:`mscpk.units`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

#: Organs in model order. Lower-case names are the public output contract.
ORGANS: tuple[str, ...] = (
    "lung",
    "heart",
    "brain",
    "liver",
    "spleen",
    "gut",
    "kidneys",
    "bone_marrow",
    "muscle",
    "skin",
    "adipose",
    "rest_of_body",
)
COMPARTMENTS: tuple[str, ...] = ("blood",) + ORGANS

BLOOD = 0
N_BLOOD = 1
N_ORGANS = len(ORGANS)
N_COMPARTMENTS = len(COMPARTMENTS)


def organ_index(name: str) -> int:
    """Index of organ ``name`` among :data:`ORGANS` (not among compartments)."""
    if not isinstance(name, str):
        raise TypeError(f"organ must be a str, got {type(name).__name__}")
    try:
        return ORGANS.index(name)
    except ValueError:
        raise ValueError(f"organ: unknown organ {name!r}; allowed: {', '.join(ORGANS)}") from None


def compartment_index(name: str) -> int:
    """Index of ``name`` among :data:`COMPARTMENTS` (blood, then organs)."""
    if name == "blood":
        return BLOOD
    return N_BLOOD + organ_index(name)


#: Local administration sites outside the circulation (one column each in the depot
#: pools): intramuscular, subcutaneous and intraperitoneal depots, a topical wound bed,
#: cells still held in a topical hydrogel or patch, and an extracorporeal cartridge.
DEPOTS: tuple[str, ...] = ("im", "sc", "ip", "wound", "hydrogel", "patch", "cartridge")
N_DEPOTS = len(DEPOTS)
#: Compartment whose dead-cell, phagocyte and label pools receive cells dying at each
#: depot (``None``: outside the body).
DEPOT_COMPARTMENT: dict[str, str | None] = {
    "im": "muscle",
    "sc": "skin",
    "ip": "rest_of_body",
    "wound": "skin",
    "hydrogel": "skin",
    "patch": "skin",
    "cartridge": None,
}

SIZE_RESOLVED_POOLS: tuple[str, ...] = ("viable", "label_viable")
DEPOT_POOLS: tuple[str, ...] = ("depot_viable", "depot_label")
COMPARTMENT_POOLS: tuple[str, ...] = (
    "dead",
    "dna_residual",
    "label_dead",
    "label_residual",
    "engulfed",
    "label_engulfed",
)
SCALARS: tuple[str, ...] = (
    "cells_cleared",
    "dna_degraded",
    "label_eliminated",
    "il10",
    "tat",
    "immune_effector",
    "immune_memory",
    "device_retained",
    "inflammation_relief",
    "extracorporeal_removed",
    "secreted_factor",
    "lung_resident_engulfed",
    "lung_resident_label_engulfed",
    "lung_resident_dna",
    "lung_resident_label",
)


class State(NamedTuple):
    """Named views of the flat state vector.

    Amounts are cells or cell-equivalents (DNA, label) except ``il10`` (plasma IL-10,
    pg/mL), ``tat`` (plasma thrombin-antithrombin, ng/mL above baseline) and the
    dimensionless alloimmune ``immune_effector`` and ``immune_memory`` levels (0-1).
    ``device_retained`` counts cells (with their DNA and label) that settled in the
    infusion device and were never delivered. ``inflammation_relief`` (0-1) is the
    fraction of the injured tissue's inflammation resolved by the donor cells' signal.
    ``depot_viable`` are living cells at a local site (:data:`DEPOTS`) with their label
    ``depot_label``; ``extracorporeal_removed`` counts cells (with DNA and label) that died
    in an extracorporeal cartridge, outside the body; ``secreted_factor`` is the plasma
    level of the donor cells' secreted factor (ng/mL above baseline). ``engulfed`` are dead cells inside phagocytes (with their DNA), before
    digestion; ``label_engulfed`` their label. ``cells_cleared``, ``dna_degraded`` and
    ``label_eliminated`` are cumulative.
    ``lung_resident_*`` are what lung-resident macrophages (which do not leave the lung)
    hold: engulfed dead cells with their label, and the DNA and label left after digestion.
    The compartment pools' lung entries are what migratory phagocytes hold (they carry it
    to liver and spleen); :meth:`mscpk.Model.observe` adds the two.
    """

    viable: Float[Array, "S O"]
    label_viable: Float[Array, "S O"]
    depot_viable: Float[Array, "S D"]
    depot_label: Float[Array, "S D"]
    dead: Float[Array, " C"]
    dna_residual: Float[Array, " C"]
    label_dead: Float[Array, " C"]
    label_residual: Float[Array, " C"]
    engulfed: Float[Array, " C"]
    label_engulfed: Float[Array, " C"]
    cells_cleared: Float[Array, ""]
    dna_degraded: Float[Array, ""]
    label_eliminated: Float[Array, ""]
    il10: Float[Array, ""]
    tat: Float[Array, ""]
    immune_effector: Float[Array, ""]
    immune_memory: Float[Array, ""]
    device_retained: Float[Array, ""]
    inflammation_relief: Float[Array, ""]
    extracorporeal_removed: Float[Array, ""]
    secreted_factor: Float[Array, ""]
    lung_resident_engulfed: Float[Array, ""]
    lung_resident_label_engulfed: Float[Array, ""]
    lung_resident_dna: Float[Array, ""]
    lung_resident_label: Float[Array, ""]


assert State._fields == SIZE_RESOLVED_POOLS + DEPOT_POOLS + COMPARTMENT_POOLS + SCALARS


def state_size(n_size_classes: int) -> int:
    """Length of the flat state vector for ``n_size_classes`` diameter classes."""
    return (
        len(SIZE_RESOLVED_POOLS) * n_size_classes * N_ORGANS
        + len(DEPOT_POOLS) * n_size_classes * N_DEPOTS
        + len(COMPARTMENT_POOLS) * N_COMPARTMENTS
        + len(SCALARS)
    )


def unpack(y: Float[Array, " n"], n_size_classes: int) -> State:
    """Split the flat vector ``y`` into named pools (reshapes, no copies under jit)."""
    parts, off = [], 0
    so = n_size_classes * N_ORGANS
    for _ in SIZE_RESOLVED_POOLS:
        parts.append(y[off : off + so].reshape(n_size_classes, N_ORGANS))
        off += so
    sd = n_size_classes * N_DEPOTS
    for _ in DEPOT_POOLS:
        parts.append(y[off : off + sd].reshape(n_size_classes, N_DEPOTS))
        off += sd
    for _ in COMPARTMENT_POOLS:
        parts.append(y[off : off + N_COMPARTMENTS])
        off += N_COMPARTMENTS
    for k in range(len(SCALARS)):
        parts.append(y[off + k])
    return State(*parts)


#: Fast linear pools, integrated analytically by the solver (see
#: :meth:`mscpk.Model.fast_rates`): dead cells and their label in blood, plasma TAT.
FAST_POOLS: tuple[tuple[str, int | None], ...] = (("dead", BLOOD), ("label_dead", BLOOD), ("tat", None))


def fast_slots(n_size_classes: int) -> tuple[int, ...]:
    """Indices in the flat state vector of :data:`FAST_POOLS`."""
    x = unpack(np.arange(state_size(n_size_classes)), n_size_classes)
    return tuple(int(getattr(x, name) if i is None else getattr(x, name)[i]) for name, i in FAST_POOLS)


def pack(state: State) -> Float[Array, " n"]:
    """Inverse of :func:`unpack`."""
    return jnp.concatenate([jnp.reshape(part, (-1,)) for part in state])
