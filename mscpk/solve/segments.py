"""Integrating a dosing regimen: one ``diffeqsolve`` per segment between dose events.

Dose starts and infusion ends are the events. They are sorted (the sort permutes, so
gradients flow to every time), and ``lax.scan`` walks the ``2N + 1`` segments of a
padded table of ``N`` doses: at each segment start the boluses of that event are added
to the state, the infusion rate active in the segment is held constant, and the state
is integrated to the next event. Because every infusion edge is a segment boundary the
right-hand side is smooth inside each solve (the strongest form of ``jump_ts``), and
dose times and infusion durations enter only as the traced ``t0``/``t1`` of the
solves, so gradients with respect to them exist. A solve that fails (for example, it
hits ``max_steps``) sets ``success`` to ``False``; results are never padded silently.

The fast linear pools (dead cells and label in blood, plasma TAT; see
:meth:`mscpk.Model.fast_rates`) enter the right-hand side in closed form on each
segment, so their minute-scale turnover does not limit the step size over long horizons.

Pools that no dose can reach (another route's local site, the label of an unlabelled
product) stay exactly zero, so the error control never sees them and the step size may
exceed their stability limit; the solution is unaffected, but reverse-mode gradients run
the steps' transposes backwards over the same steps, where such a pool's mode grows
(about 19x per step for an idle 0.15 /h depot at 10 h steps) until it overflows and the
gradient is NaN (session 17: every divergence of the calibration's NUTS runs came from
this, in the IM scenarios' idle depots). :func:`reachable` finds the pools a regimen can
reach, and the right-hand side is zero elsewhere: the same solution, no idle stiff modes.
"""

from __future__ import annotations

import functools as ft

import diffrax
import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from ..dosing.regimen import DoseTable
from ..model.layout import fast_slots
from ..model.model import Model

SOLVERS = ("tsit5", "dopri5", "dopri8", "kvaerno5")
ADJOINTS = ("reverse", "forward")
NORMS = ("max", "rms")


class _ForwardMode(diffrax.AbstractAdjoint):
    """Forward-mode differentiation of the solve (``jax.jvp``/``jax.jacfwd``): the
    integration loop is a plain ``lax.while_loop``. This is diffrax's own ``ForwardMode``
    (diffrax >= 0.7), whose ``loop`` is repeated here for diffrax 0.6.1, which lacks it.
    Reverse mode through it is not supported."""

    def loop(self, *, solver, throw, passed_solver_state, passed_controller_state, **kwargs):
        del throw, passed_solver_state, passed_controller_state
        if isinstance(solver, diffrax.AbstractRungeKutta) and solver.scan_kind is None:
            solver = eqx.tree_at(lambda s: s.scan_kind, solver, "lax", is_leaf=lambda x: x is None)
        return self._loop(
            solver=solver,
            inner_while_loop=ft.partial(eqxi.while_loop, kind="lax"),
            outer_while_loop=ft.partial(eqxi.while_loop, kind="lax"),
            **kwargs,
        )


#: diffrax's forward-mode adjoint where it has one, else the same loop for diffrax 0.6.
ForwardMode = getattr(diffrax, "ForwardMode", _ForwardMode)


def max_norm(tree) -> Float[Array, ""]:
    """Infinity norm of the scaled error: every state component is held to its own
    tolerance, however many (zero) pools of switched-off mechanisms the state carries
    (an RMS norm would loosen the control as pools are added)."""
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.max(jnp.stack([jnp.max(jnp.abs(leaf)) for leaf in leaves]))


