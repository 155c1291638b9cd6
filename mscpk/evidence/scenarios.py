"""Evidence rows -> simulation scenarios, batched into one stacked model.

A *scenario* is what produced a fact: species, host immunity, product, regimen and, for
radiolabel, the isotope. Rows sharing a scenario share one simulation. All scenarios are
stacked into one :class:`ScenarioBatch` so that a single ``jax.vmap`` solves them.

Categorical settings that the model keeps static (product preparation and donor match,
host immune status, names) would split the batch, so :func:`scenario_model` builds an
*equivalent* model in which they are numbers:

- preparation: every product is ``"rescued"``, with ``rescue_h`` = 1e-300 h for a freshly
  thawed product (cryo-injury index exp(-rescue_h/tau) = 1) and 1e6 h for a fresh one
  (index 0; the derivative with respect to tau is exactly 0 as well);
- donor match and host immunity: every product is ``"allogeneic"`` in a competent host,
  and the strength of the anti-donor response (mismatch factor times host factor, as in
  :meth:`mscpk.Model.alloimmune_strength`) enters as ``1 - immunosuppression``; because
  that strength depends on calibratable parameters, it is set at evaluation time
  (:meth:`ScenarioBatch.with_parameters`).

``tests/test_evidence.py`` checks that the batched solve reproduces
:func:`mscpk.simulate` with the original categorical settings.

Host disease is recorded but not simulated (evidence hosts are simulated uninjured).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jaxtyping import Array, Bool, Float, Int

from ..dosing.regimen import Dose, DoseTable, Regimen
from ..host.host import Host
from ..mechanisms.switches import Mechanisms
from ..model.model import THAWED_RESCUE_H, Model
from ..model.parameters import KineticParameters
from ..observation.parameters import ISOTOPES, ObservationParameters
from ..physiology.species import species as make_species
from ..product.cell_product import CellProduct, cell_product

#: Scenario-defining columns of an evidence row (a scenario belongs to one study, so
#: that study-level effects can act on it).
SCENARIO_COLUMNS = (
    "study_id",
    "species",
    "host_immune",
    "cell_type",
    "diameter_um",
    "preparation",
    "donor_match",
    "route",
    "target",
    "cells_total",
    "infusion_h",
    "isotope",
)
#: Fresh: index exp(-1e6 h / tau) = 0 for any plausible tau, with a derivative in tau of
#: exactly 0 as well (Model's FRESH_RESCUE_H = 1e300 h would give 0 * inf in a gradient).
_FRESH_RESCUE_H = 1e6
#: Mismatch code: 0 no response (autologous/syngeneic), 1 HLA-matched, 2 full mismatch.
_MISMATCH = {"autologous": 0, "syngeneic": 0, "hla_matched": 1, "allogeneic": 2, "xenogeneic": 2}
#: Host code: 0 no adaptive/NK response (NSG, NOD/SCID), 1 athymic (NK only), 2 competent.
_HOST = {"nsg": 0, "nod_scid": 0, "athymic": 1, "competent": 2}


@dataclass(frozen=True)
class Scenario:
    """One simulated condition of one study (hashable; rows with equal scenarios share a solve)."""

    study_id: str
    species: str
    host_immune: str
    cell_type: str
    diameter_um: float | None
    preparation: str
    donor_match: str
    route: str
    target: str | None
    cells_total: float
    infusion_h: float | None
    isotope: str | None

    @property
    def route_name(self) -> str:
        return self.route if self.target is None else f"{self.route}:{self.target}"

    def product(self) -> CellProduct:
        """The product with its original (categorical) settings."""
        over = {"donor": self.donor_match}
        if self.preparation == "thawed":
            over["preparation"] = "thawed"
        if self.diameter_um is not None:
            over["diameter_mean_um"] = self.diameter_um
        return cell_product(self.cell_type, **over)

    def host(self) -> Host:
        status = {"nod_scid": "nsg"}.get(self.host_immune, self.host_immune)
        return Host(immune_status=status)

    def regimen(self) -> Regimen:
        return Regimen([Dose(0.0, self.cells_total, self.route_name, self.infusion_h)])

    def label(self) -> str:
        dose = f"{self.cells_total:.3g} {self.cell_type}"
        parts = [self.study_id, self.species, self.route_name, dose, self.host_immune]
        if self.preparation == "thawed":
            parts.append("thawed")
        if self.isotope:
            parts.append(self.isotope)
        return ", ".join(parts)


def _none(v):
    return None if v is None or (isinstance(v, float) and np.isnan(v)) or v == "" else v


def scenario_of(row: dict) -> Scenario:
    """The scenario of a validated evidence row (cells/kg resolved with the species' weight)."""
    sp = make_species(row["species"])
    cells = _none(row["cells"])
    if cells is None:
        cells = float(row["cells_per_kg"]) * float(sp.body_weight_g) / 1000.0
    prep = "thawed" if row["preparation"] == "thawed" else "fresh"
    infusion = _none(row["infusion_h"])
    return Scenario(
        study_id=row["study_id"],
        species=row["species"],
        host_immune=row["host_immune"],
        cell_type=row["cell_type"],
        diameter_um=_none(row["diameter_um"]),
        preparation=prep,
        donor_match=row["donor_match"],
        route=row["route"],
        target=_none(row["target"]),
        cells_total=float(cells),
        infusion_h=None if infusion is None else float(infusion),
        isotope=_none(row["isotope"]),
    )


def scenario_model(sc: Scenario, n_size_classes: int, mechanisms: Mechanisms) -> Model:
    """A model equivalent to ``sc``'s with every categorical setting made numeric (see
    the module docstring); its parameters are placeholders set at evaluation time."""
    sp = make_species(sc.species)
    species = dataclasses.replace(sp, name="evidence")
    p = sc.product()
    product = CellProduct(
        "evidence",
        p.diameter_mean_um,
        p.diameter_sd_um,
        p.viability,
        preparation="rescued",
        rescue_h=THAWED_RESCUE_H if sc.preparation == "thawed" else _FRESH_RESCUE_H,
        tf_positive_fraction=p.tf_positive_fraction,
        donor="allogeneic",
        culture="2d",
        potency=p.potency,
    )
    return Model(species, product, KineticParameters.default(), n_size_classes, mechanisms, Host())


class StudyEffects(eqx.Module):
    """Study-level deviations (log scale, one entry per study) for what differs between
    laboratories; zeros reproduce the shared model.

    - ``survival``: log factor on local cell survival: every organ's and depot's death
      rate is divided by ``exp(survival)`` (cell source, passage, handling, host).
    - ``lung``: log factor on lung retention: the critical diameter ratio of capillary
      arrest is divided by ``exp(lung)`` (injection speed, cell clumping, size assay).
    - ``scale``: log factor on the reported level of absolute (not normalised-to-self)
      measurements (calibration of counting, imaging or PCR standards).
    """

    survival: Float[Array, " N"]
    lung: Float[Array, " N"]
    scale: Float[Array, " N"]

    @classmethod
    def zeros(cls, n_studies: int) -> "StudyEffects":
        z = jnp.zeros(n_studies)
        return cls(z, z, z)


def _stack(trees):
    return jax.tree_util.tree_map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *trees)


