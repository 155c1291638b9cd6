"""Observation models: what each assay sees of the model state.

- :class:`ViableCells`: living donor cells (bioluminescence imaging of a reporter, flow
  cytometry of labelled cells).
- :class:`DeadCells`: dead, not yet engulfed donor cells.
- :class:`DonorDNA`: donor genomes, living or not (Alu / beta-globin qPCR, ddPCR): the DNA
  of dead cells lingers in phagocytes until degraded (Lee 2009 measured lung clearance
  by Alu qPCR; Eggenhofer 2012 found label where no living cells were).
- :class:`Radiolabel`: label activity (111In, 51Cr, 99mTc), decay-corrected, as percent
  of the injected activity; label follows dead cells into phagocytes and leaks.
- :class:`RadiolabelWholeBody`: label as percent of the activity still in the body, the
  normalisation most imaging studies report.
- :class:`EngulfedCells`: dead donor cells inside phagocytes (efferocytosis).
- :class:`PlasmaIL10`: plasma IL-10 from phagocytes that engulfed donor cells (``blood`` only).
- :class:`PlasmaTAT`: plasma thrombin-antithrombin from IBMIR (``blood`` only).
- :class:`LocalInflammation`: inflammation index of an injured organ (organs only).
- :class:`SecretedFactor`: plasma level of the donor cells' secreted factor (``blood`` only).

Each assay maps observed pools (:class:`~mscpk.model.model.Observed`, with the
quasi-steady circulating cells in ``blood``) to ``(..., K)`` values over
:data:`OUTPUT_ORGANS` (``blood``, the organs, ``whole_body``). Assays are equinox
modules so that later versions can carry calibratable parameters (detection limits,
scale factors, noise) and stay differentiable.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..model.layout import N_COMPARTMENTS, ORGANS
from ..model.model import Observed

#: Organ labels of observation outputs, in order.
OUTPUT_ORGANS: tuple[str, ...] = ("blood",) + ORGANS + ("whole_body",)


def _aggregation() -> Float[Array, "K C"]:
    # Output organs are the compartments (blood first) followed by whole_body.
    return jnp.concatenate([jnp.eye(N_COMPARTMENTS), jnp.ones((1, N_COMPARTMENTS))])


AGGREGATION = _aggregation()


def _per_output(per_compartment: Float[Array, "... C"]) -> Float[Array, "... K"]:
    return per_compartment @ AGGREGATION.T


def _safe_percent(num, den):
    ok = den > 0
    return jnp.where(ok, 100.0 * num / jnp.where(ok, den, 1.0), 0.0)


class AbstractAssay(eqx.Module):
    """Base class of observation models. Subclasses are final.

    ``organs`` lists the output organs the assay reports (default: all of
    :data:`OUTPUT_ORGANS`); its ``__call__`` returns one value per listed organ.
    """

    quantity: eqx.AbstractClassVar[str]
    unit: eqx.AbstractClassVar[str]
    organs: ClassVar[tuple[str, ...]] = OUTPUT_ORGANS

    @abc.abstractmethod
    def __call__(self, state: Observed) -> Float[Array, "... K"]:
        """The observed quantity for each output organ."""


class ViableCells(AbstractAssay):
    quantity: ClassVar[str] = "viable_cells"
    unit: ClassVar[str] = "cells"

    def __call__(self, state: Observed):
        return _per_output(state.viable)


class DeadCells(AbstractAssay):
    quantity: ClassVar[str] = "dead_cells"
    unit: ClassVar[str] = "cells"

    def __call__(self, state: Observed):
        return _per_output(state.dead)


class DonorDNA(AbstractAssay):
    quantity: ClassVar[str] = "donor_dna"
    unit: ClassVar[str] = "cell_equivalents"

    def __call__(self, state: Observed):
        return _per_output(state.viable + state.dead + state.engulfed + state.dna_residual)


class EngulfedCells(AbstractAssay):
    """Dead donor cells inside phagocytes, not yet digested."""

    quantity: ClassVar[str] = "engulfed_cells"
    unit: ClassVar[str] = "cells"

    def __call__(self, state: Observed):
        return _per_output(state.engulfed)


class PlasmaIL10(AbstractAssay):
    """Plasma IL-10 released by phagocytes that engulfed donor cells (above baseline)."""

    quantity: ClassVar[str] = "il10"
    unit: ClassVar[str] = "pg_per_ml"
    organs: ClassVar[tuple[str, ...]] = ("blood",)

    def __call__(self, state: Observed):
        return state.il10[..., None]


class LocalInflammation(AbstractAssay):
    """Inflammation index of the injured tissue (the injury level at baseline, lowered
    as the donor cells' IL-10 signal resolves it); zero in uninjured organs."""

    quantity: ClassVar[str] = "inflammation"
    unit: ClassVar[str] = "injury_level"
    organs: ClassVar[tuple[str, ...]] = ORGANS

    def __call__(self, state: Observed):
        return state.inflammation


class SecretedFactor(AbstractAssay):
    """Plasma level of the donor cells' secreted (paracrine) factor, from living cells in
    the body and, across its membrane, in an extracorporeal cartridge (above baseline)."""

    quantity: ClassVar[str] = "secreted_factor"
    unit: ClassVar[str] = "ng_per_ml"
    organs: ClassVar[tuple[str, ...]] = ("blood",)

    def __call__(self, state: Observed):
        return state.secreted_factor[..., None]


class PlasmaTAT(AbstractAssay):
    """Plasma thrombin-antithrombin complex generated by IBMIR (above baseline)."""

    quantity: ClassVar[str] = "tat"
    unit: ClassVar[str] = "ng_per_ml"
    organs: ClassVar[tuple[str, ...]] = ("blood",)

    def __call__(self, state: Observed):
        return state.tat[..., None]


def _label(state: Observed):
    return state.label_viable + state.label_dead + state.label_engulfed + state.label_residual


class Radiolabel(AbstractAssay):
    quantity: ClassVar[str] = "radiolabel"
    unit: ClassVar[str] = "percent_injected_dose"

    def __call__(self, state: Observed):
        in_body = _label(state)
        administered = in_body.sum(-1) + state.label_eliminated
        return _safe_percent(_per_output(in_body), administered[..., None])


class RadiolabelWholeBody(AbstractAssay):
    quantity: ClassVar[str] = "radiolabel_pct_whole_body"
    unit: ClassVar[str] = "percent_whole_body"

    def __call__(self, state: Observed):
        in_body = _label(state)
        return _safe_percent(_per_output(in_body), in_body.sum(-1)[..., None])


#: The assays every simulation reports, in output order.
DEFAULT_ASSAYS: tuple[AbstractAssay, ...] = (
    ViableCells(),
    DeadCells(),
    DonorDNA(),
    Radiolabel(),
    RadiolabelWholeBody(),
    EngulfedCells(),
    PlasmaIL10(),
    PlasmaTAT(),
    LocalInflammation(),
    SecretedFactor(),
)
QUANTITIES: tuple[str, ...] = tuple(a.quantity for a in DEFAULT_ASSAYS)