class SolverConfig(eqx.Module):
    """Numerical settings (all static).

    **Arguments:**

    - ``solver``: ``"tsit5"`` (explicit, 5th order; the default: with quasi-steady
      circulation the system is not stiff), ``"dopri5"`` (explicit, 5th order),
      ``"dopri8"`` (explicit, 8th order: fewer, costlier steps at tight tolerances) or
      ``"kvaerno5"`` (L-stable, for stiff extensions).
    - ``rtol``: relative tolerance.
    - ``atol``: absolute tolerance as a fraction of the total administered dose.
    - ``max_steps``: step budget per segment; exceeding it is a failed solve.
    - ``adjoint``: ``"reverse"`` (the default: ``jax.grad`` through
      ``diffrax.RecursiveCheckpointAdjoint``) or ``"forward"`` (``jax.jvp``/``jax.jacfwd``
      through :data:`ForwardMode`; ``jax.grad`` then fails).
    - ``norm``: how the per-slot scaled errors are combined into the one number the step
      controller holds below 1: ``"max"`` (the default: every slot to its own tolerance,
      :func:`max_norm`) or ``"rms"`` (root mean square over the integrated slots, as
      SciPy's ``solve_ivp`` and diffrax's default measure it: looser per slot, by up to
      the square root of their number; fewer steps).
    - ``checkpoints``: checkpoints of the reverse mode (``None``: diffrax's default,
      about ``sqrt(2 max_steps)``); fewer save memory traffic when most solves take far
      fewer steps than ``max_steps``, at the cost of recomputing steps.
    """

    solver: str = eqx.field(static=True, default="tsit5")
    rtol: float = eqx.field(static=True, default=1e-8)
    atol: float = eqx.field(static=True, default=1e-13)
    max_steps: int = eqx.field(static=True, default=16384)
    adjoint: str = eqx.field(static=True, default="reverse")
    checkpoints: int | None = eqx.field(static=True, default=None)
    norm: str = eqx.field(static=True, default="max")

    def __check_init__(self):
        if self.solver not in SOLVERS:
            raise ValueError(f"solver: unknown solver {self.solver!r}; allowed: {', '.join(SOLVERS)}")
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 < value < 1):
                raise ValueError(f"SolverConfig.{name}: must be a float in (0, 1), got {value!r}")
        if not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise ValueError(f"SolverConfig.max_steps: must be an int >= 1, got {self.max_steps!r}")
        if self.adjoint not in ADJOINTS:
            raise ValueError(f"SolverConfig.adjoint: {self.adjoint!r}; allowed: {', '.join(ADJOINTS)}")
        if self.norm not in NORMS:
            raise ValueError(f"SolverConfig.norm: {self.norm!r}; allowed: {', '.join(NORMS)}")
        if self.checkpoints is not None and (
            isinstance(self.checkpoints, bool)
            or not isinstance(self.checkpoints, int)
            or self.checkpoints < 1
        ):
            raise ValueError(
                f"SolverConfig.checkpoints: must be None or an int >= 1, got {self.checkpoints!r}"
            )

    def make_adjoint(self):
        return (
            ForwardMode()
            if self.adjoint == "forward"
            else diffrax.RecursiveCheckpointAdjoint(self.checkpoints)
        )

    def make_controller(self, atol):
        """diffrax's PID controller at ``rtol`` and ``atol`` (absolute, cells), with this
        ``norm`` (diffrax's own default is the RMS norm)."""
        norm = {"norm": max_norm} if self.norm == "max" else {}
        return diffrax.PIDController(rtol=self.rtol, atol=atol, **norm)

    def make_solver(self):
        return {
            "tsit5": diffrax.Tsit5,
            "dopri5": diffrax.Dopri5,
            "dopri8": diffrax.Dopri8,
            "kvaerno5": diffrax.Kvaerno5,
        }[self.solver]()


class Solution(eqx.Module):
    """States at the requested times and whether every segment solved.

    ``blood_input`` is the rate (cells/h, per diameter class) at which administered viable
    cells enter venous blood at each time; with ``ys`` it gives the quasi-steady number of
    circulating cells (:meth:`mscpk.Model.observe`).
    """

    ts: Float[Array, " T"]
    ys: Float[Array, "T n"]
    blood_input: Float[Array, "T S"]
    success: Bool[Array, ""]
    n_steps: Float[Array, ""]


def event_schedule(table: DoseTable, model: Model, t_end_h):
    """Sorted events with the state jump each applies, and segment boundaries."""
    per_cell = jax.vmap(model.dose_vector)(table)  # (N, n)
    to_blood = jax.vmap(model.blood_input_per_cell)(table)  # (N, S)
    is_bolus = table.duration_h <= 0.0
    start_jump = jnp.where(is_bolus[:, None], table.cells[:, None] * per_cell, 0.0)
    times = jnp.concatenate([table.time_h, table.time_h + table.duration_h])
    jumps = jnp.concatenate([start_jump, jnp.zeros_like(start_jump)])
    order = jnp.argsort(times)  # integer permutation: gradients flow through `times`
    times = times[order]
    jumps = jumps[order]
    bounds = jnp.concatenate([jnp.zeros(1), times, jnp.reshape(t_end_h, (1,))])
    return bounds, jumps, per_cell, to_blood