class ScenarioBatch(eqx.Module):
    """All scenarios stacked along a leading axis ``S``.

    ``times_h`` are each scenario's output times padded to a common length with its end
    time; ``index_of`` maps (scenario, time) to the column in ``times_h``.
    """

    models: Model
    tables: DoseTable
    times_h: Float[Array, "S T"]
    t_end_h: Float[Array, " S"]
    dose_cells: Float[Array, " S"]
    mismatch: Int[Array, " S"]
    host_code: Int[Array, " S"]
    isotope: Int[Array, " S"]
    study: Int[Array, " S"]
    #: Per scenario, the state slots to integrate (``None``: all); see
    #: :func:`mscpk.evidence.likelihood.needed_slots`.
    integrate: Bool[Array, "S n"] | None = None
    #: Per scenario, the assay kinds its rows read; the others' signals are NaN.
    kinds: Bool[Array, "S K"] | None = None

    @property
    def n(self) -> int:
        return self.times_h.shape[0]

    def with_parameters(
        self,
        kinetic: KineticParameters,
        observation: ObservationParameters,
        effects: StudyEffects | None = None,
    ) -> Model:
        """The stacked models with ``kinetic`` parameters (per-isotope label kinetics
        from ``observation``), each scenario's anti-donor strength and, if given, its
        study's :class:`StudyEffects`."""
        s = self.n
        params = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (s,) + jnp.shape(x)), kinetic)
        params = eqx.tree_at(
            lambda q: (q.label_leak_rate_per_h, q.label_residual_loss_rate_per_h),
            params,
            (
                observation.label_leak_rate_per_h[self.isotope],
                observation.label_residual_loss_rate_per_h[self.isotope],
            ),
        )
        # No evidence kind observes the secreted factor and nothing depends on it, so its
        # production is set to zero here: every prediction is unchanged, and its fast
        # plasma turnover (0.7/h in a mouse) no longer limits the solver's step size.
        params = eqx.tree_at(
            lambda q: q.secretion_rate_ng_per_cell_h,
            params,
            jnp.zeros_like(params.secretion_rate_ng_per_cell_h),
        )
        if effects is not None:
            survival = jnp.exp(-effects.survival[self.study])  # better survival: slower death
            lung = jnp.exp(effects.lung[self.study])
            params = eqx.tree_at(
                lambda q: (q.death_rate_per_h, q.depot_death_rate_per_h, q.critical_diameter_ratio),
                params,
                (
                    params.death_rate_per_h * survival[:, None],
                    params.depot_death_rate_per_h * survival[:, None],
                    params.critical_diameter_ratio / lung,
                ),
            )
        mismatch = jnp.where(
            self.mismatch == 2, 1.0, jnp.where(self.mismatch == 1, kinetic.hla_matched_response_fraction, 0.0)
        )
        host = jnp.where(
            self.host_code == 2, 1.0, jnp.where(self.host_code == 1, kinetic.athymic_response_fraction, 0.0)
        )
        suppression = 1.0 - mismatch * host
        return eqx.tree_at(
            lambda m: (m.parameters, m.host.immunosuppression), self.models, (params, suppression)
        )


