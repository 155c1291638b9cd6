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
- cumulative scalars: ``cells_cleared``, ``dna_degraded``, ``label_eliminated``.

Units: cells (and cell-equivalents of DNA or label), see :mod:`mscpk.units`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
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


SIZE_RESOLVED_POOLS: tuple[str, ...] = ("viable", "label_viable")
COMPARTMENT_POOLS: tuple[str, ...] = ("dead", "dna_residual", "label_dead", "label_residual")
CUMULATIVE: tuple[str, ...] = ("cells_cleared", "dna_degraded", "label_eliminated")


class State(NamedTuple):
    """Named views of the flat state vector (all in cells or cell-equivalents)."""

    viable: Float[Array, "S O"]
    label_viable: Float[Array, "S O"]
    dead: Float[Array, " C"]
    dna_residual: Float[Array, " C"]
    label_dead: Float[Array, " C"]
    label_residual: Float[Array, " C"]
    cells_cleared: Float[Array, ""]
    dna_degraded: Float[Array, ""]
    label_eliminated: Float[Array, ""]


def state_size(n_size_classes: int) -> int:
    """Length of the flat state vector for ``n_size_classes`` diameter classes."""
    return (
        len(SIZE_RESOLVED_POOLS) * n_size_classes * N_ORGANS
        + len(COMPARTMENT_POOLS) * N_COMPARTMENTS
        + len(CUMULATIVE)
    )


def unpack(y: Float[Array, " n"], n_size_classes: int) -> State:
    """Split the flat vector ``y`` into named pools (reshapes, no copies under jit)."""
    s, o, c = n_size_classes, N_ORGANS, N_COMPARTMENTS
    so = s * o
    viable = y[:so].reshape(s, o)
    label_viable = y[so : 2 * so].reshape(s, o)
    off = 2 * so
    per_comp = [y[off + k * c : off + (k + 1) * c] for k in range(len(COMPARTMENT_POOLS))]
    off += len(COMPARTMENT_POOLS) * c
    return State(viable, label_viable, *per_comp, y[off], y[off + 1], y[off + 2])


def pack(state: State) -> Float[Array, " n"]:
    """Inverse of :func:`unpack`."""
    return jnp.concatenate(
        [
            state.viable.reshape(-1),
            state.label_viable.reshape(-1),
            state.dead,
            state.dna_residual,
            state.label_dead,
            state.label_residual,
            jnp.stack([state.cells_cleared, state.dna_degraded, state.label_eliminated]),
        ]
    )
