"""Parameters of the observation models (assay noise, detection limits, radiolabel kinetics).

What each assay sees of the model state is defined in :mod:`mscpk.observation.assays`;
how a measurement relates to it is defined here, per assay family
(:data:`ASSAY_FAMILIES`):

- ``bli``: bioluminescence of a reporter in living cells. Detection limit in cells
  (photons from fewer cells are lost in the background); studies report signal
  normalised to a baseline image, which cancels the unknown photons per cell.
- ``flow``: flow cytometry of reporter or dye-labelled cells, and re-culture of living
  cells from tissue. Detection limit in cells per organ.
- ``pcr``: Alu / beta-globin qPCR and ddPCR of donor DNA (living and dead cells, DNA in
  phagocytes). Detection limit in cell-equivalents per organ.
- ``radiolabel``: gamma counting or SPECT/PET of a label (111In, 51Cr, 99mTc, 89Zr, ...):
  the label follows dead cells into phagocytes, leaks from cells at a rate that depends
  on the isotope/chelate (``label_leak_rate_per_h``), is eluted by phagocytes
  (``label_residual_loss_rate_per_h``), and is reported as % of injected activity
  (decay-corrected or not, :data:`ISOTOPE_HALF_LIFE_H`) or % of whole-body activity.
- ``plasma``: plasma markers (TAT, IL-10).

Every measurement has log-normal noise of SD ``sigma_log`` (the assay family's), widened
by the row's reported uncertainty. Defaults are labelled assumptions (:data:`BASIS`);
they are calibrated with the kinetics (issue 6).
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._validation import check_positive

ASSAY_FAMILIES: tuple[str, ...] = ("bli", "flow", "pcr", "radiolabel", "plasma")
ISOTOPES: tuple[str, ...] = ("in111", "cr51", "tc99m", "zr89", "f18", "cu64")
#: Physical half-lives (h) for decay correction. Standard nuclear data (NNDC NuDat;
#: recalled constants, R): 111In 2.8047 d, 51Cr 27.7025 d, 99mTc 6.0067 h, 89Zr 78.41 h,
#: 18F 109.77 min, 64Cu 12.701 h. Only rows reported without decay correction use them.
ISOTOPE_HALF_LIFE_H: dict[str, float] = {
    "in111": 2.8047 * 24.0,
    "cr51": 27.7025 * 24.0,
    "tc99m": 6.0067,
    "zr89": 78.41,
    "f18": 109.77 / 60.0,
    "cu64": 12.701,
}

#: Log-scale SD of an assay family's assumed detection limit (:data:`BASIS`,
#: ``detection_limit_cells``). ASSUMPTION: the defaults are order-of-magnitude figures, known
#: to within a factor ~2.7 at one SD (a factor ~7 at two); the same spread is the limits'
#: prior in :mod:`mscpk.calibration.priors`. A "below/above detection" row read without the
#: paper's own limit can use it in the likelihood
#: (:class:`~mscpk.evidence.likelihood.EvidenceLikelihood`, ``detection_limit_log_sd``).
DETECTION_LIMIT_LOG_SD = 1.0

#: Basis of every default (all assumptions until calibrated against the evidence).
BASIS: dict[str, str] = {
    "sigma_log": (
        "ASSUMPTION: log-scale SD 0.5 (about 50% CV) for cell, DNA and plasma assays, 0.3 for "
        "radiolabel counting: typical between-animal spread of biodistribution measurements; "
        "calibrated in issue 6."
    ),
    "detection_limit_cells": (
        "ASSUMPTION: BLI 1e4 cells (whole-body imaging of deep tissue; a few thousand cells near "
        "the surface), flow/re-culture 1e3 cells per organ, PCR 100 cell-equivalents per organ "
        "(Alu qPCR detects about 1 human cell in 1e5 mouse cells; organs hold 1e7-1e8 cells)."
    ),
    "label_leak_rate_per_h": (
        "ASSUMPTION: the kinetic default label_leak_rate_per_h (0.005 /h, stated for 111In-oxine) "
        "for every isotope until calibrated."
    ),
    "label_residual_loss_rate_per_h": (
        "The kinetic default (Peters 1982, 111In elution from spleen ~2%/day, I) for every isotope; "
        "ASSUMPTION for isotopes other than 111In."
    ),
}


class ObservationParameters(eqx.Module):
    """Observation-model parameters (all arrays; differentiable, calibratable).

    **Arguments:**

    - ``sigma_log``: log-scale measurement SD per assay family (:data:`ASSAY_FAMILIES`).
    - ``detection_limit_cells``: detection limit per family in cells (cell-equivalents
      for PCR); used by "below/above detection" rows without their own limit and by
      "time until undetectable" rows. Plasma/radiolabel entries are unused.
    - ``label_leak_rate_per_h``: label leakage from cells per isotope (:data:`ISOTOPES`).
    - ``label_residual_loss_rate_per_h``: elution of label held by phagocytes, per isotope.
    """

    sigma_log: Float[Array, " F"]
    detection_limit_cells: Float[Array, " F"]
    label_leak_rate_per_h: Float[Array, " I"]
    label_residual_loss_rate_per_h: Float[Array, " I"]

    def __check_init__(self):
        for name, n in (
            ("sigma_log", len(ASSAY_FAMILIES)),
            ("detection_limit_cells", len(ASSAY_FAMILIES)),
            ("label_leak_rate_per_h", len(ISOTOPES)),
            ("label_residual_loss_rate_per_h", len(ISOTOPES)),
        ):
            value = getattr(self, name)
            if jnp.shape(value)[-1:] != (n,):
                raise ValueError(
                    f"ObservationParameters.{name}: expected shape ({n},), got {jnp.shape(value)}"
                )
            check_positive(f"ObservationParameters.{name}", value, allow_zero=name.startswith("label"))

    @classmethod
    def default(cls) -> "ObservationParameters":
        from ..model.parameters import KineticParameters

        k = KineticParameters.default()
        n_iso = len(ISOTOPES)
        return cls(
            sigma_log=jnp.array([0.5, 0.5, 0.5, 0.3, 0.5]),
            detection_limit_cells=jnp.array([1e4, 1e3, 1e2, 1.0, 1.0]),
            label_leak_rate_per_h=jnp.full(n_iso, k.label_leak_rate_per_h),
            label_residual_loss_rate_per_h=jnp.full(n_iso, k.label_residual_loss_rate_per_h),
        )