#: Seed of the fixed generic point of :func:`reachable`.
_GENERIC_SEED = 0x5EED


def reachable(model: Model, transport, seed: Bool[Array, " n"]) -> Bool[Array, " n"]:
    """The state slots that can become non-zero from the slots ``seed`` (those a dose
    fills), following the right-hand side.

    With the reached slots at a fixed generic value (positive, pseudo-random) and every
    other slot zero, the slots whose derivative is non-zero (or NaN) are reached too,
    until nothing changes. This follows what flows, not the Jacobian's pattern: a term
    such as ``k z x`` (a killing rate times the cells ``x`` of a site) does not make ``x``
    reachable from ``z`` when ``x`` is zero. A flow that exists is non-zero at a generic
    point (a cancellation would need the random numbers to hit a root), so the result can
    only be too large, which is safe: a slot is masked only if nothing can flow into it.
    The parameters enter through ``stop_gradient``: the mask is a constant of the solve.
    """
    n = seed.shape[0]
    y_generic = jnp.asarray(np.random.default_rng(_GENERIC_SEED).uniform(0.5, 1.5, n))
    model, transport = jax.lax.stop_gradient((model, transport))

    def body(carry):
        reach, _ = carry
        f = model.vector_field_from(transport, jnp.where(reach, y_generic, 0.0), None)
        new = reach | (f != 0.0) | jnp.isnan(f)
        return new, jnp.any(new != reach)

    reach, _ = jax.lax.while_loop(lambda c: c[1], body, (seed, jnp.array(True)))
    return reach


def _generic_points(n: int, count: int) -> np.ndarray:
    return np.random.default_rng(_GENERIC_SEED + 1).uniform(0.5, 1.5, (count, n))


@eqx.filter_jit
def _dependence(model: Model, table: DoseTable, observe, points):
    """Jacobian patterns at generic points, ``(n, n)`` of the right-hand side (reference
    form, fast pools as states) and ``(n,)`` of ``observe``, and the reachable slots."""
    tr = model.transport()
    rhs = jax.vmap(jax.jacfwd(lambda y: model.vector_field_from(tr, y, None)))(points)
    obs = jax.vmap(jax.jacfwd(lambda y: jnp.ravel(observe(model, y))))(points)
    per_cell = jax.vmap(model.dose_vector)(table)
    dosed = jnp.any((table.cells[:, None] > 0.0) & (per_cell != 0.0), axis=0)
    return (
        jnp.any((rhs != 0) | jnp.isnan(rhs), 0),
        jnp.any((obs != 0) | jnp.isnan(obs), 0),
        reachable(model, tr, dosed),
    )


def dependence(model: Model, table: DoseTable, observe):
    """The patterns :func:`relevant_slots` works from, as NumPy booleans: ``(n, n)`` of
    the right-hand side (row ``i``: the slots ``dy_i/dt`` depends on), ``(m, n)`` of the
    ``m`` outputs of ``observe`` (flattened), and ``(n,)`` the slots the doses reach."""
    n = model.n_states
    return tuple(map(np.asarray, _dependence(model, table, observe, jnp.asarray(_generic_points(n, 3)))))


def closure(rhs, needed, live) -> tuple[int, ...]:
    """The reachable slots that the slots ``needed`` depend on, directly or through the
    right-hand side pattern ``rhs`` (see :func:`dependence`)."""
    while True:
        grown = needed | rhs[needed].any(0)
        if (grown == needed).all():
            break
        needed = grown
    return tuple(int(i) for i in np.flatnonzero(needed & live))


def relevant_slots(model: Model, table: DoseTable, observe) -> tuple[int, ...]:
    """The state slots that ``observe(model, y)`` (``y`` one state vector; a hashable
    callable such as an :class:`equinox.Module`, so that the check compiles once) depends on,
    directly or through the right-hand side, among those the regimen's doses can reach
    (:func:`reachable`): pass them to :func:`solve` (``slots``) to integrate only what
    ``observe`` needs.

    The reduction is exact: no left-out slot feeds into a kept one, so the kept slots
    follow the same equations as in the full system. Dependence is read from the
    Jacobian's pattern at generic points (positive, pseudo-random; several, OR-ed), as
    :func:`reachable` reads flows: a dependence that exists is non-zero at a generic
    point, so the set can only be too large. It depends on the model's structure
    (switched-on mechanisms, non-zero parameters), not on parameter values, so one set
    serves subjects that differ only in values. Needs concrete (untraced) arguments.
    """
    rhs, outputs, live = dependence(model, table, observe)
    return closure(rhs, outputs.any(0), live)


