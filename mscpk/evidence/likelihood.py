r"""log p(evidence | parameters): one jitted, differentiable function over all rows.

:class:`EvidenceLikelihood` turns a validated evidence table into arrays once: the
scenarios (one vmapped solve, :mod:`mscpk.evidence.scenarios`), and per row what is
predicted (assay kind, organ, normalisation, summary statistic, times) and how it is
compared (error model, bounds, extra uncertainty). Calling it with
:class:`~mscpk.KineticParameters` and :class:`~mscpk.observation.ObservationParameters`
returns the summed log-likelihood; :meth:`EvidenceLikelihood.terms` returns it per row
with the predictions.

**Predictions.** The signal of a row is its assay's view of the model (living cells,
donor DNA, radiolabel as % of injected activity, TAT, IL-10) in its organ, normalised
as its quantity says (% of dose, % of the whole body's, per g of organ). Summary
statistics are computed from the simulated curves: ratio to a baseline time, apparent
half-life :math:`\ln 2\,(t-t_0)/\ln(y(t_0)/y(t))`, ratio between two scenarios, ratio of
areas under the curves (trapezoid on a 33-point grid), time until the signal first falls
below the assay's detection limit (log-linear interpolation on a 48-point log grid), and
the first-pass arrest fraction of an arterial bed.

**Error model.** Log-normal with SD :math:`\sigma = \sqrt{\sigma_a^2 + s_r^2}`:
:math:`\sigma_a` the assay family's noise, :math:`s_r` the row's reported spread on the
log scale (SD or SEM·√n as :math:`\sqrt{\ln(1+CV^2)}`, a 95% CI as
:math:`\ln(hi/lo)/3.92`) plus its digitisation uncertainty. Point values give the
log-normal density; bounds and detection limits give :math:`\log\Phi` terms; intervals
(interval censoring, ranges over subjects) give :math:`\log(\Phi(z_{hi})-\Phi(z_{lo}))`.
These censored probabilities enter through a lapse: the censored rows read from one
quoted source statement (same study, same ``quote``) form a group :math:`g` whose term is
:math:`\log(\epsilon + (1-\epsilon)\prod_{i\in g} P_i)`, with a lapse probability
:math:`\epsilon` = :data:`CENSORED_LAPSE` (an assumption, see there); the group's term is
shared among its rows in proportion to their :math:`\log P_i` (equally while all hold),
so the rows' terms add up to it.

A failed solve makes the log-likelihood ``-inf`` (never a silent value).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax.scipy.special import log_ndtr
from jaxtyping import Array, Bool, Float, Int

from ..mechanisms.switches import Mechanisms
from ..model.model import Model
from ..model.parameters import KineticParameters
from ..observation.assays import OUTPUT_ORGANS, DonorDNA, Radiolabel, ViableCells
from ..observation.parameters import (
    ASSAY_FAMILIES,
    DETECTION_LIMIT_LOG_SD,
    ISOTOPE_HALF_LIFE_H,
    ObservationParameters,
)
from ..solve.segments import SolverConfig, closure, dependence, solve
from . import schema
from .scenarios import Scenario, ScenarioBatch, StudyEffects, build_batch, scenarios_of

KINDS = ("viable", "dna", "label", "tat", "il10")
NORMS = ("absolute", "percent_dose", "percent_whole_body", "per_g")
STATS = (
    "value",
    "relative",
    "half_life",
    "ratio",
    "auc_ratio",
    "time_undetectable",
    "first_pass",
    "passage_ratio",
)
TERMS = ("point", "lower", "upper", "interval")
_QUANTITY_NORM = {"percent_injected_dose": 1, "percent_whole_body": 2, "cells_per_g": 3}
_QUANTITY_STAT = {
    "relative_to_baseline": 1,
    "half_life": 2,
    "ratio_between_arms": 3,
    "auc_ratio": 4,
    "time_until_undetectable": 5,
    "first_pass_fraction": 6,
    "first_pass_passage_ratio": 7,
}
#: Points of the grids added for AUC and time-until-undetectable statistics.
AUC_POINTS = 33
DETECTION_GRID_POINTS = 48
#: Horizon for a time-until-undetectable row, as a multiple of its largest reported time.
DETECTION_HORIZON_FACTOR = 1.5
_TINY = 1e-300

#: Lapse probability of a bound, detection or interval row: its probability is
#: ``CENSORED_LAPSE + (1 - CENSORED_LAPSE) * P(model satisfies it)``, so a parameter set
#: that breaks such a statement costs at most ``-log(CENSORED_LAPSE)`` = 4.6 nats.
#: ASSUMPTION (no literature value): these rows are qualitative statements read from
#: abstracts and text ("viable MSC were present in the lungs up to 24 h", "survived more
#: than 5 months") with detection limits that are assay-family defaults, so each may be
#: wrong with some small probability; 1% is a round small value, assumed, not fitted (a
#: smaller one keeps the statements more binding; any value bounds the penalty). Without it
#: the log-normal tail makes the penalty grow as ``(k t / sigma)^2`` for a signal decaying as
#: ``exp(-k t)``, i.e. exponentially in a log-scale rate: in the calibration, points one
#: posterior SD from the draws reached -7e6 (the 24 h lung culture row of Eggenhofer
#: 2012) and NUTS diverged in 2-3% of its draws (benchmarks/RESULTS.md, 2026-11-23).
#:
#: **One lapse per source statement** (ASSUMPTION, modelling choice): a lapse is an error
#: in a statement as read (the source's claim, our reading of it, the assumed detection
#: limit), so the censored rows read from one quoted statement (same study and ``quote``)
#: share one lapse event, while the experiments they describe stay independent:
#: ``log(eps + (1 - eps) * prod_i P_i)``. Counting a lapse per row would let one sentence
#: that was split into rows (Braid 2018: "MSCs sourced from human umbilical cord matrix or
#: bone marrow survived more than 5 months in situ when administered IM", two rows) weigh
#: as two independent statements when it is broken (2 x 4.6 nats instead of 4.6).
CENSORED_LAPSE = 0.01
#: Denominators below this count as zero (its square stays representable, so gradients
#: of guarded divisions stay finite).
_TINY_DIV = 1e-140
#: A reported time 0 ("immediately after dosing", a baseline image) is read at 1 min.
EARLIEST_H = 1.0 / 60.0
_WHOLE = OUTPUT_ORGANS.index("whole_body")


class RowArrays(eqx.Module):
    """Per-row indices and data (length R), built once from the table."""

    scenario: Int[Array, " R"]
    study: Int[Array, " R"]
    comparator: Int[Array, " R"]
    organ: Int[Array, " R"]
    kind: Int[Array, " R"]
    norm: Int[Array, " R"]
    stat: Int[Array, " R"]
    family: Int[Array, " R"]
    term: Int[Array, " R"]
    i_t: Int[Array, " R"]
    i_t0: Int[Array, " R"]
    i_tc: Int[Array, " R"]
    t: Float[Array, " R"]
    t0: Float[Array, " R"]
    decay_rate: Float[Array, " R"]
    y: Float[Array, " R"]
    lower: Float[Array, " R"]
    upper: Float[Array, " R"]
    row_detection: Float[Array, " R"]  # the row's own limit (canonical unit), 0 if none
    extra_sd: Float[Array, " R"]
    lapse_group: Int[Array, " R"]  # censored rows of one source statement share an index
    lapse_share: Float[Array, " R"]  # 1 / rows in the row's lapse group (0 for point rows)


class Predictions(eqx.Module):
    """Per-row predictions and log-likelihood terms."""

    predicted: Float[Array, " R"]
    log_lik: Float[Array, " R"]
    sigma: Float[Array, " R"]
    success: Bool[Array, ""]


def _f(v) -> float:
    return float("nan") if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


class EvidenceLikelihood:
    """The evidence log-likelihood of a table (default: the shipped library).

    **Arguments:**

    - ``table``: an evidence DataFrame (validated here); ``None`` loads the library.
    - ``solver``: :class:`~mscpk.SolverConfig` of the batched solve.
    - ``n_size_classes``, ``mechanisms``: model structure (as in :func:`mscpk.simulate`).
    - ``reduced``: solve each scenario only for the state slots its rows need
      (:func:`needed_slots`; the default). The predictions are those of the full solve
      up to the solver's tolerance, with fewer steps; ``False`` solves every slot.
    - ``detection_limit_log_sd``: log-scale SD of the detection limit where a "below
      detection" or "above detection" row uses its assay family's assumed limit (no limit
      of its own in the paper). The limit is then log-normal around the family's value
      and integrated out, which widens that row's error SD to
      ``sqrt(sigma^2 + detection_limit_log_sd^2)`` (exact for one row; the rows of one
      statement are treated as independent, whereas one limit shared by them would
      correlate them: an approximation). The default,
      :data:`~mscpk.observation.parameters.DETECTION_LIMIT_LOG_SD` (1, the limits' assumed
      spread), is the model of the shipped calibration; ``0`` takes the limit as known (the
      model of the fits shipped before 2026-12). Time-until-undetectable rows keep the
      family's limit as it is (its uncertainty enters their crossing time, not a width).

    ``lik(kinetic, observation)`` is the summed log-likelihood (one jitted call);
    :meth:`terms` gives per-row predictions and terms; :attr:`table` the rows used.
    """

    def __init__(
        self,
        table: pd.DataFrame | None = None,
        solver: SolverConfig | None = None,
        n_size_classes: int = 5,
        mechanisms: Mechanisms | None = None,
        reduced: bool = True,
        detection_limit_log_sd: float = DETECTION_LIMIT_LOG_SD,
    ):
        from . import load

        if not isinstance(reduced, bool):
            raise TypeError(f"reduced: expected a bool, got {type(reduced).__name__} {reduced!r}")
        if isinstance(detection_limit_log_sd, bool) or not isinstance(detection_limit_log_sd, int | float):
            raise TypeError(
                "detection_limit_log_sd: expected a number, got "
                f"{type(detection_limit_log_sd).__name__} {detection_limit_log_sd!r}"
            )
        if not (math.isfinite(detection_limit_log_sd) and detection_limit_log_sd >= 0):
            raise ValueError(
                f"detection_limit_log_sd: expected a finite log-scale SD >= 0, got {detection_limit_log_sd!r}"
            )
        self.detection_limit_log_sd = float(detection_limit_log_sd)

        table = load() if table is None else schema.validate(table)
        if len(table) == 0:
            raise ValueError("table: the evidence table has no rows")
        self.table = table.reset_index(drop=True)
        # Prior draws with fast rates make the system stiff for an explicit solver: a
        # generous step budget keeps the likelihood finite there (100 of 100 draws).
        # rtol 1e-6: the log-likelihood at the defaults moves by 3e-5 from rtol 1e-7 (the
        # smallest error SD of a row is ~0.1 on the log scale) for 30% fewer steps.
        # 64 checkpoints: value+gradient of the calibration potential 0.30 -> 0.23 s (most
        # solves take far fewer steps than the default's ~450 checkpoints).
        self.solver = (
            SolverConfig(rtol=1e-6, atol=1e-11, max_steps=100_000, checkpoints=64)
            if solver is None
            else solver
        )
        self.scenarios, of_row = scenarios_of(self.table)
        self._of_row = of_row
        #: Studies in the order of :class:`~mscpk.evidence.scenarios.StudyEffects` entries.
        self.study_ids: tuple[str, ...] = tuple(sorted(set(self.table.study_id)))
        times = self._scenario_times(of_row)
        self.batch: ScenarioBatch = build_batch(
            self.scenarios, times, n_size_classes, mechanisms, self.study_ids
        )
        self.rows: RowArrays = self._row_arrays(of_row, times)
        if reduced:
            # Each scenario integrates only the slots its rows' kinds depend on, found
            # for parameters with no zero entry, so the set holds for every value the
            # parameters take. What it saves is steps: pools no row reads (the label's
            # in a viable-cell study, with their 0.3/h turnover) no longer bound them.
            generic = self.batch.with_parameters(
                _generic(KineticParameters.default()), _generic(ObservationParameters.default())
            )
            self.batch = needed_slots(self.batch, self.rows, generic)
        self._terms = eqx.filter_jit(_terms)

    # ------------------------------------------------------------------ building
    def _comparator_index(self) -> list[int]:
        ids = {rid: i for i, rid in enumerate(self.table.row_id)}
        return [ids[c] if isinstance(c, str) and c in ids else i for i, c in enumerate(self.table.comparator)]

    def _scenario_times(self, of_row: list[int]) -> list[np.ndarray]:
        need: list[set] = [set() for _ in self.scenarios]
        comp = self._comparator_index()
        for i, row in enumerate(self.table.to_dict("records")):
            s, sc = of_row[i], of_row[comp[i]]
            t, t0 = max(row["time_h"], EARLIEST_H), row["baseline_time_h"]
            need[s].add(t)
            if row["quantity"] in schema.NEEDS_BASELINE:
                need[s].add(max(t0, EARLIEST_H))
            if row["quantity"] in schema.NEEDS_COMPARATOR:
                need[sc].add(t)
            if row["quantity"] == "auc_ratio":
                grid = np.linspace(max(t0, EARLIEST_H), t, AUC_POINTS)
                need[s].update(grid)
                need[sc].update(grid)
            if row["quantity"] == "time_until_undetectable":
                largest = np.nanmax([_f(row["value"]), _f(row["upper"]), _f(row["lower"])]) * _unit(row)
                need[s].update(np.geomspace(0.25, DETECTION_HORIZON_FACTOR * largest, DETECTION_GRID_POINTS))
        return [np.unique(np.array(sorted(s), dtype=float)) for s in need]

    def _row_arrays(self, of_row: list[int], times: list[np.ndarray]) -> RowArrays:
        comp = self._comparator_index()
        cols: dict[str, list] = {f: [] for f in RowArrays.__dataclass_fields__}

        def at(s, t):
            return int(np.searchsorted(times[s], max(t, EARLIEST_H))) if t == t else 0

        for i, row in enumerate(self.table.to_dict("records")):
            s, sc = of_row[i], of_row[comp[i]]
            q = row["quantity"]
            factor = _unit(row)
            kind = schema.ASSAYS[row["assay"]]
            cols["scenario"].append(s)
            cols["study"].append(self.study_ids.index(row["study_id"]))
            cols["comparator"].append(sc)
            cols["organ"].append(OUTPUT_ORGANS.index(row["organ"]))
            cols["kind"].append(KINDS.index(kind))
            cols["norm"].append(_QUANTITY_NORM.get(q, 0))
            cols["stat"].append(_QUANTITY_STAT.get(q, 0))
            cols["family"].append(ASSAY_FAMILIES.index(schema.ASSAY_FAMILY[row["assay"]]))
            t, t0 = float(row["time_h"]), _f(row["baseline_time_h"])
            cols["t"].append(max(t, EARLIEST_H))
            cols["t0"].append(EARLIEST_H if t0 != t0 else max(t0, EARLIEST_H))
            cols["i_t"].append(at(s, t))
            cols["i_t0"].append(at(s, t0))
            cols["i_tc"].append(at(sc, t))
            half = ISOTOPE_HALF_LIFE_H.get(row["isotope"]) if row["decay_corrected"] == "no" else None
            cols["decay_rate"].append(
                0.0 if half is None or q != "percent_injected_dose" else math.log(2) / half
            )
            term, y, lo, hi = _term_of(row, factor)
            cols["term"].append(TERMS.index(term))
            cols["y"].append(y)
            cols["lower"].append(lo)
            cols["upper"].append(hi)
            dl = _f(row["detection_limit"])
            cols["row_detection"].append(0.0 if dl != dl else dl * factor)
            extra = _extra_sd(row)
            if row["censoring"] in ("below_detection", "above_detection") and dl != dl:
                extra = math.hypot(extra, self.detection_limit_log_sd)  # the family's assumed limit
            cols["extra_sd"].append(extra)
        cols["lapse_group"], cols["lapse_share"] = _lapse_groups(self.table, cols["term"])
        ints = {
            "scenario",
            "study",
            "comparator",
            "organ",
            "kind",
            "norm",
            "stat",
            "family",
            "term",
            "i_t",
            "i_t0",
            "i_tc",
            "lapse_group",
        }
        return RowArrays(**{k: jnp.asarray(v, dtype=int if k in ints else float) for k, v in cols.items()})

    # ------------------------------------------------------------------ evaluation
    @property
    def n_studies(self) -> int:
        return len(self.study_ids)

    def __call__(
        self,
        kinetic: KineticParameters,
        observation: ObservationParameters | None = None,
        effects: StudyEffects | None = None,
    ):
        """Summed log-likelihood (``-inf`` if any scenario's solve failed)."""
        out = self.terms(kinetic, observation, effects)
        return jnp.where(out.success, jnp.sum(out.log_lik), -jnp.inf)

    def terms(
        self,
        kinetic: KineticParameters,
        observation: ObservationParameters | None = None,
        effects: StudyEffects | None = None,
    ) -> Predictions:
        """Per-row predictions and log-likelihood terms (``effects``: optional
        :class:`~mscpk.evidence.scenarios.StudyEffects`, one entry per :attr:`study_ids`)."""
        observation = ObservationParameters.default() if observation is None else observation
        self._check_effects(effects)
        return self._terms(self.batch, self.rows, kinetic, observation, self.solver, effects)

    def _check_effects(self, effects):
        if effects is None:
            return
        if not isinstance(effects, StudyEffects):
            raise TypeError(f"effects: expected StudyEffects or None, got {type(effects).__name__}")
        for name in ("survival", "lung", "scale"):
            shape = jnp.shape(getattr(effects, name))
            if shape != (self.n_studies,):
                raise ValueError(
                    f"effects.{name}: expected shape ({self.n_studies},) (one entry per study), got {shape}"
                )

    def function(self, terms: bool = False):
        """``f(kinetic, observation, effects=None, values=None) -> log-likelihood``, a pure
        function of the parameters (the batch and rows are closed over) for
        ``jax.grad``/``jax.jit``; with ``terms=True`` it returns the :class:`Predictions`.

        ``values`` (R,) replaces the reported values of the point rows (canonical units;
        other rows ignore it): synthetic data for recovery studies, traced, so one
        compiled function serves every data set."""
        batch, rows, solver = self.batch, self.rows, self.solver

        def f(kinetic, observation, effects=None, values=None):
            r = rows if values is None else eqx.tree_at(lambda q: q.y, rows, jnp.asarray(values, dtype=float))
            out = _terms(batch, r, kinetic, observation, solver, effects)
            if terms:
                return out
            return jnp.where(out.success, jnp.sum(out.log_lik), -jnp.inf)

        return f

    def scenario_table(self) -> pd.DataFrame:
        """One line per scenario: label and the rows that use it."""
        of_row = self._of_row
        return pd.DataFrame(
            {
                "scenario": [sc.label() for sc in self.scenarios],
                "rows": [
                    ", ".join(self.table.row_id[[j for j, s in enumerate(of_row) if s == i]])
                    for i in range(len(self.scenarios))
                ],
            }
        )

    def scenario(self, i: int) -> Scenario:
        return self.scenarios[i]


def _unit(row) -> float:
    return schema.UNITS[row["quantity"]][row["unit"]]


def _term_of(row, factor) -> tuple[str, float, float, float]:
    """Error-model term and its bounds (canonical units; unused entries 1.0)."""
    c, v, lo, hi = row["censoring"], _f(row["value"]), _f(row["lower"]), _f(row["upper"])
    dl = _f(row["detection_limit"])
    if c == "none" and row["uncertainty_type"] == "range":
        return "interval", v * factor if v == v else 1.0, lo * factor, hi * factor
    if c == "none":
        return "point", v * factor, 1.0, 1.0
    if c == "lower_bound":
        return "lower", 1.0, v * factor, 1.0
    if c == "upper_bound":
        return "upper", 1.0, 1.0, v * factor
    if c == "interval":
        return "interval", 1.0, lo * factor, hi * factor
    # Detection rows: the bound is the detection limit (row's own, else the assay's, set
    # at evaluation time; NaN marks "use the assay default").
    bound = dl * factor if dl == dl else float("nan")
    return ("upper", 1.0, 1.0, bound) if c == "below_detection" else ("lower", 1.0, bound, 1.0)


def _lapse_groups(table: pd.DataFrame, term: list[int]) -> tuple[list[int], list[float]]:
    """Lapse group of each row (censored rows with the same study and quote share one;
    every other row is its own) and the share ``1 / size`` of a censored row (0 for points)."""
    censored = [t != TERMS.index("point") for t in term]
    keys = [
        (row["study_id"], " ".join(str(row["quote"]).split())) if c else ("row", i)
        for i, (row, c) in enumerate(zip(table.to_dict("records"), censored, strict=True))
    ]
    index = {k: g for g, k in enumerate(dict.fromkeys(keys))}
    group = [index[k] for k in keys]
    size = np.bincount(group, minlength=len(group))
    share = [1.0 / size[g] if c else 0.0 for g, c in zip(group, censored, strict=True)]
    return group, share


def _extra_sd(row) -> float:
    """Log-scale SD of the row's reported spread and digitisation (0 when none)."""
    v, u, n = _f(row["value"]), row["uncertainty_type"], _f(row["n"])
    sd = 0.0
    if u in ("sd", "sem") and v > 0:
        spread = _f(row["uncertainty"]) * (math.sqrt(n) if u == "sem" else 1.0)
        sd = math.sqrt(math.log1p((spread / v) ** 2))
    elif u == "ci95":
        lo, hi = _f(row["lower"]), _f(row["upper"])
        sd = math.log(hi / lo) / 3.92 if lo > 0 else (hi - v) / (1.96 * v)
    dig = _f(row["digitisation_uncertainty"])
    if dig == dig and v > 0:
        sd = math.sqrt(sd**2 + (dig / v) ** 2)
    return sd


# ---------------------------------------------------------------------- traced part
def _kind_signals(obs):
    """The signal of every assay kind (:data:`KINDS`), ``(kinds, T, K)``."""
    amounts = ViableCells()(obs)
    shape = amounts.shape
    tat = jnp.broadcast_to(obs.tat[:, None], shape)
    il10 = jnp.broadcast_to(obs.il10[:, None] * 1e-3, shape)  # pg/mL -> ng/mL
    return jnp.stack([amounts, DonorDNA()(obs), Radiolabel()(obs), tat, il10])


class _AllKinds(eqx.Module):
    """Every kind's signals for one state (the observer :func:`dependence` reads)."""

    def __call__(self, model, y):
        return _kind_signals(model.observe(y[None], jnp.zeros((1, model.n_size_classes))))


def _generic(tree):
    """``tree`` with every zero floating-point entry replaced by a positive value: a
    parameter set whose dependence pattern holds every other value's."""
    return jax.tree_util.tree_map(
        lambda x: jnp.where(x == 0, 0.37, x) if eqx.is_inexact_array(x) else x, tree
    )


def needed_slots(batch: ScenarioBatch, rows: RowArrays, models: Model) -> ScenarioBatch:
    """``batch`` with, per scenario, the assay kinds its rows read (as their own scenario
    or as comparator) and the state slots those kinds depend on (as :func:`~mscpk.solve.segments.relevant_slots`
    finds them, with the dependence read from ``models``), as :attr:`ScenarioBatch.kinds` and
    :attr:`ScenarioBatch.integrate`."""
    kinds = np.zeros((batch.n, len(KINDS)), bool)
    for col in (rows.scenario, rows.comparator):
        kinds[np.asarray(col), np.asarray(rows.kind)] = True
    integrate = np.zeros((batch.n, models.n_states), bool)
    for s in range(batch.n):
        if kinds[s].any():
            model, table = jax.tree_util.tree_map(lambda x, s=s: x[s], (models, batch.tables))
            rhs, outputs, live = dependence(model, table, _AllKinds())
            per_kind = outputs.reshape(len(KINDS), -1, models.n_states).any(1)
            integrate[s, list(closure(rhs, per_kind[kinds[s]].any(0), live))] = True
    return eqx.tree_at(
        lambda b: (b.kinds, b.integrate),
        batch,
        (jnp.asarray(kinds), jnp.asarray(integrate)),
        is_leaf=lambda x: x is None,
    )


def _scenario_signals(model, table, times, t_end, solver, integrate=None, kinds=None):
    """One scenario: assay signals (kinds, T, K), first-pass arrest (O,), success. With
    ``integrate`` only those slots are solved, and the kinds not in ``kinds`` are NaN."""
    sol = solve(model, table, times, t_end, solver, mask=integrate)
    signals = _kind_signals(model.observe(sol.ys, sol.blood_input))
    if kinds is not None:
        signals = jnp.where(kinds[:, None, None], signals, jnp.nan)
    _, weights = model.size_classes()
    first_pass = weights @ model.extraction()
    volume = jnp.concatenate(
        [model.blood_volume_ml()[None], model.species.organ_volume_ml, model.species.body_weight_g[None]]
    )
    return signals, first_pass, volume, sol.success


def _div(a, b):
    """``a / b`` with ``b <= _TINY_DIV`` replaced by 1 (value and gradient stay finite)."""
    return a / jnp.where(b > _TINY_DIV, b, 1.0)


def _auc(series, times, t0, t1):
    """Trapezoid area of ``series`` (R, T) over ``[t0, t1]`` on ``times`` (R, T)."""
    dt = times[:, 1:] - times[:, :-1]
    mid = 0.5 * (series[:, 1:] + series[:, :-1])
    inside = (times[:, :-1] >= t0[:, None] - 1e-9) & (times[:, 1:] <= t1[:, None] + 1e-9)
    return jnp.sum(jnp.where(inside, mid * dt, 0.0), axis=1)


def _crossing(series, times, limit, t_end):
    """First time the log of ``series`` (R, T) falls below ``log(limit)`` (R,)."""
    g = jnp.log(jnp.maximum(series, _TINY)) - jnp.log(limit)[:, None]
    below = g < 0.0
    first = jnp.argmax(below, axis=1)
    has = jnp.any(below, axis=1)
    prev = jnp.maximum(first - 1, 0)
    take = jax.vmap(lambda a, i: a[i])
    g0, g1 = take(g, prev), take(g, first)
    ta, tb = take(times, prev), take(times, first)
    denom = jnp.where(g0 - g1 > 0, g0 - g1, 1.0)
    t_cross = jnp.where(first == 0, tb, ta + (tb - ta) * jnp.clip(g0 / denom, 0.0, 1.0))
    return jnp.where(has, t_cross, t_end)


def _log_diff_ndtr(zh, zl):
    """log(Phi(zh) - Phi(zl)) for zh > zl, stable in both tails."""
    upper_tail = log_ndtr(-zl) + jnp.log(-jnp.expm1(jnp.minimum(log_ndtr(-zh) - log_ndtr(-zl), -1e-300)))
    lower_tail = log_ndtr(zh) + jnp.log(-jnp.expm1(jnp.minimum(log_ndtr(zl) - log_ndtr(zh), -1e-300)))
    return jnp.where(zl > 0, upper_tail, lower_tail)


def _solve_batch(batch: ScenarioBatch, models, solver, batching: str):
    per_scenario = (models, batch.tables, batch.times_h, batch.t_end_h, batch.integrate, batch.kinds)
    if batching == "vmap":
        return jax.vmap(lambda *a: _scenario_signals(*a[:4], solver, *a[4:]))(*per_scenario)
    return jax.lax.map(lambda a: _scenario_signals(*a[:4], solver, *a[4:]), per_scenario)


def _lapse(log_p, r: RowArrays):
    """Per-row terms of the censored rows' statement groups (see :data:`CENSORED_LAPSE`):
    ``log(eps + (1 - eps) prod P)`` per group, shared by the rows in proportion to their
    ``log P`` (equally while the sum is ~0); point rows get 0 here."""
    is_censored = r.lapse_share > 0
    log_p = jnp.where(is_censored, log_p, 0.0)
    n = r.lapse_group.shape[0]
    total = jax.ops.segment_sum(log_p, r.lapse_group, num_segments=n)[r.lapse_group]
    group = jnp.logaddexp(math.log(CENSORED_LAPSE), math.log1p(-CENSORED_LAPSE) + total)
    broken = total < -1e-12
    weight = jnp.where(broken, log_p / jnp.where(broken, total, -1.0), r.lapse_share)
    return jnp.where(is_censored, group * weight, 0.0)


def _terms(
    batch: ScenarioBatch, rows: RowArrays, kinetic, observation, solver, effects=None, batching="map"
) -> Predictions:
    models = batch.with_parameters(kinetic, observation, effects)
    signals, first_pass, volume, ok = _solve_batch(batch, models, solver, batching)
    r = rows
    times = batch.times_h[r.scenario]  # (R, T)
    times_c = batch.times_h[r.comparator]
    raw = signals[r.scenario, r.kind, :, r.organ]  # (R, T)
    raw_c = signals[r.comparator, r.kind, :, r.organ]
    whole = signals[r.scenario, r.kind, :, _WHOLE]

    def normalise(series, whole, scen, t):
        is_label = r.kind == KINDS.index("label")
        dose = batch.dose_cells[scen]
        pct_dose = jnp.where(is_label[:, None], series, 100.0 * series / dose[:, None])
        pct_dose = pct_dose * jnp.exp(-r.decay_rate[:, None] * t)
        pct_whole = 100.0 * _div(series, whole)
        per_g = series / volume[scen, r.organ][:, None]
        return jnp.select(
            [r.norm[:, None] == 1, r.norm[:, None] == 2, r.norm[:, None] == 3],
            [pct_dose, pct_whole, per_g],
            series,
        )

    series = normalise(raw, whole, r.scenario, times)
    series_c = normalise(raw_c, signals[r.comparator, r.kind, :, _WHOLE], r.comparator, times_c)
    take = jax.vmap(lambda a, i: a[i])
    y_t, y_t0, y_c = take(series, r.i_t), take(series, r.i_t0), take(series, r.i_tc)
    pos = lambda x: jnp.maximum(x, _TINY)  # noqa: E731
    log_drop = jnp.log(pos(y_t0)) - jnp.log(pos(y_t))
    half_life = math.log(2.0) * (r.t - r.t0) / jnp.maximum(log_drop, 1e-12)
    auc = _div(_auc(series, times, r.t0, r.t), _auc(series_c, times_c, r.t0, r.t))
    family_limit = observation.detection_limit_cells[r.family]
    t_undetect = _crossing(series, times, family_limit, batch.t_end_h[r.scenario])
    fp = first_pass[r.scenario, jnp.maximum(r.organ - 1, 0)]
    fp_c = first_pass[r.comparator, jnp.maximum(r.organ - 1, 0)]
    passage = _div(1.0 - fp, 1.0 - fp_c)
    predicted = jnp.select(
        [r.stat == k for k in range(1, len(STATS))],
        [_div(y_t, y_t0), half_life, _div(y_t, y_c), auc, t_undetect, fp, passage],
        y_t,
    )
    mu = jnp.log(pos(predicted))
    if effects is not None:
        # Assay scale: only levels reported in absolute terms (not ratios to the same
        # animal's own signal: % of whole body, baselines, half-lives, ...).
        absolute = (r.stat == 0) & (r.norm != _QUANTITY_NORM["percent_whole_body"])
        mu = mu + jnp.where(absolute, effects.scale[r.study], 0.0)
        predicted = jnp.exp(mu)
    sigma = jnp.sqrt(observation.sigma_log[r.family] ** 2 + r.extra_sd**2)
    # Detection rows without their own limit use the assay family's (in cells).
    lower = jnp.where(jnp.isnan(r.lower), family_limit, r.lower)
    upper = jnp.where(jnp.isnan(r.upper), family_limit, r.upper)
    z_lo = (jnp.log(lower) - mu) / sigma
    z_hi = (jnp.log(upper) - mu) / sigma
    z = (jnp.log(r.y) - mu) / sigma
    point = -0.5 * z**2 - jnp.log(sigma) - 0.5 * math.log(2.0 * math.pi) - jnp.log(r.y)
    censored = jnp.select(
        [r.term == 1, r.term == 2],
        [log_ndtr(-z_lo), log_ndtr(z_hi)],
        _log_diff_ndtr(z_hi, jnp.minimum(z_lo, z_hi - 1e-12)),
    )
    terms = jnp.where(r.term == 0, point, _lapse(censored, r))
    return Predictions(predicted=predicted, log_lik=terms, sigma=sigma, success=jnp.all(ok))
