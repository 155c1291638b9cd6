"""The model's right-hand side written in NumPy, solved with SciPy: what a user would
otherwise write by hand, and the baseline of ``speedup_vs_scipy_lsoda``.

:func:`numpy_field` is a line-by-line port of :meth:`mscpk.Model.vector_field_from`
(with :meth:`~mscpk.Model._depot_flows`, :meth:`~mscpk.Model._signals` and the
fast-pool closed form of :func:`mscpk.solve.segments.solve`), so SciPy integrates the
same equations mscpk does. Only the state-independent :meth:`~mscpk.Model.transport`
quantities (flow partitions, species-scaled rates) are computed once by mscpk and handed
over as NumPy arrays, as a user would tabulate them before a solve.
``tests/test_scipy_reference.py`` checks the port against the JAX right-hand side.

:func:`solve_scipy` handles regimens whose doses are all boluses at time 0 (the
benchmark's IV bolus); tolerances are mscpk's (``rtol``, ``atol`` x total dose), though
SciPy measures the error in an RMS norm where mscpk takes the maximum over states.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy.integrate import solve_ivp

from mscpk.model import model as _m
from mscpk.model.layout import BLOOD, N_BLOOD, N_COMPARTMENTS, ORGANS, fast_slots, unpack
from mscpk.solve.segments import SolverConfig, event_schedule

_OUTSIDE = np.asarray(_m._OUTSIDE)
_EXIT_TO_BLOOD = np.asarray(_m._EXIT_TO_BLOOD)
_EXIT_TO_WOUND = np.asarray(_m._EXIT_TO_WOUND)
_DEPOT_TO_C = np.asarray(_m._DEPOT_TO_C)
_DEPOT_TO_ORGAN = np.asarray(_m._DEPOT_TO_ORGAN)
_WOUND = _m._WOUND


def numpy_transport(model) -> dict:
    """``model.transport()`` and the static switches the right-hand side needs, as NumPy."""
    transport = model.transport()
    tr = jax.tree_util.tree_map(np.asarray, transport)
    return {
        "tr": tr,
        "n_size_classes": model.n_size_classes,
        "efferocytosis": bool(model.mechanisms.efferocytosis),
        "inflamed": bool(model._inflamed),
        "injury_mask": np.asarray(model.host.injury_mask()) if model._inflamed else None,
        "potency": float(model.product.potency),
        "body_weight_g": float(model.species.body_weight_g),
        "cartridge_transfer": float(model.cartridge_transfer(transport.rates)),
        "k_fast": np.asarray(model.fast_rates(transport)),
        "fast_slots": np.asarray(fast_slots(model.n_size_classes)),
    }


def numpy_field(p: dict, y: np.ndarray, fast: np.ndarray | None = None) -> np.ndarray:
    """``dy/dt`` (cells/h) in NumPy; same meaning as ``Model.vector_field_from(tr, y, fast)``."""
    tr = p["tr"]
    r = tr.rates
    s = p["n_size_classes"]
    x = unpack(y, s)
    viable, label_viable = x.viable, x.label_viable
    dv, dl = x.depot_viable, x.depot_label
    strength = tr.alloimmune
    death = tr.death
    if strength is not None:
        death = death + r.alloimmune_kill_rate_per_h * strength * x.immune_effector
    inflammation = p["injury_mask"] * (1.0 - x.inflammation_relief) if p["inflamed"] else None
    if inflammation is not None:
        death = death * (1.0 + r.inflammation_death_factor * inflammation)
    leak = r.label_leak_rate_per_h
    released = r.release_rate_per_h[None, :] * viable
    released_l = r.release_rate_per_h[None, :] * label_viable
    # state-driven inputs of dead cells and label into blood (Model._blood_debris_inputs)
    to_blood_q = np.sum(r.depot_exit_rate_per_h * _EXIT_TO_BLOOD * dv, -1)
    to_blood_lq = np.sum(r.depot_exit_rate_per_h * _EXIT_TO_BLOOD * dl, -1)
    died_in_blood = np.sum(tr.cells.release_dead * released) + np.sum(to_blood_q * tr.cells.pool_dead)
    label_lost = np.sum(tr.label.release_dead * released_l) + np.sum(to_blood_lq * tr.label.pool_dead)
    k_fast = p["k_fast"]
    a = np.array([x.dead[BLOOD], x.label_dead[BLOOD], x.tat]) if fast is None else fast
    dead = x.dead.copy()
    label_dead = x.label_dead.copy()
    dead[BLOOD] = a[0] + died_in_blood / k_fast[0]
    label_dead[BLOOD] = a[1] + label_lost * tr.label_dead_share / k_fast[1]
    tat = a[2]
    # local sites (Model._depot_flows)
    d_death = r.depot_death_rate_per_h
    inside = 1.0 - _OUTSIDE
    if strength is not None:
        d_death = d_death + r.alloimmune_kill_rate_per_h * strength * x.immune_effector * inside
    if inflammation is not None:
        d_death = d_death * (1.0 + r.inflammation_death_factor * (_DEPOT_TO_ORGAN @ inflammation))
    leave = r.depot_exit_rate_per_h
    exit_v, exit_l = leave[None, :] * dv, leave[None, :] * dl
    to_blood, to_blood_l = exit_v @ _EXIT_TO_BLOOD, exit_l @ _EXIT_TO_BLOOD
    to_wound, to_wound_l = exit_v @ _EXIT_TO_WOUND, exit_l @ _EXIT_TO_WOUND
    wound = np.zeros(len(_OUTSIDE))
    wound[_WOUND] = 1.0
    dying, dying_l = d_death[None, :] * dv, d_death[None, :] * dl
    secretion = r.secretion_rate_ng_per_cell_h * (
        viable.sum() + dv.sum(0) @ (1.0 - _OUTSIDE + _OUTSIDE * p["cartridge_transfer"])
    )
    dp_dead = _DEPOT_TO_C @ dying.sum(0)
    dp_label_dead = _DEPOT_TO_C @ dying_l.sum(0)
    dead_in = np.concatenate([[died_in_blood], death * viable.sum(0)]) + dp_dead
    label_dead_in = (
        np.concatenate([[label_lost * tr.label_dead_share], death * label_viable.sum(0)]) + dp_label_dead
    )
    # signals (Model._signals)
    d_relief = d_effector = d_memory = 0.0
    if inflammation is not None:
        signal = x.il10 / (x.il10 + r.il10_half_effect_pg_per_ml)
        rel = x.inflammation_relief
        d_relief = (
            r.inflammation_resolution_rate_per_h * signal * (1.0 - rel)
            - r.inflammation_relapse_rate_per_h * rel
        )
    if strength is not None:
        donor = (
            viable.sum()
            + dead.sum()
            + x.engulfed.sum()
            + x.lung_resident_engulfed
            + dv.sum(0) @ (1.0 - _OUTSIDE)
        )
        antigen = donor / (donor + r.antigen_half_cells_per_g * p["body_weight_g"])
        z, m = x.immune_effector, x.immune_memory
        activation = r.alloimmune_activation_rate_per_h * (1.0 + r.alloimmune_memory_boost * m) / p["potency"]
        d_effector = activation * antigen * (1.0 - z) - r.alloimmune_decay_rate_per_h * z
        d_memory = r.alloimmune_memory_rate_per_h * z * (1.0 - m)
    d_viable = (
        np.einsum("sij,sj->si", tr.cells.release, released)
        - released
        - death[None, :] * viable
        + to_blood[:, None] * tr.cells.pool
    )
    d_label_viable = (
        np.einsum("sij,sj->si", tr.label.release, released_l)
        - released_l
        - (death + leak)[None, :] * label_viable
        + to_blood_l[:, None] * tr.label.pool
    )
    d_depot_viable = -(d_death + leave)[None, :] * dv + to_wound[:, None] * wound[None, :]
    d_depot_label = -(d_death + leave + leak)[None, :] * dl + to_wound_l[:, None] * wound[None, :]
    label_eliminated = (
        leak * (label_viable.sum() + label_dead.sum())
        + r.label_residual_loss_rate_per_h * (x.label_residual.sum() + x.lung_resident_label)
        + label_lost * (1.0 - tr.label_dead_share)
        + dying_l.sum(0) @ _OUTSIDE
        + leak * dl.sum()
    )
    clear, dest, migrate = tr.clear, tr.dest, tr.migrate
    if p["efferocytosis"]:
        per_cell = clear / (1.0 + dead / tr.capacity)
        engulf, label_engulf = per_cell * dead, per_cell * label_dead
        digested = r.digestion_rate_per_h * x.engulfed
        label_digested = r.digestion_rate_per_h * x.label_engulfed
        # Lung-resident macrophages take a share of the lung's engulfment and keep it.
        lung = N_BLOOD + ORGANS.index("lung")
        f_res = r.lung_resident_engulfment_fraction
        res_in, res_label_in = f_res * engulf[lung], f_res * label_engulf[lung]
        res_dig = r.digestion_rate_per_h * x.lung_resident_engulfed
        res_label_dig = r.digestion_rate_per_h * x.lung_resident_label_engulfed
        engulf_m, label_engulf_m = engulf.copy(), label_engulf.copy()
        engulf_m[lung] -= res_in
        label_engulf_m[lung] -= res_label_in
        d_resident = [
            res_in - res_dig,
            res_label_in - res_label_dig,
            res_dig - r.dna_degradation_rate_per_h * x.lung_resident_dna,
            res_label_dig - r.label_residual_loss_rate_per_h * x.lung_resident_label,
        ]
        d_dead = dead_in - engulf
        d_dna = digested - r.dna_degradation_rate_per_h * x.dna_residual + migrate @ x.dna_residual
        d_label_dead = label_dead_in - label_engulf - leak * label_dead
        d_label_residual = (
            label_digested - r.label_residual_loss_rate_per_h * x.label_residual + migrate @ x.label_residual
        )
        d_engulfed = dest @ engulf_m - digested + migrate @ x.engulfed
        d_label_engulfed = dest @ label_engulf_m - label_digested + migrate @ x.label_engulfed
        d_cleared = digested.sum() + res_dig
        d_il10 = r.il10_yield_pg_per_cell * engulf.sum() / tr.plasma_ml - r.il10_clearance_rate_per_h * x.il10
    else:
        cleared, label_cleared = clear * dead, clear * label_dead
        d_dead = dead_in - cleared
        d_dna = dest @ cleared - r.dna_degradation_rate_per_h * x.dna_residual
        d_label_dead = label_dead_in - label_cleared - leak * label_dead
        d_label_residual = dest @ label_cleared - r.label_residual_loss_rate_per_h * x.label_residual
        d_engulfed = d_label_engulfed = np.zeros(N_COMPARTMENTS)
        d_cleared = cleared.sum()
        d_il10 = 0.0
        d_resident = [0.0, 0.0, 0.0, 0.0]
    scalars = np.array(
        [
            d_cleared,
            r.dna_degradation_rate_per_h * (x.dna_residual.sum() + x.lung_resident_dna),
            label_eliminated,
            d_il10,
            -r.tat_clearance_rate_per_h * tat,
            d_effector,
            d_memory,
            0.0,  # device_retained
            d_relief,
            dying.sum(0) @ _OUTSIDE,  # extracorporeal_removed
            secretion / tr.plasma_ml - r.secreted_factor_clearance_rate_per_h * x.secreted_factor,
            *d_resident,
        ]
    )
    return np.concatenate(
        [
            d_viable.ravel(),
            d_label_viable.ravel(),
            d_depot_viable.ravel(),
            d_depot_label.ravel(),
            d_dead,
            d_dna,
            d_label_dead,
            d_label_residual,
            d_engulfed,
            d_label_engulfed,
            scalars,
        ]
    )


def initial_state(model, table, t_end_h: float) -> np.ndarray:
    """State just after the doses at time 0 (every dose must be a bolus at time 0)."""
    if np.any(
        (np.asarray(table.cells) > 0) & ((np.asarray(table.time_h) != 0) | (np.asarray(table.duration_h) > 0))
    ):
        raise ValueError("regimen: the SciPy reference handles boluses at time 0 only")
    _, jumps, _, _ = event_schedule(table, model, jnp.asarray(t_end_h))
    return np.asarray(jumps).sum(0)


def solve_scipy(
    model,
    table,
    times_h,
    t_end_h: float,
    method: str = "LSODA",
    config: SolverConfig | None = None,
    slots=None,
):
    """Integrate the NumPy port from 0 to ``t_end_h``. Same fast-pool closed form as
    :func:`mscpk.solve.segments.solve`, same ``rtol`` and ``atol`` x dose.

    ``slots``: integrate only these state slots, as ``solve(..., slots=...)`` does (the
    others are held at zero; columns of ``ys`` outside ``slots`` are zero). With the slots
    of :func:`mscpk.population.output_slots` SciPy solves the same subsystem as
    ``simulate_population``'s default. The right-hand side is still the whole NumPy
    port, sliced: its cost per evaluation barely depends on the number of slots (NumPy's
    per-operation overhead dominates at this size), the number of evaluations does.

    Returns a dict: ``ys`` (states at ``times_h``, (T, n)), ``nfev`` (right-hand-side
    evaluations), ``success``, ``solve_s`` (wall time of ``solve_ivp`` alone: the
    transport set-up, done by mscpk's JAX code op by op, is not counted against SciPy)."""
    config = SolverConfig() if config is None else config
    p = numpy_transport(model)
    y0 = initial_state(model, table, t_end_h)
    fast_idx, k_fast = p["fast_slots"], p["k_fast"]
    a0 = y0[fast_idx]
    dose = max(float(np.sum(np.asarray(table.cells))), 1.0)
    idx = np.arange(y0.shape[0]) if slots is None else np.asarray(slots, dtype=int)
    full = np.zeros_like(y0)

    def rhs(t, y):
        if slots is None:
            return numpy_field(p, y, a0 * np.exp(-k_fast * t))
        full[idx] = y
        return numpy_field(p, full, a0 * np.exp(-k_fast * t))[idx]

    t0 = time.perf_counter()
    sol = solve_ivp(
        rhs,
        (0.0, float(t_end_h)),
        y0[idx],
        method=method,
        t_eval=np.asarray(times_h, dtype=float),
        rtol=config.rtol,
        atol=config.atol * dose,
    )
    elapsed = time.perf_counter() - t0
    ys = np.zeros((sol.y.shape[1], y0.shape[0]))
    ys[:, idx] = sol.y.T
    return {"ys": ys, "nfev": int(sol.nfev), "success": bool(sol.success), "solve_s": elapsed}
