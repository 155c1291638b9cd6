"""How low can ``grad_over_value`` go with this right-hand side? Per-step costs of the
value and of reverse-mode adjoints, measured side by side in one process.

Run: ``python benchmarks/adjoint_floor.py [--repeat 9]``. Prints a table and writes
``benchmarks/results/adjoint-floor-<device>.json`` with machine, versions and device.

Setting: mouse, BM-MSC, 1e6 cells IV, 30 days, the evidence likelihood's tolerances
(rtol 1e-6, atol 1e-11 x dose) and its 64 checkpoints. Rows:

- ``diffrax``: the solve as the library runs it (:func:`mscpk.solve.segments.solve`),
  value and value + gradient (``diffrax.RecursiveCheckpointAdjoint``) of a scalar of the
  outputs with respect to every model parameter; its number of accepted steps sets the
  mesh of the rows below.
- ``straight-line scan``: the same Tsit5 step (diffrax's own tableau) written out
  stage by stage and scanned over a fixed mesh of that many steps, JAX's reverse mode
  through ``lax.scan``.
- ``hand-written discrete adjoint``: the same scan under ``jax.custom_vjp``, whose
  backward pass walks the stored states in reverse and pulls the cotangent through
  ``jax.vjp`` of one step at a time (the adjoint a hand-written solver would use).
- ``same, stage-wise pullback``: that walk with each step's pullback taken stage by
  stage (:func:`stagewise_pullback`).
- ``diffrax, module field``: ``diffeqsolve`` with the right-hand side as an
  ``equinox.Module`` (its arrays as leaves), with diffrax's ``Tsit5`` (JAX differentiates
  each step) and with ``_stagewise.StagewiseTsit5`` (the same step, its derivative taken
  stage by stage under ``equinox.filter_custom_vjp``), both in
  ``RecursiveCheckpointAdjoint`` with 64 and with 256 checkpoints (more than the steps:
  nothing recomputed); the two gradients are compared, including the one with respect to
  the start time.
- the forward solve alone, keeping the state after every accepted step
  (``SaveAt(steps=True)``, buffers of 1,024 and 4,096 rows), against outputs only: what
  a discrete adjoint pays in its forward pass.
- per right-hand-side evaluation, inside a ``lax.scan`` of many: the value, its VJP with
  respect to the state, and with respect to the state and the precomputed transport
  arrays (which is what a parameter gradient needs).

The floor: one step of the value makes six new right-hand-side evaluations (Tsit5 is
first-same-as-last); any reverse-mode gradient needs at least the six VJPs on top, so
``(value step + 6 x VJP) / value step`` bounds ``grad_over_value`` from below for this
right-hand side, whatever adjoint drives it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

sys.path.insert(0, str(Path(__file__).parent))
from _common import environment, timed, write_result  # noqa: E402
from _stagewise import StagewiseTsit5  # noqa: E402

from mscpk.api import build_model  # noqa: E402
from mscpk.dosing.regimen import Regimen  # noqa: E402
from mscpk.model.layout import fast_slots  # noqa: E402
from mscpk.solve.segments import SolverConfig, reachable, solve  # noqa: E402

_TABLEAU = diffrax.Tsit5.tableau
_A = [np.asarray(row) for row in _TABLEAU.a_lower]
_B = np.asarray(_TABLEAU.b_sol)
_C = np.asarray(_TABLEAU.c)


def timing_row(value: float, both: float, n_steps: int) -> dict:
    """A table row: value and value + gradient (s), their ratio and cost per step (us)."""
    return {
        "value_s": value,
        "value_and_grad_s": both,
        "grad_over_value": both / value,
        "value_us_per_step": value / n_steps * 1e6,
        "value_and_grad_us_per_step": both / n_steps * 1e6,
    }


def max_leaf_rel_diff(ref, other) -> float:
    """Largest difference between two gradient pytrees, leaf by leaf, relative to the
    reference leaf's largest entry."""
    return max(
        float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(a)) + 1e-300))
        for a, b in zip(jax.tree_util.tree_leaves(ref), jax.tree_util.tree_leaves(other), strict=True)
    )


def median_s(f, *args, repeat: int) -> float:
    """Median of ``repeat`` calls after a compiling one (:func:`_common.timed`)."""
    return timed(f, *args, repeat=repeat)[1]


def rhs(p, t, y, model, a0, live):
    """The solver's right-hand side on a segment after a bolus at t = 0 (as in
    :func:`mscpk.solve.segments.solve`: the fast pools in closed form from their values
    ``a0`` at the segment start, unreachable slots masked by ``live``)."""
    transport, k_fast = p
    return live * model.vector_field_from(transport, y, a0 * jnp.exp(-k_fast * t))


