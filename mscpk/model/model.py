r"""The whole-body cell-kinetics model: one flat state, one vectorised right-hand side.

For each diameter class :math:`s`, arrested viable cells :math:`V_s` (a vector over
organs) and the label they carry :math:`L^V_s` obey

.. math::

    \dot V_s = (M_s - I)(k_r \odot V_s) - k_d \odot V_s + \varphi_s\, u_s, \qquad
    \dot L^V_s = (M^L_s - I)(k_r \odot L^V_s) - (k_d + k_\ell) \odot L^V_s + \varphi^L_s\, u_s,

where :math:`k_r` are release rates, :math:`M_s` redistributes released cells through
the quasi-steady circulation (:mod:`mscpk.model.transport`), :math:`k_d` are death rates,
:math:`k_\ell` label leakage and :math:`u_s` the infusion of class-:math:`s` cells into
blood. Dead cells :math:`D` (per compartment, blood included) are cleared at :math:`k_c`:
their count goes to ``cells_cleared``, their DNA to the residual pool :math:`R` and their
label to :math:`L^R` (blood-borne debris into liver and spleen); :math:`R` degrades at
:math:`k_{dna}` and :math:`L^R` elutes at :math:`k_{LR}`. With efferocytosis on, dead cells are
first engulfed, then digested; in the lung a share :math:`f_{res}` is engulfed by
resident macrophages, which keep it (and its DNA and label) in the lung, while migratory
phagocytes carry the rest to liver and spleen. Every flow leaves one pool and
enters another or a cumulative counter, so cells, donor DNA and label are each conserved
exactly (:meth:`Model.totals`).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..host.host import Host
from ..mechanisms.switches import Mechanisms
from ..physiology.species import Species
from ..product.cell_product import CellProduct
from .layout import (
    BLOOD,
    DEPOT_COMPARTMENT,
    DEPOTS,
    N_BLOOD,
    N_COMPARTMENTS,
    N_DEPOTS,
    ORGANS,
    State,
    pack,
    state_size,
    unpack,
)
from .parameters import KineticParameters
from .transport import Circulation, circulation, first_pass_extraction, redistribute, size_extraction

_LIVER = ORGANS.index("liver")
_SPLEEN = ORGANS.index("spleen")
_LUNG_C = N_BLOOD + ORGANS.index("lung")
_PORTAL = jnp.array([o in ("gut", "spleen") for o in ORGANS], dtype=float)
_WOUND = DEPOTS.index("wound")
#: (C, D): the compartment each local site lies in (cartridge column empty).
_DEPOT_TO_C = jnp.array(
    [[1.0 if DEPOT_COMPARTMENT[d] == c else 0.0 for d in DEPOTS] for c in ("blood",) + ORGANS]
)
_DEPOT_TO_ORGAN = _DEPOT_TO_C[N_BLOOD:].T  # (D, O)
_OUTSIDE = jnp.array([1.0 if DEPOT_COMPARTMENT[d] is None else 0.0 for d in DEPOTS])
#: Where cells leaving a site go: venous blood (depots, wound bed) or the wound bed
#: (hydrogel, patch); cells do not leave a cartridge.
_EXIT_TO_BLOOD = jnp.array([1.0 if d in ("im", "sc", "ip", "wound") else 0.0 for d in DEPOTS])
_EXIT_TO_WOUND = jnp.array([1.0 if d in ("hydrogel", "patch") else 0.0 for d in DEPOTS])
#: Boltzmann constant (J/K, exact in SI since 2019).
BOLTZMANN_J_PER_K = 1.380649e-23
#: ASSUMPTION: cell suspensions are infused at room temperature, 22 degC.
DEVICE_TEMPERATURE_K = 295.15


class Observed(NamedTuple):
    """What assays look at: per-compartment pools with quasi-steady blood filled in."""

    viable: Float[Array, "... C"]
    label_viable: Float[Array, "... C"]
    dead: Float[Array, "... C"]
    dna_residual: Float[Array, "... C"]
    label_dead: Float[Array, "... C"]
    label_residual: Float[Array, "... C"]
    engulfed: Float[Array, "... C"]
    label_engulfed: Float[Array, "... C"]
    label_eliminated: Float[Array, "..."]
    il10: Float[Array, "..."]
    tat: Float[Array, "..."]
    inflammation: Float[Array, "... O"]
    secreted_factor: Float[Array, "..."]
    depot_viable: Float[Array, "... D"]  # living cells per local site (DEPOTS)


class Transport(NamedTuple):
    """Everything the right-hand side needs that does not depend on the state,
    computed once per solve (:meth:`Model.transport`) instead of at every step."""

    cells: Circulation
    label: Circulation
    aggregates: Circulation  # fates of cells entering blood as aggregates
    aggregates_label: Circulation
    extraction: Float[Array, "S O"]
    aggregate_extraction: Float[Array, "S O"]
    label_dead_share: Float[Array, ""]
    rates: KineticParameters  # species-scaled (and cryo-adjusted) parameters
    death: Float[Array, " O"]  # death rates of arrested cells
    clear: Float[Array, " C"]  # debris clearance rates (blood first)
    dest: Float[Array, "C C"]  # where cleared debris goes
    migrate: Float[Array, "C C"]  # phagocyte migration generator
    capacity: Float[Array, " C"]  # efferocytosis capacity (cells)
    plasma_ml: Float[Array, ""]
    alloimmune: Float[Array, ""] | None  # relative anti-donor strength, None if none


#: ``rescue_h`` giving a cryo-injury index ``exp(-rescue_h / tau)`` of exactly 0 (a fresh
#: product; exact for any recovery time tau < 1e290 h).
FRESH_RESCUE_H = 1e300
#: ``rescue_h`` giving an index of exactly 1 (a freshly thawed product; any tau > 1e-280 h).
THAWED_RESCUE_H = 1e-300


class Model(eqx.Module):
    """Species + product + kinetic parameters, and the ODE they define.

    **Arguments:**

    - ``species``: a :class:`~mscpk.Species`.
    - ``product``: a :class:`~mscpk.CellProduct`.
    - ``parameters``: :class:`~mscpk.KineticParameters` for the reference mouse;
      allometric scaling to ``species`` is applied here.
    - ``n_size_classes``: diameter classes resolving the product's size distribution
      (static; default 5).
    - ``mechanisms``: :class:`~mscpk.mechanisms.Mechanisms` switches (default: all on;
      ``Mechanisms.none()`` is the core model).
    - ``host``: :class:`~mscpk.Host` (immune status, injury, heparin, gravity).
    """

    species: Species
    product: CellProduct
    parameters: KineticParameters
    n_size_classes: int = eqx.field(static=True, default=5)
    mechanisms: Mechanisms = Mechanisms()
    host: Host = Host()

    def __check_init__(self):
        if not isinstance(self.n_size_classes, int) or self.n_size_classes < 1:
            raise ValueError(f"n_size_classes: must be an int >= 1, got {self.n_size_classes!r}")

    # ----------------------------------------------------------------- programs
    def numeric_equivalent(self) -> "Model":
        """The same model with the categorical settings that only set numbers made numbers,
        so that models differing only in them share one compiled solve.

        Static fields make a new program for every value, compiled anew (seconds) each
        time a setting changes in a session. Here:

        - names (species, product) and the product's culture label become fixed labels;
        - the preparation becomes ``"rescued"`` with ``rescue_h`` giving the same
          cryo-injury index: :data:`FRESH_RESCUE_H` (index 0) for a fresh product,
          :data:`THAWED_RESCUE_H` (index 1) for a freshly thawed one;
        - donor match and host immune status become an allogeneic donor in a competent
          host whose ``immunosuppression`` is ``1 - r``, ``r`` the
          :meth:`alloimmune_response` (mismatch factor times host factor times
          ``1 - immunosuppression``); a model without a response keeps a syngeneic donor.

        What changes the equations' structure stays static: the mechanism switches and the
        injured organ (gravity is a number in :class:`~mscpk.Host`). Exact for fresh and
        thawed products and for models without an alloimmune response; with one,
        ``1 - (1 - r)`` may differ from ``r`` in the last bit. Needs concrete (untraced)
        parameters; used by :func:`mscpk.simulate`.
        """
        sp, p, h = self.species, self.product, self.host
        species = dataclasses.replace(sp, name="species")
        rescue = {"fresh": FRESH_RESCUE_H, "thawed": THAWED_RESCUE_H}.get(p.preparation, p.rescue_h)
        response = self.alloimmune_response(self.rates)
        suppression = h.immunosuppression if response is None else 1.0 - response
        if not bool(jnp.all((suppression >= 0.0) & (suppression <= 1.0))):
            return self  # a response outside [0, 1] (parameters out of range): kept as given
        product = CellProduct(
            "product",
            p.diameter_mean_um,
            p.diameter_sd_um,
            p.viability,
            preparation="rescued",
            rescue_h=rescue,
            tf_positive_fraction=p.tf_positive_fraction,
            donor="syngeneic" if response is None else "allogeneic",
            culture="2d",
            potency=p.potency,
        )
        host = Host(
            immune_status="competent",
            immunosuppression=suppression,
            injury_organ=h.injury_organ,
            injury_level=h.injury_level,
            heparin_iu_per_kg=h.heparin_iu_per_kg,
            gravity=h.gravity,  # a number inside Host (one program for both)
            jugular_stasis=h.jugular_stasis,
        )
        return Model(species, product, self.parameters, self.n_size_classes, self.mechanisms, host)

    # ----------------------------------------------------------------- structure
    @property
    def n_states(self) -> int:
        return state_size(self.n_size_classes)

    @property
    def rates(self) -> KineticParameters:
        """Parameters scaled to this species' body weight and, with the preparation
        mechanism on, death rates raised by the product's cryo-injury index ``I``: at
        every site (organs, blood, local depots) ``k -> k * (1 + (m - 1) I) + k_thaw I``
        with ``m`` = ``cryo_death_multiplier`` and ``k_thaw`` = ``thaw_death_rate_per_h``.
        The multiplier raises a site's own death rate; the added hazard is the apoptosis
        of injured cells, which does not depend on the site or on host immunity."""
        p = self.parameters.scaled_to(self.species.body_weight_g)
        if self.mechanisms.preparation and self.product.preparation != "fresh":
            injury = self.product.cryo_injury(p.cryo_recovery_time_h)
            factor = 1.0 + (p.cryo_death_multiplier - 1.0) * injury
            extra = p.thaw_death_rate_per_h * injury
            p = eqx.tree_at(
                lambda q: (q.death_rate_per_h, q.blood_death_rate_per_h, q.depot_death_rate_per_h),
                p,
                (
                    p.death_rate_per_h * factor + extra,
                    p.blood_death_rate_per_h * factor + extra,
                    p.depot_death_rate_per_h * factor + extra,
                ),
            )
        return p

    def size_classes(self) -> tuple[Float[Array, " S"], Float[Array, " S"]]:
        return self.product.size_classes(self.n_size_classes)

    def extraction(self) -> Float[Array, "S O"]:
        """Per-pass arrest probability for each diameter class and organ."""
        p = self.parameters
        diameters, _ = self.size_classes()
        size_part = size_extraction(
            diameters, self.species.capillary_diameter_um, p.critical_diameter_ratio, p.arrest_steepness
        )
        return first_pass_extraction(size_part, self._adhesion())

    def _adhesion(self) -> Float[Array, " O"]:
        """Size-independent capture per organ, raised in an injured organ (homing)."""
        p = self.parameters
        adhesion = p.adhesion_extraction
        if self.mechanisms.injury_homing and self.host.injury_organ is not None:
            adhesion = 1.0 - (1.0 - adhesion) * jnp.exp(-p.homing_strength * self.host.injury_mask())
        return adhesion

    def plasma_volume_ml(self) -> Float[Array, ""]:
        """Plasma volume (mL); reduced in microgravity by the spaceflight plasma loss."""
        plasma = self.species.blood_volume_ml * (1.0 - self.species.haematocrit)
        loss = self.parameters.microgravity_plasma_volume_loss_fraction
        plasma = plasma * jnp.where(self.host.microgravity > 0.5, 1.0 - loss, 1.0)
        return plasma

    def cardiac_output_ml_per_h(self) -> Float[Array, ""]:
        """Cardiac output (mL/h); raised in microgravity (cephalad fluid shift). Organ
        flow fractions are kept: no organ-specific in-flight flow data were found."""
        output = self.species.cardiac_output_ml_per_h
        multiplier = self.parameters.microgravity_cardiac_output_multiplier
        output = output * jnp.where(self.host.microgravity > 0.5, multiplier, 1.0)
        return output

    def blood_volume_ml(self) -> Float[Array, ""]:
        """Circulating blood volume (mL): red-cell volume plus (possibly reduced) plasma."""
        return self.species.blood_volume_ml * self.species.haematocrit + self.plasma_volume_ml()

    def transport(self) -> Transport:
        """State-independent transport quantities (computed once per solve)."""
        r = self.rates
        extraction = self.extraction()
        rate = self.cardiac_output_ml_per_h() / self.blood_volume_ml()
        supply = self.species.arterial_supply_fraction
        cells = circulation(extraction, supply, rate, r.blood_death_rate_per_h)
        label_loss = r.blood_death_rate_per_h + r.label_leak_rate_per_h
        label = circulation(extraction, supply, rate, label_loss)
        agg_extraction = self.aggregate_extraction()
        aggregates = circulation(agg_extraction, supply, rate, r.blood_death_rate_per_h)
        aggregates_label = circulation(agg_extraction, supply, rate, label_loss)
        share = jnp.where(
            label_loss > 0, r.blood_death_rate_per_h / jnp.where(label_loss > 0, label_loss, 1.0), 1.0
        )
        death, clear, dest = self._clearance(r)
        capacity = jnp.concatenate(
            [jnp.full((1,), jnp.inf), r.efferocytosis_capacity_per_g * self.species.organ_volume_ml]
        )
        return Transport(
            cells,
            label,
            aggregates,
            aggregates_label,
            extraction,
            agg_extraction,
            share,
            rates=r,
            death=death,
            clear=clear,
            dest=dest,
            migrate=self._migration(r),
            capacity=capacity,
            plasma_ml=self.plasma_volume_ml(),
            alloimmune=self.alloimmune_strength(r),
        )

    def blood_residence_h(self) -> Float[Array, " S"]:
        """Mean time (h) a viable cell of each diameter class spends in blood per entry.

        The quasi-steady circulation is accurate for times well beyond this.
        """
        c = self.transport().cells
        return 1.0 / (c.out_rate + self.rates.blood_death_rate_per_h)

    def _clearance(self, r: KineticParameters):
        n_org = len(ORGANS)
        death = r.death_rate_per_h
        clear = jnp.concatenate(
            [
                jnp.reshape(r.blood_debris_clearance_rate_per_h, (1,)),
                jnp.ones(n_org) * r.debris_clearance_rate_per_h,
            ]
        )
        # Where cleared debris (its DNA and label) ends up: organs keep their own;
        # blood-borne debris goes to liver and spleen.
        f = r.blood_debris_to_liver_fraction
        blood_col = jnp.zeros(N_COMPARTMENTS).at[N_BLOOD + _LIVER].set(f).at[N_BLOOD + _SPLEEN].add(1.0 - f)
        dest = jnp.eye(N_COMPARTMENTS).at[:, BLOOD].set(blood_col)
        return death, clear, dest

    # ----------------------------------------------------------------- dynamics
    def vector_field(self, t, y: Float[Array, " n"], input_rate: Float[Array, " n"]) -> Float[Array, " n"]:
        """Right-hand side ``dy/dt`` (cells/h); ``input_rate`` is the infusion input.

        This is the reference form, in which the dose-driven parts of the fast pools
        (:meth:`fast_rates`) are ordinary states; :func:`mscpk.solve.segments.solve`
        evaluates them in closed form instead. Both describe the same model.
        """
        del t
        return self.vector_field_from(self.transport(), y) + input_rate

    def fast_rates(self, tr: Transport) -> Float[Array, " 3"]:
        r"""Decay rates (1/h) of the fast linear pools :data:`~mscpk.model.layout.FAST_POOLS`:
        dead cells in blood, their label, plasma TAT.

        These pools turn over in minutes (mouse: blood debris 2/h, TAT 2.8/h), which would
        bound an explicit solver's step to about an hour over months of slow kinetics. Each
        is split in two parts. What doses put in (bolus jumps, infusion input, constant on
        a segment) decays as :math:`A(t) = A_0 e^{-k\tau} + (u/k)(1 - e^{-k\tau})`,
        which the solver evaluates in closed form (:func:`mscpk.solve.segments.solve`).
        What the state feeds in (cells released from organs or leaving a depot that die
        in blood, at rate :math:`q(y)`) is quasi-steady, :math:`q(y)/k`, like circulating
        viable cells: its relative error is about :math:`|\dot q / q| / k`, the input's
        change over the pool's turnover time (30 min in a mouse, while the state-driven
        inputs change over hours to days). The state slot holds :math:`A`;
        :meth:`observe` adds :math:`q(y)/k`. Cells, DNA and label stay exactly conserved.
        """
        r = tr.rates
        clear = tr.clear[BLOOD]
        return jnp.stack([clear, clear + r.label_leak_rate_per_h, r.tat_clearance_rate_per_h])

    def _blood_debris_inputs(self, tr: Transport, x: State):
        """State-driven input rates (cells/h) of dead cells and of their label into blood:
        cells released from organs or leaving local sites that die while circulating.
        Works on batched states (leading dimensions)."""
        r = tr.rates
        released = r.release_rate_per_h * x.viable  # (..., S, O)
        released_l = r.release_rate_per_h * x.label_viable
        to_blood = jnp.sum(r.depot_exit_rate_per_h * _EXIT_TO_BLOOD * x.depot_viable, -1)  # (..., S)
        to_blood_l = jnp.sum(r.depot_exit_rate_per_h * _EXIT_TO_BLOOD * x.depot_label, -1)
        died = jnp.sum(tr.cells.release_dead * released, (-2, -1)) + jnp.sum(
            to_blood * tr.cells.pool_dead, -1
        )
        lost_l = jnp.sum(tr.label.release_dead * released_l, (-2, -1)) + jnp.sum(
            to_blood_l * tr.label.pool_dead, -1
        )
        return died, lost_l

    def vector_field_from(
        self, tr: Transport, y: Float[Array, " n"], fast: Float[Array, " 3"] | None = None
    ) -> Float[Array, " n"]:
        """Right-hand side given precomputed :meth:`transport` (reused across steps).

        ``fast``: the dose-driven parts :math:`A(t)` of the fast pools (:meth:`fast_rates`),
        computed analytically by the solver; ``None`` (the reference form) reads them from
        the state. Either way each slot's derivative is :math:`-kA` (plus the dose input
        added by the caller); with ``fast`` given it is a function of time only, so the
        fast pools no longer bound the step size, and because every outflow of a slot
        enters another pool the solver still conserves cells, DNA and label exactly.
        """
        x = unpack(y, self.n_size_classes)
        r, clear, dest, strength = tr.rates, tr.clear, tr.dest, tr.alloimmune
        death = tr.death
        if strength is not None:  # anti-donor effectors kill arrested donor cells
            death = death + r.alloimmune_kill_rate_per_h * strength * x.immune_effector
        if self._inflamed:  # the inflamed injured tissue kills arrested donor cells faster
            death = death * (1.0 + r.inflammation_death_factor * self.inflammation(x.inflammation_relief))
        leak = r.label_leak_rate_per_h
        released = r.release_rate_per_h[None, :] * x.viable  # (S, O)
        released_l = r.release_rate_per_h[None, :] * x.label_viable
        died_in_blood, label_lost = self._blood_debris_inputs(tr, x)
        # Fast pools: dose-driven part A (state slot or analytic) + quasi-steady part.
        k_fast = self.fast_rates(tr)
        a = jnp.stack([x.dead[BLOOD], x.label_dead[BLOOD], x.tat]) if fast is None else fast
        x = x._replace(
            dead=x.dead.at[BLOOD].set(a[0] + died_in_blood / k_fast[0]),
            label_dead=x.label_dead.at[BLOOD].set(a[1] + label_lost * tr.label_dead_share / k_fast[1]),
            tat=a[2],
        )
        dp = self._depot_flows(tr, x)
        dead_in = jnp.concatenate([jnp.reshape(died_in_blood, (1,)), death * x.viable.sum(0)]) + dp["dead"]
        label_dead_in = (
            jnp.concatenate(
                [jnp.reshape(label_lost * tr.label_dead_share, (1,)), death * x.label_viable.sum(0)]
            )
            + dp["label_dead"]
        )
        signals = self._signals(r, x, strength)
        signals["secreted_factor"] = dp["secreted_factor"]
        common = dict(
            viable=redistribute(tr.cells, released) - released - death[None, :] * x.viable + dp["viable"],
            label_viable=redistribute(tr.label, released_l)
            - released_l
            - (death + leak)[None, :] * x.label_viable
            + dp["label_viable"],
            depot_viable=dp["depot_viable"],
            depot_label=dp["depot_label"],
            extracorporeal_removed=dp["extracorporeal_removed"],
            dna_degraded=r.dna_degradation_rate_per_h * (x.dna_residual.sum() + x.lung_resident_dna),
            label_eliminated=leak * (x.label_viable.sum() + x.label_dead.sum())
            + r.label_residual_loss_rate_per_h * (x.label_residual.sum() + x.lung_resident_label)
            + label_lost * (1.0 - tr.label_dead_share)
            + dp["label_eliminated"],
            **signals,
        )
        if self.mechanisms.efferocytosis:
            # Dead cells are engulfed (saturable per organ) and digested. In the lung a
            # share is engulfed by resident macrophages, which stay; migratory phagocytes
            # leave for liver and spleen with what they hold (cells, DNA, label).
            per_cell = clear / (1.0 + x.dead / tr.capacity)
            engulf, label_engulf = per_cell * x.dead, per_cell * x.label_dead
            f_res = r.lung_resident_engulfment_fraction
            resident_in, resident_label_in = f_res * engulf[_LUNG_C], f_res * label_engulf[_LUNG_C]
            digested = r.digestion_rate_per_h * x.engulfed
            label_digested = r.digestion_rate_per_h * x.label_engulfed
            resident_digested = r.digestion_rate_per_h * x.lung_resident_engulfed
            resident_label_digested = r.digestion_rate_per_h * x.lung_resident_label_engulfed
            migrate = tr.migrate
            dx = State(
                dead=dead_in - engulf,
                dna_residual=digested
                - r.dna_degradation_rate_per_h * x.dna_residual
                + migrate @ x.dna_residual,
                label_dead=label_dead_in - label_engulf - leak * x.label_dead,
                label_residual=label_digested
                - r.label_residual_loss_rate_per_h * x.label_residual
                + migrate @ x.label_residual,
                engulfed=dest @ engulf.at[_LUNG_C].add(-resident_in) - digested + migrate @ x.engulfed,
                label_engulfed=dest @ label_engulf.at[_LUNG_C].add(-resident_label_in)
                - label_digested
                + migrate @ x.label_engulfed,
                cells_cleared=digested.sum() + resident_digested,
                il10=r.il10_yield_pg_per_cell * engulf.sum() / tr.plasma_ml
                - r.il10_clearance_rate_per_h * x.il10,
                lung_resident_engulfed=resident_in - resident_digested,
                lung_resident_label_engulfed=resident_label_in - resident_label_digested,
                lung_resident_dna=resident_digested - r.dna_degradation_rate_per_h * x.lung_resident_dna,
                lung_resident_label=resident_label_digested
                - r.label_residual_loss_rate_per_h * x.lung_resident_label,
                **common,
            )
        else:
            cleared = clear * x.dead
            label_cleared = clear * x.label_dead
            zero_c = jnp.zeros(N_COMPARTMENTS)
            dx = State(
                dead=dead_in - cleared,
                dna_residual=dest @ cleared - r.dna_degradation_rate_per_h * x.dna_residual,
                label_dead=label_dead_in - label_cleared - leak * x.label_dead,
                label_residual=dest @ label_cleared - r.label_residual_loss_rate_per_h * x.label_residual,
                engulfed=zero_c,
                label_engulfed=zero_c,
                cells_cleared=cleared.sum(),
                il10=jnp.zeros(()),
                lung_resident_engulfed=jnp.zeros(()),
                lung_resident_label_engulfed=jnp.zeros(()),
                lung_resident_dna=jnp.zeros(()),
                lung_resident_label=jnp.zeros(()),
                **common,
            )
        return pack(dx)

    def depot_death_rates(self, r: KineticParameters, x: State, strength=None) -> Float[Array, " D"]:
        """Death rates (1/h) of living cells at each local site (:data:`DEPOTS`): the
        site's own rate, plus anti-donor killing (not behind a cartridge membrane) and
        the inflammation of an injured organ the site lies in."""
        death = r.depot_death_rate_per_h
        inside = 1.0 - _OUTSIDE
        if strength is not None:
            death = death + r.alloimmune_kill_rate_per_h * strength * x.immune_effector * inside
        if self._inflamed:
            local = _DEPOT_TO_ORGAN @ self.inflammation(x.inflammation_relief)  # (D,)
            death = death * (1.0 + r.inflammation_death_factor * local)
        return death

    @staticmethod
    def cartridge_transfer(r: KineticParameters) -> Float[Array, ""]:
        r"""Fraction of what cartridge cells secrete that reaches the patient's blood.

        The circuit's blood flow :math:`Q` clears the factor from the cell side of the
        membrane (permeability-surface product :math:`PS`) at
        :math:`C = Q (1 - e^{-PS/Q})`; the effluent (filtrate) flow :math:`Q_e` carries the
        rest away, so the fraction is :math:`C / (C + Q_e)`: it rises with blood flow and
        saturates at :math:`PS / (PS + Q_e)`.
        """
        q = r.cartridge_blood_flow_ml_per_h
        clearance = q * -jnp.expm1(-r.cartridge_permeability_surface_ml_per_h / q)
        return clearance / (clearance + r.cartridge_effluent_flow_ml_per_h)

    def _depot_flows(self, tr: Transport, x: State) -> dict:
        """Flows of the local sites: death in place (dead cells join the site's
        compartment, or leave the body from a cartridge), exit to venous blood (IM, SC,
        IP, wound: lymph/blood leakage, then the lung) or from a hydrogel/patch into the
        wound bed, and the donor cells' secreted factor."""
        r = tr.rates
        death = self.depot_death_rates(r, x, tr.alloimmune)  # (D,)
        leave = r.depot_exit_rate_per_h  # (D,)
        leak = r.label_leak_rate_per_h
        dv, dl = x.depot_viable, x.depot_label  # (S, D)
        exit_v, exit_l = leave[None, :] * dv, leave[None, :] * dl
        to_blood = exit_v @ _EXIT_TO_BLOOD  # (S,)
        to_blood_l = exit_l @ _EXIT_TO_BLOOD
        to_wound = exit_v @ _EXIT_TO_WOUND  # (S,)
        to_wound_l = exit_l @ _EXIT_TO_WOUND
        wound = jnp.zeros(N_DEPOTS).at[_WOUND].set(1.0)
        dying = death[None, :] * dv  # (S, D)
        dying_l = death[None, :] * dl
        secretion = r.secretion_rate_ng_per_cell_h * (
            x.viable.sum() + dv.sum(0) @ (1.0 - _OUTSIDE + _OUTSIDE * self.cartridge_transfer(r))
        )
        return dict(
            depot_viable=-(death + leave)[None, :] * dv + to_wound[:, None] * wound[None, :],
            depot_label=-(death + leave + leak)[None, :] * dl + to_wound_l[:, None] * wound[None, :],
            viable=to_blood[:, None] * tr.cells.pool,
            label_viable=to_blood_l[:, None] * tr.label.pool,
            dead=_DEPOT_TO_C @ dying.sum(0),
            label_dead=_DEPOT_TO_C @ dying_l.sum(0),
            extracorporeal_removed=dying.sum(0) @ _OUTSIDE,
            label_eliminated=dying_l.sum(0) @ _OUTSIDE + leak * dl.sum(),
            secreted_factor=secretion / tr.plasma_ml
            - r.secreted_factor_clearance_rate_per_h * x.secreted_factor,
        )

    def _signals(self, r: KineticParameters, x: State, strength) -> dict:
        """Right-hand side of TAT and of the alloimmune effector and memory levels."""
        zero = jnp.zeros(())
        out = dict(
            tat=-r.tat_clearance_rate_per_h * x.tat,
            immune_effector=zero,
            immune_memory=zero,
            device_retained=zero,
            inflammation_relief=zero,
        )
        if self._inflamed:
            # IL-10 from phagocytes that engulfed donor cells resolves the injured
            # tissue's inflammation; without it the injury re-inflames.
            signal = x.il10 / (x.il10 + r.il10_half_effect_pg_per_ml)
            rel = x.inflammation_relief
            out["inflammation_relief"] = (
                r.inflammation_resolution_rate_per_h * signal * (1.0 - rel)
                - r.inflammation_relapse_rate_per_h * rel
            )
        if strength is not None:
            donor_cells = (
                x.viable.sum()
                + x.dead.sum()
                + x.engulfed.sum()
                + x.lung_resident_engulfed
                + x.depot_viable.sum(0) @ (1.0 - _OUTSIDE)
            )
            half = r.antigen_half_cells_per_g * self.species.body_weight_g
            antigen = donor_cells / (donor_cells + half)
            z, m = x.immune_effector, x.immune_memory
            # More immunomodulatory products (potency > 1) damp the activation.
            activation = (
                r.alloimmune_activation_rate_per_h
                * (1.0 + r.alloimmune_memory_boost * m)
                / self.product.potency
            )
            out["immune_effector"] = activation * antigen * (1.0 - z) - r.alloimmune_decay_rate_per_h * z
            out["immune_memory"] = r.alloimmune_memory_rate_per_h * z * (1.0 - m)
        return out

    @property
    def _inflamed(self) -> bool:
        """Static: whether local inflammation is modelled (injury mechanism on and an
        injured organ named)."""
        return self.mechanisms.injury_homing and self.host.injury_organ is not None

    def inflammation(self, relief) -> Float[Array, "... O"]:
        """Local inflammation index per organ: the injury level, less the part resolved
        (``relief`` in [0, 1], the ``inflammation_relief`` state)."""
        mask = self.host.injury_mask() if self._inflamed else jnp.zeros(len(ORGANS))
        return mask * (1.0 - jnp.asarray(relief)[..., None])

    def _migration(self, r: KineticParameters) -> Float[Array, "C C"]:
        """Generator moving phagocyte contents out of the lung to liver and spleen."""
        rate, f = r.phagocyte_migration_rate_per_h, r.blood_debris_to_liver_fraction
        lung = N_BLOOD + ORGANS.index("lung")
        out = jnp.zeros(N_COMPARTMENTS).at[N_BLOOD + _LIVER].set(f).at[N_BLOOD + _SPLEEN].add(1.0 - f)
        out = out.at[lung].add(-1.0)
        return rate * jnp.zeros((N_COMPARTMENTS, N_COMPARTMENTS)).at[:, lung].set(out)

    def linear_matrix(self) -> Float[Array, "n n"]:
        """The system matrix ``A`` with ``dy/dt = A y`` (exact when every saturable term
        is off, e.g. ``mechanisms=Mechanisms.none()``; otherwise the Jacobian at 0)."""
        tr = self.transport()
        return jax.jacfwd(lambda y: self.vector_field_from(tr, y))(jnp.zeros(self.n_states))

    # ----------------------------------------------------------------- doses
    def _arrival(self, fates: Circulation, extraction, entry):
        """Eventual organ ``(S, O)`` and blood-loss ``(S,)`` of cells entering at ``entry``.

        ``entry`` is a distribution over compartments: ``blood`` means venous blood;
        an organ means delivery into that organ's arterial inlet (its microvessels are
        met first, then its outflow).
        """
        inlet = entry[N_BLOOD:]  # (O,)
        e = extraction  # (S, O)
        direct = inlet[None, :] * e  # arrested in the entered organ
        escaped = inlet[None, :] * (1.0 - e)  # (S, O) leaving the entered organ
        via_portal = jnp.sum(escaped * _PORTAL[None, :], axis=1)  # reaching the liver inlet
        e_liver = e[:, _LIVER]
        direct = direct.at[:, _LIVER].add(via_portal * e_liver)
        to_pool = (
            entry[BLOOD] + jnp.sum(escaped * (1.0 - _PORTAL[None, :]), axis=1) + via_portal * (1.0 - e_liver)
        )
        return direct + to_pool[:, None] * fates.pool, to_pool * fates.pool_dead, to_pool

    def cryo_injury(self) -> Float[Array, ""]:
        """The product's cryo-injury index (0 with the preparation mechanism off)."""
        if not self.mechanisms.preparation:
            return jnp.zeros(())
        return self.product.cryo_injury(self.parameters.cryo_recovery_time_h)

    def stasis(self, dose) -> Float[Array, ""]:
        """Venous stasis met by a dose: the host's jugular stasis for a central or
        jugular line, 0 for a peripheral vein."""
        return self.host.jugular_stasis * dose.central_line

    def procoagulant_activity(self, stasis=0.0) -> Float[Array, ""]:
        """Procoagulant (IBMIR-driving) activity of the product in this host.

        ``ln(1 + TF+/TF_ref)`` (clotting time falls with log TF, George et al. 2020),
        times the cryo-injury factor (phosphatidylserine exposure after thawing), times
        the microgravity coagulation multiplier, times ``1 + (m - 1) * stasis`` for
        venous stasis at the infusion site (``stasis`` in [0, 1], :meth:`stasis`), divided
        by ``1 + heparin/heparin_half``.
        """
        p = self.parameters
        activity = jnp.log1p(self.product.tf_positive_fraction / p.tf_reference_fraction)
        activity = activity * (1.0 + (p.cryo_death_multiplier - 1.0) * self.cryo_injury())
        activity = activity * jnp.where(
            self.host.microgravity > 0.5, p.microgravity_coagulation_multiplier, 1.0
        )
        activity = activity * (1.0 + (p.stasis_coagulation_multiplier - 1.0) * stasis)
        return activity / (1.0 + self.host.heparin_iu_per_kg / p.heparin_half_iu_per_kg)

    def ibmir_kill_fraction(self, concentration_cells_per_ml, stasis=0.0) -> Float[Array, ""]:
        """Fraction of viable cells entering venous blood destroyed by IBMIR.

        Saturating in activity and consumption-limited in the concentration of incoming
        cells (cells per mL of blood passing the injection site).
        """
        if not self.mechanisms.ibmir:
            return jnp.zeros(())
        p = self.parameters
        a = self.procoagulant_activity(stasis)
        saturation = 1.0 / (1.0 + concentration_cells_per_ml / p.ibmir_saturation_cells_per_ml)
        return p.ibmir_max_kill_fraction * a / (a + p.ibmir_half_activity) * saturation

    def entry_concentration(self, cells, duration_h) -> Float[Array, ""]:
        """Incoming cells per mL of blood: a bolus mixes into blood volume, an infusion
        into the cardiac output passing by."""
        bolus = cells / self.blood_volume_ml()
        rate = cells / jnp.where(duration_h > 0, duration_h, 1.0)
        return jnp.where(duration_h > 0, rate / self.cardiac_output_ml_per_h(), bolus)

    def alloimmune_response(self, p: KineticParameters):
        """Relative strength of the anti-donor immune response, before the product's
        cryo-injury raises the lysis of its cells: donor mismatch factor times host factor
        times ``1 - immunosuppression`` (static ``None`` when there is none)."""
        if not self.mechanisms.alloimmunity:
            return None
        donor = self.product.donor
        status = self.host.immune_status
        if donor in ("autologous", "syngeneic") or status == "nsg":
            return None
        mismatch = p.hla_matched_response_fraction if donor == "hla_matched" else 1.0
        host = p.athymic_response_fraction if status == "athymic" else 1.0
        return mismatch * host * (1.0 - self.host.immunosuppression)

    def alloimmune_strength(self, p: KineticParameters):
        """Relative strength of the anti-donor response (static zero when none): the
        :meth:`alloimmune_response` times the cryo-injury's lysis factor."""
        response = self.alloimmune_response(p)
        if response is None:
            return None
        return response * (1.0 + (p.cryo_death_multiplier - 1.0) * self.cryo_injury())

    def device_profile(
        self, duration_h, depth_mm, elapsed_h=0.0, device_cells_per_ml=0.0
    ) -> tuple[Float[Array, " S"], Float[Array, " S"]]:
        r"""Fractions of each diameter class pumped out of a syringe or bag over the
        interval ``[elapsed_h, elapsed_h + duration_h]`` of an infusion that arrive as
        single cells and as aggregates (the rest stays in the device).

        *Settling.* Cells settle through the suspension depth :math:`H` at the Stokes
        velocity :math:`v = \Delta\rho\, g\, d^2 / (18 \mu)`; at time :math:`\tau` the
        part of the depth still holding suspended cells is :math:`s(\tau) = \max(0, 1 -
        v\tau/H)`, averaged over the interval. Settled cells form a sediment; a share
        ``device_retention_fraction`` stays behind and the rest is pushed out as clumps.

        *Aggregation.* Suspended cells aggregate by Brownian collision (Smoluchowski,
        constant kernel :math:`K = 8 k_B T / (3\mu)`): the fraction still single at
        :math:`\tau` is :math:`1/(1 + \beta\tau)^2` with :math:`\beta = K c_0 / 2`, whose
        interval mean is :math:`1/((1+\beta a)(1+\beta b))`. Sediment clumps and Brownian
        clusters are both delivered as aggregates (diameter ``aggregate_diameter_ratio``
        times the cell's), which are trapped like large cells (:meth:`dose_vector`).

        In microgravity nothing settles and only Brownian aggregation remains. Without a
        device (``depth_mm = 0``) or for a bolus every cell arrives single.
        """
        p = self.parameters
        diameters, _ = self.size_classes()
        g = jnp.where(self.host.microgravity > 0.5, 0.0, 9.81)
        has_device = (depth_mm > 0) & (duration_h > 0)
        delta_rho = (p.cell_density_g_per_ml - p.medium_density_g_per_ml) * 1000.0  # kg/m3
        mu = p.medium_viscosity_mpa_s * 1e-3  # Pa s
        velocity_mm_h = delta_rho * g * (diameters * 1e-6) ** 2 / (18.0 * mu) * 1000.0 * 3600.0
        depth = jnp.where(depth_mm > 0, depth_mm, 1.0)
        ua = jnp.maximum(velocity_mm_h * elapsed_h / depth, 0.0)
        ub = jnp.maximum(velocity_mm_h * (elapsed_h + duration_h) / depth, 0.0)

        def settled_integral(u):  # integral of max(0, 1 - u) from 0 to u
            return jnp.where(u <= 1.0, u - 0.5 * u**2, 0.5)

        width = ub - ua
        safe = jnp.where(width > 0, width, 1.0)
        suspended = jnp.where(
            width > 0, (settled_integral(ub) - settled_integral(ua)) / safe, jnp.clip(1.0 - ua, 0.0, 1.0)
        )
        kernel_ml_h = 8.0 * BOLTZMANN_J_PER_K * DEVICE_TEMPERATURE_K / (3.0 * mu) * 1e6 * 3600.0
        beta = 0.5 * kernel_ml_h * device_cells_per_ml
        single = 1.0 / ((1.0 + beta * elapsed_h) * (1.0 + beta * (elapsed_h + duration_h)))
        singles = suspended * single
        aggregates = suspended * (1.0 - single) + (1.0 - suspended) * (1.0 - p.device_retention_fraction)
        ones = jnp.ones_like(diameters)
        return jnp.where(has_device, singles, ones), jnp.where(has_device, aggregates, 0.0 * ones)

    def device_delivery(
        self, duration_h, depth_mm, elapsed_h=0.0, device_cells_per_ml=0.0
    ) -> Float[Array, " S"]:
        """Fraction of each diameter class delivered (single or aggregated); see
        :meth:`device_profile`."""
        singles, aggregates = self.device_profile(duration_h, depth_mm, elapsed_h, device_cells_per_ml)
        return singles + aggregates

    def aggregate_extraction(self) -> Float[Array, "S O"]:
        """Per-pass arrest probability of aggregates of each diameter class."""
        p = self.parameters
        diameters, _ = self.size_classes()
        size_part = size_extraction(
            diameters * p.aggregate_diameter_ratio,
            self.species.capillary_diameter_um,
            p.critical_diameter_ratio,
            p.arrest_steepness,
        )
        return first_pass_extraction(size_part, self._adhesion())

    def embolic_risk(self, dose) -> Float[Array, ""]:
        r"""Embolic-risk index of one dose row: the peak number of microvessels of the
        first bed the cells meet (the target bed for intra-arterial entry, the lung for
        venous entry) occluded by arrested cells and aggregates, relative to the bed's
        microvessel count.

        Each particle arrested on first pass (probability :math:`E`) occludes
        :math:`(d_p/d_{cap})^2` capillary cross-sections (aggregates of
        :math:`n_a = 0.64\, r^3` cells have diameter :math:`d_p = r d`); dead cells occlude
        as well as living ones. The bed has :math:`Q_{bed}/q_{cap}` microvessels
        (``capillary_flow_ml_per_h``). Occlusions resolve at ``embolus_resolution_rate_per_h``
        (:math:`k`), so an infusion over :math:`T` reaches
        :math:`(1 - e^{-kT})/(kT)` of a bolus's peak. Monotone in dose and cell size,
        falls with infusion time. A relative index (> 1: more occluding cross-section
        than the bed has capillaries), not calibrated to stroke incidence. Zero for doses
        that do not enter blood or an arterial bed.
        """
        p = self.parameters
        tr = self.transport()
        diameters, nominal = self.size_classes()
        singles, aggregates = self.device_profile(
            dose.duration_h, dose.device_depth_mm, dose.device_elapsed_h, dose.device_cells_per_ml
        )
        cap = self.species.capillary_diameter_um  # (O,)
        ratio = p.aggregate_diameter_ratio
        per_aggregate = 0.64 * ratio**3
        occlusion = (
            (nominal * singles)[:, None] * tr.extraction * (diameters[:, None] / cap[None, :]) ** 2
            + (nominal * aggregates / per_aggregate)[:, None]
            * tr.aggregate_extraction
            * (ratio * diameters[:, None] / cap[None, :]) ** 2
        ).sum(0)  # (O,) occluded microvessels per administered cell, if it enters organ o
        flow = self.cardiac_output_ml_per_h() * self.species.arterial_supply_fraction
        lung = ORGANS.index("lung")
        flow = flow.at[lung].set(self.cardiac_output_ml_per_h())
        per_vessel = occlusion / (flow / p.capillary_flow_ml_per_h)  # (O,)
        entry = dose.entry_distribution
        bed = entry[N_BLOOD:] + entry[BLOOD] * jnp.zeros(len(ORGANS)).at[lung].set(1.0)
        kT = p.embolus_resolution_rate_per_h * dose.duration_h
        safe = jnp.where(kT > 0, kT, 1.0)
        spread = jnp.where(kT > 0, -jnp.expm1(-safe) / safe, 1.0)
        return dose.cells * spread * jnp.sum(bed * per_vessel)

    def dose_vector(self, dose) -> Float[Array, " n"]:
        """State increment per administered cell of one dose row (a
        :class:`~mscpk.dosing.regimen.DoseTable` with scalar fields, e.g. from
        ``jax.vmap`` over a table).

        Viable cells split over diameter classes by quadrature weight and are placed at
        their quasi-steady fate, single cells and device aggregates (:meth:`device_profile`)
        each with their own first-pass arrest; the non-viable fraction enters as dead
        cells (in blood for intravascular entry). Each cell carries one unit of label and
        of DNA. Cells left in the device go to ``device_retained``.
        """
        tr = self.transport()
        entry_distribution = dose.entry_distribution
        w_single, w_agg, kill, surviving = self._entering(dose)
        delivered = jnp.sum(w_single + w_agg)
        v = self.product.viability
        killed = kill * entry_distribution[BLOOD]
        thrombus = self.parameters.ibmir_thrombus_fraction
        lung_c = N_BLOOD + ORGANS.index("lung")
        ibmir_dead = (
            v
            * delivered
            * killed
            * jnp.zeros(N_COMPARTMENTS).at[lung_c].set(thrombus).at[BLOOD].add(1.0 - thrombus)
        )
        organs, blood_dead, _ = self._arrival(tr.cells, tr.extraction, surviving)
        organs_l, blood_lost_l, _ = self._arrival(tr.label, tr.extraction, surviving)
        organs_a, blood_dead_a, _ = self._arrival(tr.aggregates, tr.aggregate_extraction, surviving)
        organs_al, blood_lost_al, _ = self._arrival(tr.aggregates_label, tr.aggregate_extraction, surviving)
        ws, wa = v * w_single, v * w_agg  # (S,)
        viable = ws[:, None] * organs + wa[:, None] * organs_a
        label_viable = ws[:, None] * organs_l + wa[:, None] * organs_al
        died_in_blood = jnp.sum(ws * blood_dead + wa * blood_dead_a)
        lost_l = jnp.sum(ws * blood_lost_l + wa * blood_lost_al)
        # Dead on entry (non-viable cells, IBMIR victims; local routes: at their site),
        # each with its label; living cells at a local site stay there.
        depot = dose.depot_entry  # (D,)
        depot_viable = v * (w_single + w_agg)[:, None] * depot[None, :]
        depot_dead = (1.0 - v) * delivered * depot
        dead_on_entry = (1.0 - v) * delivered * entry_distribution + ibmir_dead + _DEPOT_TO_C @ depot_dead
        dead = dead_on_entry.at[BLOOD].add(died_in_blood)
        label_dead = dead_on_entry.at[BLOOD].add(lost_l * tr.label_dead_share)
        outside = depot_dead @ _OUTSIDE
        plasma_ml = self.plasma_volume_ml()
        tat = self.parameters.tat_yield_ng_per_cell * v * delivered * killed / plasma_ml
        zero_c, zero = jnp.zeros(N_COMPARTMENTS), jnp.zeros(())
        return pack(
            State(
                viable=viable,
                label_viable=label_viable,
                depot_viable=depot_viable,
                depot_label=depot_viable,
                dead=dead,
                dna_residual=zero_c,
                label_dead=label_dead,
                label_residual=zero_c,
                engulfed=zero_c,
                label_engulfed=zero_c,
                cells_cleared=zero,
                dna_degraded=zero,
                label_eliminated=lost_l * (1.0 - tr.label_dead_share) + outside,
                il10=zero,
                tat=tat,
                immune_effector=zero,
                immune_memory=zero,
                device_retained=1.0 - delivered,
                inflammation_relief=zero,
                extracorporeal_removed=outside,
                secreted_factor=zero,
                lung_resident_engulfed=zero,
                lung_resident_label_engulfed=zero,
                lung_resident_dna=zero,
                lung_resident_label=zero,
            )
        )

    def blood_input_per_cell(self, dose) -> Float[Array, " S"]:
        """Viable cells per administered cell of one dose row that reach venous blood,
        per class.

        Device aggregates are counted as cells; they circulate for seconds before
        arrest and :meth:`observe` gives them the single-cell blood residence (an
        overestimate of circulating cells during such an infusion only).
        """
        tr = self.transport()
        w_single, w_agg, _, surviving = self._entering(dose)
        _, _, to_pool = self._arrival(tr.cells, tr.extraction, surviving)
        _, _, to_pool_a = self._arrival(tr.aggregates, tr.aggregate_extraction, surviving)
        return self.product.viability * (w_single * to_pool + w_agg * to_pool_a)

    def _entering(self, dose):
        """Per administered cell of a dose row: delivered single cells and aggregates per
        diameter class (:meth:`device_profile`), the IBMIR kill fraction and the entry
        distribution of the surviving cells. IBMIR destroys part of the viable cells
        entering venous blood, at the concentration actually delivered from the device."""
        _, nominal = self.size_classes()
        singles, aggregates = self.device_profile(
            dose.duration_h, dose.device_depth_mm, dose.device_elapsed_h, dose.device_cells_per_ml
        )
        w_single, w_agg = nominal * singles, nominal * aggregates
        concentration = self.entry_concentration(dose.cells, dose.duration_h)
        kill = self.ibmir_kill_fraction(concentration * jnp.sum(w_single + w_agg), self.stasis(dose))
        surviving = dose.entry_distribution.at[BLOOD].multiply(1.0 - kill)
        return w_single, w_agg, kill, surviving

    # ----------------------------------------------------------------- observation
    def observe(self, y: Float[Array, "... n"], blood_input: Float[Array, "... S"]) -> Observed:
        """Per-compartment pools, with quasi-steady circulating viable cells in ``blood``.

        ``blood_input`` is the rate (cells/h) of administered viable cells entering venous
        blood at the same times (non-zero during infusions).
        """
        x = unpack_batch(y, self.n_size_classes)
        tr = self.transport()
        r = tr.rates
        released = r.release_rate_per_h * x.viable  # (..., S, O)
        released_l = r.release_rate_per_h * x.label_viable
        leave = r.depot_exit_rate_per_h * _EXIT_TO_BLOOD  # (D,) local sites draining to blood
        into_blood = (
            blood_input
            + jnp.sum(tr.cells.release_to_pool * released, -1)
            + jnp.sum(leave * x.depot_viable, -1)
        )  # (..., S)
        into_blood_l = (
            blood_input
            + jnp.sum(tr.label.release_to_pool * released_l, -1)
            + jnp.sum(leave * x.depot_label, -1)
        )
        blood = jnp.sum(into_blood / (tr.cells.out_rate + r.blood_death_rate_per_h), -1)
        blood_l = jnp.sum(
            into_blood_l / (tr.label.out_rate + r.blood_death_rate_per_h + r.label_leak_rate_per_h), -1
        )
        # Cells at local sites count in the compartment the site lies in (not a cartridge).
        viable = (
            jnp.concatenate([blood[..., None], x.viable.sum(-2)], -1) + x.depot_viable.sum(-2) @ _DEPOT_TO_C.T
        )
        label_viable = (
            jnp.concatenate([blood_l[..., None], x.label_viable.sum(-2)], -1)
            + x.depot_label.sum(-2) @ _DEPOT_TO_C.T
        )
        # Fast pools: the state holds the dose-driven part; add the quasi-steady part.
        died, lost_l = self._blood_debris_inputs(tr, x)
        k_fast = self.fast_rates(tr)
        dead = x.dead.at[..., BLOOD].add(died / k_fast[0])
        label_dead = x.label_dead.at[..., BLOOD].add(lost_l * tr.label_dead_share / k_fast[1])
        # Lung phagocytes: migratory (compartment pools) plus resident (lung scalars).
        return Observed(
            viable,
            label_viable,
            dead,
            x.dna_residual.at[..., _LUNG_C].add(x.lung_resident_dna),
            label_dead,
            x.label_residual.at[..., _LUNG_C].add(x.lung_resident_label),
            x.engulfed.at[..., _LUNG_C].add(x.lung_resident_engulfed),
            x.label_engulfed.at[..., _LUNG_C].add(x.lung_resident_label_engulfed),
            x.label_eliminated,
            x.il10,
            x.tat,
            self.inflammation(x.inflammation_relief),
            x.secreted_factor,
            x.depot_viable.sum(-2),
        )

    # ----------------------------------------------------------------- invariants
    def totals(self, y: Float[Array, "... n"]) -> dict[str, Float[Array, "..."]]:
        """Conserved totals of a state (or batch of states): cells, DNA, label."""
        x = unpack_batch(y, self.n_size_classes)
        viable = x.viable.sum((-1, -2)) + x.depot_viable.sum((-1, -2))
        dead, engulfed = x.dead.sum(-1), x.engulfed.sum(-1) + x.lung_resident_engulfed
        outside = x.device_retained + x.extracorporeal_removed
        cells = viable + dead + engulfed + x.cells_cleared + outside
        residual_dna = x.dna_residual.sum(-1) + x.lung_resident_dna
        dna = viable + dead + engulfed + residual_dna + x.dna_degraded + outside
        label = (
            x.label_viable.sum((-1, -2))
            + x.depot_label.sum((-1, -2))
            + x.label_dead.sum(-1)
            + x.label_engulfed.sum(-1)
            + x.label_residual.sum(-1)
            + x.lung_resident_label_engulfed
            + x.lung_resident_label
            + x.label_eliminated
            + x.device_retained
        )
        return {"cells": cells, "dna": dna, "label": label}


def unpack_batch(y: Float[Array, "... n"], n_size_classes: int) -> State:
    """:func:`~mscpk.model.layout.unpack` over leading batch dimensions."""
    if y.ndim == 1:
        return unpack(y, n_size_classes)
    flat = y.reshape(-1, y.shape[-1])
    parts = jax.vmap(lambda v: unpack(v, n_size_classes))(flat)
    return jax.tree_util.tree_map(lambda a: a.reshape(y.shape[:-1] + a.shape[1:]), parts)