class _Subset(eqx.Module):
    """Static subset of the state slots as contiguous runs: gathers and scatters become
    slices and concatenations (fusible, no index arrays)."""

    n: int = eqx.field(static=True)
    runs: tuple[tuple[int, int], ...] = eqx.field(static=True)

    @classmethod
    def of(cls, slots, n: int) -> "_Subset":
        runs: list[list[int]] = []
        for i in slots:
            if runs and runs[-1][1] == i:
                runs[-1][1] += 1
            else:
                runs.append([i, i + 1])
        return cls(n, tuple((a, b) for a, b in runs))

    @property
    def full(self) -> bool:
        return self.runs == ((0, self.n),)

    def take(self, v):
        if self.full:
            return v
        return jnp.concatenate([v[..., a:b] for a, b in self.runs], -1)

    def put(self, v):
        """Full-length vector with ``v`` in the subset's slots and zeros elsewhere."""
        if self.full:
            return v
        pieces, pos, off = [], 0, 0
        for a, b in self.runs:
            if a > pos:
                pieces.append(jnp.zeros(v.shape[:-1] + (a - pos,), v.dtype))
            pieces.append(v[..., off : off + b - a])
            off, pos = off + b - a, b
        if pos < self.n:
            pieces.append(jnp.zeros(v.shape[:-1] + (self.n - pos,), v.dtype))
        return jnp.concatenate(pieces, -1)


def check_slots(slots, n: int) -> tuple[int, ...] | None:
    """``slots`` as a sorted tuple of distinct ints in ``[0, n)`` (``None`` stays ``None``)."""
    if slots is None:
        return None
    values = np.asarray(slots)
    if (
        values.ndim != 1
        or values.size == 0
        or not np.issubdtype(values.dtype, np.integer)
        or np.any(values < 0)
        or np.any(values >= n)
        or np.unique(values).size != values.size
    ):
        raise ValueError(
            f"slots: expected a non-empty sequence of distinct state indices in [0, {n}), got {slots!r}"
        )
    return tuple(int(i) for i in np.sort(values))


def infusion_rate(table: DoseTable, t_mid) -> Float[Array, " N"]:
    """Cells per hour of every dose that is being infused at time ``t_mid``."""
    running = (table.duration_h > 0.0) & (table.time_h <= t_mid) & (t_mid < table.time_h + table.duration_h)
    return jnp.where(running, table.cells / jnp.where(table.duration_h > 0, table.duration_h, 1.0), 0.0)