def tsit5_step(f, p, y0, t0, h):
    """One Tsit5 step, stage by stage with diffrax's tableau (the 7th, FSAL stage only
    feeds the error estimate and the next step, so it is left out)."""
    k = [f(p, t0, y0)]
    for i in range(6):
        yi = y0 + h * sum(float(_A[i][j]) * k[j] for j in range(i + 1))
        k.append(f(p, t0 + float(_C[i]) * h, yi))
    return y0 + h * sum(float(_B[j]) * k[j] for j in range(7) if _B[j] != 0)


_AMAT = np.zeros((6, 6))  # stage coefficients a_ij of the six stages that feed y1
for _i in range(1, 6):
    _AMAT[_i, :_i] = _A[_i - 1]


def stagewise_pullback(f, p, y0, t0, h, lam):
    """Cotangents (parameters, y0) of one Tsit5 step, stage by stage: the stages are
    recomputed, then a ``lax.scan`` walks them in reverse, each a separate ``jax.vjp``
    of the right-hand side (``dk_i = h (b_i lam + sum_m a_mi dY_m)``, ``dY_i`` its
    pullback). The scan keeps XLA from fusing the six transposes into one graph."""
    ys, ks = [], []
    for i in range(6):
        yi = y0 + h * sum(float(_AMAT[i, j]) * ks[j] for j in range(i)) if i else y0
        ys.append(yi)
        ks.append(f(p, t0 + float(([0.0] + list(_C))[i]) * h, yi))
    ys = jnp.stack(ys)
    a_t, b, c = jnp.asarray(_AMAT.T), jnp.asarray(_B[:6]), jnp.asarray(np.r_[0.0, _C[:5]])

    def body(carry, i):
        d_ys, acc = carry
        d_k = h * (b[i] * lam + a_t[i] @ d_ys)
        _, pull = jax.vjp(lambda p, y: f(p, t0 + c[i] * h, y), p, ys[i])
        d_p, d_y = pull(d_k)
        return (d_ys.at[i].set(d_y), jax.tree_util.tree_map(jnp.add, acc, d_p)), None

    zero = jax.tree_util.tree_map(jnp.zeros_like, p)
    (d_ys, d_p), _ = jax.lax.scan(body, (jnp.zeros_like(ys), zero), jnp.arange(5, -1, -1))
    return d_p, lam + d_ys.sum(0)