def build_batch(
    scenarios: list[Scenario],
    times: list[np.ndarray],
    n_size_classes: int = 5,
    mechanisms: Mechanisms | None = None,
    study_ids: tuple[str, ...] | None = None,
) -> ScenarioBatch:
    """Stack ``scenarios`` with their sorted output ``times`` (one array each);
    ``study_ids`` orders the studies (default: sorted ids of the scenarios)."""
    study_ids = tuple(sorted({sc.study_id for sc in scenarios})) if study_ids is None else study_ids
    mechanisms = Mechanisms() if mechanisms is None else mechanisms
    models = [scenario_model(sc, n_size_classes, mechanisms) for sc in scenarios]
    regimens = [sc.regimen() for sc in scenarios]
    n_rows = max(r.n_rows for r in regimens)
    t_max = max(len(t) for t in times)
    padded = np.stack([np.concatenate([t, np.full(t_max - len(t), t[-1])]) for t in times])
    return ScenarioBatch(
        models=_stack(models),
        tables=_stack([r.table(n_rows) for r in regimens]),
        times_h=jnp.asarray(padded),
        t_end_h=jnp.asarray([t[-1] for t in times]),
        dose_cells=jnp.asarray([sc.cells_total for sc in scenarios]),
        mismatch=jnp.asarray([_MISMATCH[sc.donor_match] for sc in scenarios]),
        host_code=jnp.asarray([_HOST[sc.host_immune] for sc in scenarios]),
        isotope=jnp.asarray([ISOTOPES.index(sc.isotope) if sc.isotope else 0 for sc in scenarios]),
        study=jnp.asarray([study_ids.index(sc.study_id) for sc in scenarios]),
    )


def scenarios_of(table: pd.DataFrame) -> tuple[list[Scenario], list[int]]:
    """Distinct scenarios of a validated table and each row's scenario index."""
    scenarios: list[Scenario] = []
    index: dict[Scenario, int] = {}
    of_row = []
    for row in table.to_dict("records"):
        sc = scenario_of(row)
        if sc not in index:
            index[sc] = len(scenarios)
            scenarios.append(sc)
        of_row.append(index[sc])
    return scenarios, of_row