def solve(
    model: Model,
    table: DoseTable,
    times_h: Float[Array, " T"],
    t_end_h,
    config: SolverConfig | None = None,
    slots=None,
    mask=None,
) -> Solution:
    """Integrate ``model`` over the regimen ``table`` and return states at ``times_h``.

    Works under ``jax.jit``, ``jax.vmap`` and ``jax.grad``. ``times_h`` must lie in
    ``[0, t_end_h]``; a time outside it (which no segment covers) makes ``success``
    ``False`` rather than returning zeros, as does a dose ending after ``t_end_h``.

    ``slots`` (static; default all): integrate only these state slots, e.g. those an
    output needs (:func:`relevant_slots`); the other columns of ``ys`` are then zero and
    mean nothing. The error control sees only the integrated slots. On an accelerator,
    where a batch of solves is bound by memory traffic over the state, this cuts the
    cost in proportion.

    ``mask`` (``(n,)`` booleans, may be traced; default all): integrate only the slots
    where it is true; the right-hand side of the others is zero, so they keep the values
    the doses give them and their columns of ``ys`` mean nothing. Unlike ``slots`` the
    state keeps its size, so solves with different masks share one compiled body (the
    scenarios of :class:`~mscpk.evidence.likelihood.EvidenceLikelihood`, each with the
    slots its rows need); what a mask saves is steps, where a left-out pool's fast
    turnover would bound the step size. Exact when every slot an output depends on is in
    the mask (:func:`relevant_slots`).
    """
    config = SolverConfig() if config is None else config
    if mask is not None and jnp.shape(mask) != (model.n_states,):
        raise ValueError(
            f"mask: expected shape ({model.n_states},) (one entry per state slot), got {jnp.shape(mask)}"
        )
    if mask is not None and jnp.result_type(mask) != jnp.bool_:
        raise TypeError(
            f"mask: expected booleans (True: integrate the slot), got dtype {jnp.result_type(mask)}"
        )
    subset = _Subset.of(check_slots(slots, model.n_states) or range(model.n_states), model.n_states)
    times_h = jnp.asarray(times_h, dtype=float)
    t_end_h = jnp.asarray(t_end_h, dtype=float)
    bounds, jumps, per_cell, to_blood = event_schedule(table, model, t_end_h)
    transport = model.transport()  # computed once, reused at every RHS evaluation
    dose_scale = jnp.maximum(jnp.sum(table.cells), 1.0)
    # Fast linear pools (Model.fast_rates): on a segment their dose-driven part is
    # A(t) = A0 e^{-k(t-t0)} + (u/k)(1 - e^{-k(t-t0)}), A0 the slots' values at its start.
    # The right-hand side uses this closed form, so the slots' derivatives u - k A(t) depend
    # on time only (not stiff) and the solver tracks A(t) in the slots.
    fast = jnp.asarray(fast_slots(model.n_size_classes))
    k_fast = model.fast_rates(transport)
    dosed = jnp.any((table.cells[:, None] > 0.0) & (per_cell != 0.0), axis=0)
    live = subset.take(reachable(model, transport, dosed).astype(float))
    if mask is not None:
        live = live * subset.take(jnp.asarray(mask).astype(float))

    def fast_at(t, t0, a0, u_fast):
        decay = -jnp.expm1(-k_fast * (t - t0))
        return a0 - (a0 - u_fast / k_fast) * decay

    def field(t, y, args):
        u, t0, a0 = args
        f = model.vector_field_from(transport, subset.put(y), fast_at(t, t0, a0, u[fast]))
        return live * (subset.take(f) + subset.take(u))

    term = diffrax.ODETerm(field)
    solver = config.make_solver()
    controller = config.make_controller(config.atol * dose_scale)
    n_seg = bounds.shape[0] - 1
    last = jnp.arange(n_seg) == n_seg - 1

    def segment(carry, k):
        y, out, blood, ok, steps = carry
        t0, t1 = bounds[k], bounds[k + 1]
        y = y + jnp.where(k > 0, subset.take(jumps[jnp.maximum(k - 1, 0)]), 0.0)
        rate = infusion_rate(table, 0.5 * (t0 + t1))
        u = rate @ per_cell
        sol = diffrax.diffeqsolve(
            term,
            solver,
            t0=t0,
            t1=t1,
            dt0=None,
            y0=y,
            args=(u, t0, subset.put(y)[fast]),
            saveat=diffrax.SaveAt(ts=jnp.clip(times_h, t0, t1), t1=True),
            stepsize_controller=controller,
            max_steps=config.max_steps,
            throw=False,
            adjoint=config.make_adjoint(),
        )
        in_seg = (times_h >= t0) & ((times_h < t1) | (last[k] & (times_h <= t1)))
        out = out + jnp.where(in_seg[:, None], subset.put(sol.ys[:-1]), 0.0)
        blood = blood + jnp.where(in_seg[:, None], (rate @ to_blood)[None, :], 0.0)
        ok = ok & (sol.result == diffrax.RESULTS.successful)
        y1 = sol.ys[-1]
        return (y1, out, blood, ok, steps + sol.stats["num_steps"]), None

    n_t = times_h.shape[0]
    covered = jnp.all((times_h >= 0.0) & (times_h <= t_end_h))
    in_horizon = jnp.all((table.cells <= 0.0) | (table.time_h + table.duration_h <= t_end_h))
    init = (
        jnp.zeros(sum(b - a for a, b in subset.runs)),
        jnp.zeros((n_t, model.n_states)),
        jnp.zeros((n_t, model.n_size_classes)),
        covered & in_horizon,
        jnp.array(0),
    )
    (_, ys, blood, ok, steps), _ = jax.lax.scan(segment, init, jnp.arange(n_seg))
    return Solution(ts=times_h, ys=ys, blood_input=blood, success=ok, n_steps=steps)