def make_discrete_adjoint(f, stagewise: bool):
    """A fixed-mesh Tsit5 trajectory (states after every step) under ``jax.custom_vjp``:
    the backward pass walks the stored states in reverse, pulling the cotangent through
    one step at a time (``jax.vjp`` of the whole step, or :func:`stagewise_pullback`)."""

    @jax.custom_vjp
    def trajectory(p, y0, ts, hs):
        return jax.lax.scan(lambda y, th: (tsit5_step(f, p, y, *th),) * 2, y0, (ts, hs))[1]

    def forward(p, y0, ts, hs):
        ys = trajectory(p, y0, ts, hs)
        return ys, (p, y0, ys, ts, hs)

    def backward(res, g):
        p, y0, ys, ts, hs = res
        starts = jnp.concatenate([y0[None], ys[:-1]])

        def body(carry, x):
            lam, acc = carry
            y, t0, h, g_k = x
            if stagewise:
                g_p, lam = stagewise_pullback(f, p, y, t0, h, lam + g_k)
            else:
                _, pull = jax.vjp(lambda p, y: tsit5_step(f, p, y, t0, h), p, y)
                g_p, lam = pull(lam + g_k)
            return (lam, jax.tree_util.tree_map(jnp.add, acc, g_p)), None

        zero = jax.tree_util.tree_map(jnp.zeros_like, p)
        (lam, g_p), _ = jax.lax.scan(body, (jnp.zeros_like(y0), zero), (starts, ts, hs, g), reverse=True)
        return g_p, lam, jnp.zeros_like(ts), jnp.zeros_like(hs)

    trajectory.defvjp(forward, backward)
    return trajectory


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--evals", type=int, default=1320, help="RHS evaluations per timed scan")
    args = parser.parse_args(argv)
    model = build_model("mouse", "bm_msc")
    table = Regimen.bolus(1e6).table()
    times = jnp.linspace(24.0, 720.0, 30)
    config = SolverConfig(rtol=1e-6, atol=1e-11, max_steps=100_000, checkpoints=64)

    def loss_of(ys):  # a scalar of 30 x 60 outputs, as a likelihood would use them
        return jnp.sum(jnp.log1p(jnp.abs(ys[:, :60])))

    def diffrax_loss(m):
        return loss_of(solve(m, table, times, 720.0, config).ys)

    n_steps = int(eqx.filter_jit(lambda m: solve(m, table, times, 720.0, config).n_steps)(model))
    mesh = jnp.linspace(0.0, 720.0, n_steps + 1)
    every = max(n_steps // 30, 1)
    row = jax.tree_util.tree_map(lambda a: a[0], table)
    y0 = row.cells * model.dose_vector(row)
    a0 = y0[jnp.asarray(fast_slots(model.n_size_classes))]
    live = reachable(model, model.transport(), y0 != 0).astype(float)
    field = lambda p, t, y: rhs(p, t, y, model, a0, live)  # noqa: E731
    adjoints = {False: make_discrete_adjoint(field, False), True: make_discrete_adjoint(field, True)}

    def scan_loss(m, adjoint, stagewise=False):
        tr = m.transport()
        p = (tr, m.fast_rates(tr))
        if adjoint:
            ys = adjoints[stagewise](p, y0, mesh[:-1], jnp.diff(mesh))
        else:
            step = lambda y, th: (tsit5_step(lambda p, t, y: rhs(p, t, y, m, a0, live), p, y, *th),) * 2  # noqa: E731
            ys = jax.lax.scan(step, y0, (mesh[:-1], jnp.diff(mesh)))[1]
        return loss_of(ys[::every])

    rows = {}
    for name, f in (
        ("diffrax", diffrax_loss),
        ("straight-line scan", lambda m: scan_loss(m, False)),
        ("hand-written discrete adjoint", lambda m: scan_loss(m, True)),
        ("same, stage-wise pullback", lambda m: scan_loss(m, True, True)),
    ):
        value = median_s(eqx.filter_jit(f), model, repeat=args.repeat)
        both = median_s(eqx.filter_jit(eqx.filter_value_and_grad(f)), model, repeat=args.repeat)
        rows[name] = timing_row(value, both, n_steps)
    g_ref = eqx.filter_jit(eqx.filter_grad(lambda m: scan_loss(m, False)))(model)

    def max_rel_diff(stagewise):
        return max_leaf_rel_diff(
            g_ref, eqx.filter_jit(eqx.filter_grad(lambda m: scan_loss(m, True, stagewise)))(model)
        )

    rel = {"whole step": max_rel_diff(False), "stage-wise": max_rel_diff(True)}

    # diffrax's own loop, its step differentiated by JAX or by the stage-wise rule.
    class Field(eqx.Module):
        p: tuple

        def __call__(self, t, y, args):
            return rhs(self.p, t, y, model, a0, live)

    def module_loss(solver, checkpoints):
        def loss(m, t0):
            tr = m.transport()
            sol = diffrax.diffeqsolve(
                diffrax.ODETerm(Field((tr, m.fast_rates(tr)))),
                solver,
                t0,
                720.0,
                None,
                y0,
                saveat=diffrax.SaveAt(ts=times),
                stepsize_controller=config.make_controller(config.atol * 1e6),
                max_steps=100_000,
                throw=False,
                adjoint=diffrax.RecursiveCheckpointAdjoint(checkpoints),
            )
            return loss_of(sol.ys)

        return loss

    t0 = jnp.asarray(0.0)
    module_fns = {
        f"diffrax, module field, {label}, {ck} checkpoints": module_loss(solver, ck)
        for ck in (64, 256)
        for label, solver in (("JAX step rule", diffrax.Tsit5()), ("stage-wise step rule", StagewiseTsit5()))
    }
    for name, f in module_fns.items():
        value = median_s(eqx.filter_jit(f), model, t0, repeat=args.repeat)
        both = median_s(
            eqx.filter_jit(eqx.filter_value_and_grad(lambda mt, f=f: f(*mt))), (model, t0), repeat=args.repeat
        )
        rows[name] = timing_row(value, both, n_steps)
    g_jax, g_stage = (
        eqx.filter_jit(eqx.filter_grad(lambda mt, f=f: f(*mt)))((model, t0))
        for f in (module_loss(diffrax.Tsit5(), 64), module_loss(StagewiseTsit5(), 64))
    )
    rel["diffrax loop, stage-wise step rule vs JAX's"] = max_leaf_rel_diff(g_jax, g_stage)

    # What a discrete adjoint must also pay in its forward pass: the state after every
    # accepted step, kept by diffrax (SaveAt(steps=True)) in a buffer of max_steps rows.
    def stored(m, cap):
        tr = m.transport()
        p = (tr, m.fast_rates(tr))
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(lambda t, y, args: field(p, t, y)),
            diffrax.Tsit5(),
            0.0,
            720.0,
            None,
            y0,
            saveat=diffrax.SaveAt(
                subs=(diffrax.SubSaveAt(ts=times, t1=True),)
                + ((diffrax.SubSaveAt(steps=True),) if cap else ())
            ),
            stepsize_controller=config.make_controller(config.atol * 1e6),
            max_steps=cap or 4096,
            throw=False,
        )
        return loss_of(sol.ys[0]) + (jnp.sum(sol.ys[1][0]) if cap else 0.0)

    storage = {
        f"max_steps {cap or 4096}, {'every step stored' if cap else 'outputs only'}_s": median_s(
            eqx.filter_jit(lambda m, cap=cap: stored(m, cap)), model, repeat=args.repeat
        )
        for cap in (0, 1024, 4096)
    }

    tr = model.transport()
    p = (tr, model.fast_rates(tr))
    y = jnp.asarray(np.random.default_rng(0).uniform(0.5, 1.5, model.n_states)) * 1e4
    n = args.evals

    def per_eval(body, init):
        run = jax.jit(lambda p, c: jax.lax.scan(lambda c, _: (body(p, c), None), c, None, length=n)[0])
        return median_s(run, p, init, repeat=args.repeat) / n * 1e6

    def f_body(p, c):
        return c + 1e-6 * rhs(p, 1.0, c, model, a0, live)

    def vjp_y_body(p, c):
        y_k, lam = c
        _, pull = jax.vjp(lambda y: rhs(p, 1.0, y, model, a0, live), y_k)
        return y_k * 0.999, lam + 1e-6 * pull(lam)[0]

    def vjp_py_body(p, c):
        y_k, lam, acc = c
        _, pull = jax.vjp(lambda p, y: rhs(p, 1.0, y, model, a0, live), p, y_k)
        g_p, g_y = pull(lam)
        return y_k * 0.999, lam + 1e-6 * g_y, jax.tree_util.tree_map(jnp.add, acc, g_p)

    zero = jax.tree_util.tree_map(jnp.zeros_like, p)
    per_rhs = {
        "value_us": per_eval(f_body, y),
        "vjp_state_us": per_eval(vjp_y_body, (y, y)),
        "vjp_state_and_transport_us": per_eval(vjp_py_body, (y, y, zero)),
    }
    value_step = rows["diffrax"]["value_us_per_step"]
    floor = (value_step + 6 * per_rhs["vjp_state_and_transport_us"]) / value_step
    result = {
        "benchmark": "adjoint floor: per-step cost of value and reverse-mode gradient",
        "setting": "mouse, bm_msc, 1e6 cells IV, 30 d, rtol 1e-6, atol 1e-11 x dose, 64 checkpoints",
        "accepted_steps": n_steps,
        "rows": rows,
        "per_rhs_evaluation": per_rhs,
        "forward_with_stored_steps": storage,
        "grad_over_value_floor": floor,
        "discrete_adjoint_max_rel_diff_vs_scan_autodiff": rel,
        "transport_leaves": len(jax.tree_util.tree_leaves(tr)),
        "repeat": args.repeat,
        **environment(),
    }
    print(f"accepted steps: {n_steps}")
    print(f"{'':62s} {'value':>10s} {'value+grad':>11s} {'ratio':>6s} {'us/step':>8s} {'(v+g)/step':>11s}")
    for name, r in rows.items():
        print(
            f"{name:62s} {r['value_s'] * 1e3:8.2f}ms {r['value_and_grad_s'] * 1e3:9.2f}ms "
            f"{r['grad_over_value']:6.2f} {r['value_us_per_step']:8.1f} {r['value_and_grad_us_per_step']:11.1f}"
        )
    print("per RHS evaluation (us):", {k: round(v, 2) for k, v in per_rhs.items()})
    print("forward value, storing every step (s):", {k: round(v, 5) for k, v in storage.items()})
    print(f"floor for grad_over_value (value step + 6 VJPs): {floor:.2f}")
    print(f"discrete adjoints vs autodiff through the scan, max rel diff: {rel}")
    write_result("adjoint-floor", result)


if __name__ == "__main__":
    main()
