"""Registry of the parameters calibrated against the evidence library.

Every other kinetic parameter keeps its shipped default (its prior, for sampling and
sensitivity studies, is in :mod:`mscpk.calibration.priors`): the evidence library does
not inform it, and a parameter the data cannot see only slows the sampler down.

Each entry (:class:`Calibrated`) says what it sets, its prior, units and basis. Priors are
log-normal for positive quantities (``median``, ``log_sd``) and logit-normal for
fractions; the sampler works on the unconstrained (log / logit) scale.

**No double counting.** Several defaults were *derived from* studies that are also rows
of the evidence library (lung death rate from Lee 2009, tissue death rate from Toma 2009,
depot death rates from Braid 2018, the critical diameter ratio from Fischer 2009 and Toma
2009). Centring a tight prior on such a value and then adding the same data to the
likelihood would count those data twice, so these priors keep the default only as a
centre with a wide spread (``log_sd`` 1.0-1.5, a factor 2.7-4.5 per SD): an ASSUMPTION
standing for "order of magnitude known before looking at these data".

Study-level effects (:class:`~mscpk.evidence.scenarios.StudyEffects`) are hierarchical:
``effect = tau * z`` with ``z ~ Normal(0, 1)`` per study (non-centred) and
``tau ~ HalfNormal(TAU_SCALE)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import equinox as eqx
import jax.numpy as jnp

from ..model.layout import DEPOTS
from ..model.parameters import KineticParameters
from ..observation.parameters import ASSAY_FAMILIES, ISOTOPES, ObservationParameters

PRIOR_KINDS = ("lognormal", "logitnormal")
TARGETS = ("kinetic", "observation")


@dataclass(frozen=True)
class Calibrated:
    """One calibrated quantity.

    - ``name``: site name in the NumPyro model and the InferenceData.
    - ``target``: ``"kinetic"`` (:class:`~mscpk.KineticParameters`) or ``"observation"``
      (:class:`~mscpk.observation.ObservationParameters`); ``field`` the attribute.
    - ``index``: element of an array-valued field (organ, depot, assay family, isotope);
      ``None`` for a scalar field, or together with ``scale=True`` for the whole array.
    - ``scale``: the sampled value multiplies the whole default array (keeps the ratios
      between organs) instead of replacing one element.
    - ``prior``: ``"lognormal"`` (``median``, ``log_sd``) or ``"logitnormal"`` (median in
      (0, 1), ``log_sd`` on the logit scale).
    - ``units``, ``basis``: units of the sampled value; citation or reasoning of the prior.
    - ``uses``: assay families or isotopes a row must use for the parameter to be
      informed (empty: always calibrated); every item must be met, and an item
      ``"a|b"`` is met by either tag.
    """

    name: str
    target: str
    field: str
    index: int | None
    scale: bool
    prior: str
    median: float
    log_sd: float
    units: str
    basis: str
    uses: tuple[str, ...] = ()

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ValueError(f"Calibrated.target: {self.target!r}; allowed: {', '.join(TARGETS)}")
        if self.prior not in PRIOR_KINDS:
            raise ValueError(f"Calibrated.prior: {self.prior!r}; allowed: {', '.join(PRIOR_KINDS)}")
        if not self.log_sd > 0:
            raise ValueError(f"Calibrated.log_sd of {self.name}: must be > 0, got {self.log_sd!r}")
        bounds = (0.0, 1.0) if self.prior == "logitnormal" else (0.0, math.inf)
        if not bounds[0] < self.median < bounds[1]:
            raise ValueError(f"Calibrated.median of {self.name}: {self.median!r} outside {bounds}")

    @property
    def loc(self) -> float:
        """Prior location on the unconstrained scale."""
        if self.prior == "logitnormal":
            return math.log(self.median) - math.log1p(-self.median)
        return math.log(self.median)


_K = KineticParameters.default()
_O = ObservationParameters.default()
_DOUBLE = (
    "ASSUMPTION (no double counting): the default was derived from {src}, which are rows of the "
    "evidence library; the prior keeps it as centre with a wide spread (log SD {sd})."
)


def _registry() -> tuple[Calibrated, ...]:
    out = [
        Calibrated(
            "critical_diameter_ratio",
            "kinetic",
            "critical_diameter_ratio",
            None,
            False,
            "lognormal",
            float(_K.critical_diameter_ratio),
            1.0,
            "1",
            _DOUBLE.format(src="Fischer 2009 and Toma 2009", sd=1.0),
        ),
        Calibrated(
            "death_rate_scale",
            "kinetic",
            "death_rate_per_h",
            None,
            True,
            "lognormal",
            1.0,
            1.0,
            "1",
            "Multiplier of every organ's death rate (default ratios kept). "
            + _DOUBLE.format(src="Lee 2009 (lung) and Toma 2009 (tissue)", sd=1.0),
        ),
        Calibrated(
            "debris_clearance_rate_per_h",
            "kinetic",
            "debris_clearance_rate_per_h",
            None,
            False,
            "lognormal",
            float(_K.debris_clearance_rate_per_h),
            0.5,
            "1/h",
            "Default from an 111In-tropolone radiotracer-kinetics meeting abstract (derived, I; not in "
            "the evidence library): log SD 0.5.",
        ),
        Calibrated(
            "dna_degradation_rate_per_h",
            "kinetic",
            "dna_degradation_rate_per_h",
            None,
            False,
            "lognormal",
            float(_K.dna_degradation_rate_per_h),
            1.0,
            "1/h",
            "ASSUMPTION default (bounded by free plasma DNA clearance): log SD 1.0.",
            uses=("family:pcr",),
        ),
    ]
    for depot, sd in (("im", 1.5), ("sc", 1.5), ("ip", 1.5)):
        i = DEPOTS.index(depot)
        out.append(
            Calibrated(
                f"depot_death_rate_{depot}",
                "kinetic",
                "depot_death_rate_per_h",
                i,
                False,
                "lognormal",
                float(_K.depot_death_rate_per_h[i]),
                sd,
                "1/h",
                _DOUBLE.format(src="Braid 2018", sd=sd),
                uses=(f"route:{depot}",),
            )
        )
    out.append(
        Calibrated(
            "athymic_response_fraction",
            "kinetic",
            "athymic_response_fraction",
            None,
            False,
            "logitnormal",
            float(_K.athymic_response_fraction),
            1.0,
            "1",
            "ASSUMPTION default (NK cells remain in athymic hosts): logit SD 1.0.",
            uses=("host:athymic",),
        )
    )
    out.append(
        Calibrated(
            "lung_resident_engulfment_fraction",
            "kinetic",
            "lung_resident_engulfment_fraction",
            None,
            False,
            "logitnormal",
            float(_K.lung_resident_engulfment_fraction),
            1.5,
            "1",
            "ASSUMPTION default (see kinetic_defaults.csv): logit SD 1.5. Informed by lung label "
            "(radiolabel) and lung donor DNA (PCR) rows.",
            uses=("family:radiolabel|family:pcr",),
        )
    )
    out.append(
        Calibrated(
            "thaw_death_rate",
            "kinetic",
            "thaw_death_rate_per_h",
            None,
            False,
            "lognormal",
            float(_K.thaw_death_rate_per_h),
            1.5,
            "1/h",
            "ASSUMPTION default (apoptosis of cryo-injured cells over days; Antebi 2019): "
            "log SD 1.5. Informed by thawed-product rows (Braid 2018 IM day 3).",
            uses=("preparation:thawed",),
        )
    )
    for iso in ISOTOPES:
        i = ISOTOPES.index(iso)
        out.append(
            Calibrated(
                f"label_leak_{iso}",
                "observation",
                "label_leak_rate_per_h",
                i,
                False,
                "lognormal",
                float(_O.label_leak_rate_per_h[i]),
                1.0,
                "1/h",
                "ASSUMPTION default (the 111In-oxine value for every isotope): log SD 1.0.",
                uses=(f"isotope:{iso}",),
            )
        )
    for fam in ASSAY_FAMILIES:
        i = ASSAY_FAMILIES.index(fam)
        out.append(
            Calibrated(
                f"sigma_{fam}",
                "observation",
                "sigma_log",
                i,
                False,
                "lognormal",
                float(_O.sigma_log[i]),
                0.5,
                "1 (log scale)",
                "ASSUMPTION default (typical between-animal spread): log SD 0.5.",
                uses=(f"family:{fam}",),
            )
        )
    return tuple(out)


#: Every quantity that can be calibrated (filtered by what a table uses: :func:`informed`).
REGISTRY: tuple[Calibrated, ...] = _registry()
#: Study-level effects and the scale of their half-normal SD priors (log scale).
#: ASSUMPTION: between-laboratory differences of a factor ~1.6 (0.5) are typical for
#: survival and lung retention of MSC preparations, and for assay calibration.
TAU_SCALE: dict[str, float] = {"survival": 0.5, "lung": 0.3, "scale": 0.5}


def table_tags(table) -> set[str]:
    """What an evidence table uses: ``family:<f>``, ``isotope:<i>``, ``route:<r>``,
    ``host:<h>``, ``preparation:<p>``."""
    from ..evidence.schema import ASSAY_FAMILY

    tags = {f"family:{ASSAY_FAMILY[a]}" for a in table.assay}
    tags |= {f"isotope:{i}" for i in table.isotope if isinstance(i, str) and i}
    tags |= {f"route:{r}" for r in table.route}
    tags |= {f"host:{h}" for h in table.host_immune}
    tags |= {f"preparation:{p}" for p in table.preparation}
    return tags


def informed(table, registry: tuple[Calibrated, ...] = REGISTRY) -> tuple[Calibrated, ...]:
    """Entries of ``registry`` whose ``uses`` the table satisfies (family/isotope/route/host/
    preparation tags: a PCR-only parameter is not calibrated without PCR rows; ``"a|b"``
    is satisfied by either tag)."""
    tags = table_tags(table)
    return tuple(c for c in registry if all(any(t in tags for t in u.split("|")) for u in c.uses))


def apply(
    values: dict,
    entries: tuple[Calibrated, ...],
    kinetic: KineticParameters | None = None,
    observation: ObservationParameters | None = None,
) -> tuple[KineticParameters, ObservationParameters]:
    """Parameter sets with the calibrated ``values`` (by entry name) put in place."""
    kinetic = KineticParameters.default() if kinetic is None else kinetic
    observation = ObservationParameters.default() if observation is None else observation
    sets = {"kinetic": kinetic, "observation": observation}
    for c in entries:
        if c.name not in values:
            raise ValueError(f"values: missing calibrated parameter {c.name!r}")
        v = jnp.asarray(values[c.name])
        obj = sets[c.target]
        old = getattr(obj, c.field)
        if c.scale:
            new = old * v
        elif c.index is None:
            new = jnp.broadcast_to(v, jnp.shape(old)).astype(float)
        else:
            new = old.at[c.index].set(v)
        sets[c.target] = eqx.tree_at(lambda o, f=c.field: getattr(o, f), obj, new)
    return sets["kinetic"], sets["observation"]
