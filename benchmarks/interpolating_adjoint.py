"""Would a continuous (interpolating) adjoint built from diffrax's own solves beat the
checkpointed discrete adjoint on ``grad_over_value`` (issue 7)? Measured side by side
in one process.

Run: ``python benchmarks/interpolating_adjoint.py [--repeat 7]``. Prints a table and
writes ``benchmarks/results/interpolating-adjoint-<device>.json`` with machine, versions
and device.

Setting: :mod:`adjoint_floor`'s (mouse, BM-MSC, 1e6 cells IV, 30 days, 30 daily outputs
from day 1, the evidence likelihood's rtol 1e-6 and atol 1e-11 x dose, a scalar of the
outputs differentiated with respect to every model parameter).

The interpolating adjoint (as SciMLSensitivity's ``InterpolatingAdjoint``; diffrax has
only the discrete ``RecursiveCheckpointAdjoint`` and the ``BacksolveAdjoint``, which
integrates the state backwards: unstable for this dissipative model, whose clearance
modes grow without bound in reverse time):

- forward: ``diffeqsolve`` with ``SaveAt(ts=outputs, dense=True)`` (Tsit5's dense
  output, a buffer of ``--dense-steps`` rows);
- backward: on each interval between outputs, last to first, a second ``diffeqsolve``
  from the later time to the earlier one of ``lambda' = -J^T lambda`` (``J`` the
  Jacobian of the right-hand side at the state read from the dense output, by
  ``jax.vjp``) and ``mu' = -(df/dp)^T lambda`` (``mu`` the parameters' cotangent, flat,
  4,503 transport numbers), adding each output's cotangent to ``lambda`` at its time;
  the error control sees ``lambda`` only;
- the gradient is ``mu(0)`` pulled back to the model's parameters through
  :meth:`mscpk.Model.transport` by JAX, the solve wrapped in ``jax.custom_vjp``.

Its gradient is that of the continuous problem, not of the computed value, so it is
compared with the discrete one (relative 2-norm over every parameter). Component rows
time the backward solve alone from the last output's cotangent (no parameter part, no
interpolation: the state frozen at one output), then with the dense interpolation, then
with the parameter part: where the time goes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

jax.config.update("jax_enable_x64", True)

sys.path.insert(0, str(Path(__file__).parent))
from _common import environment, write_result  # noqa: E402
from adjoint_floor import median_s, rhs, timing_row  # noqa: E402

from mscpk.api import build_model  # noqa: E402
from mscpk.dosing.regimen import Regimen  # noqa: E402
from mscpk.model.layout import fast_slots  # noqa: E402
from mscpk.solve.segments import SolverConfig, max_norm, reachable, solve  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--dense-steps", type=int, default=4096, help="rows of the dense-output buffer")
    parser.add_argument("--lambda-atol", type=float, default=1e-12, help="backward solve's atol on lambda")
    args = parser.parse_args(argv)
    model = build_model("mouse", "bm_msc")
    table = Regimen.bolus(1e6).table()
    times = jnp.linspace(24.0, 720.0, 30)
    config = SolverConfig(rtol=1e-6, atol=1e-11, max_steps=100_000, checkpoints=64)
    row = jax.tree_util.tree_map(lambda a: a[0], table)
    y0 = row.cells * model.dose_vector(row)
    live = reachable(model, model.transport(), y0 != 0).astype(float)
    n = y0.size
    cap = args.dense_steps

    def field(q, t, y):  # q: transport, fast-pool rates, fast pools' start values
        tr, k_fast, a_start = q
        return rhs((tr, k_fast), t, y, model, a_start, live)

    def params(m):
        """The right-hand side's parameters and the start state, as :func:`solve` makes
        them from the model (the dose vector depends on it: first-pass trapping)."""
        tr = m.transport()
        start = row.cells * m.dose_vector(row)
        return (tr, m.fast_rates(tr), start[jnp.asarray(fast_slots(m.n_size_classes))]), start

    def loss_of(ys):  # adjoint_floor's scalar of 30 x 60 outputs
        return jnp.sum(jnp.log1p(jnp.abs(ys[:, :60])))

    def forward(p, start, dense):
        return diffrax.diffeqsolve(
            diffrax.ODETerm(lambda t, y, p: field(p, t, y)),
            diffrax.Tsit5(),
            0.0,
            720.0,
            None,
            start,
            args=p,
            saveat=diffrax.SaveAt(ts=times, dense=dense),
            stepsize_controller=config.make_controller(config.atol * 1e6),
            max_steps=cap,
            throw=False,
        )

    def backward_solve(p, state, t_from, t_to, state_at, with_params):
        """lambda (and mu) from ``t_from`` back to ``t_to``; ``state_at(t)``: the forward
        state there. Returns the final augmented state, the accepted steps and whether the
        solve succeeded."""

        def aug(t, s, _):
            lam = s[:n]
            if with_params:
                _, pull = jax.vjp(lambda p, y: field(p, t, y), p, state_at(t))
                g_p, g_y = pull(lam)
                return -jnp.concatenate([g_y, ravel_pytree(g_p)[0]])
            _, pull = jax.vjp(lambda y: field(p, t, y), state_at(t))
            return -pull(lam)[0]

        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(aug),
            diffrax.Tsit5(),
            t_from,
            t_to,
            None,
            state,
            stepsize_controller=diffrax.PIDController(
                rtol=config.rtol, atol=args.lambda_atol, norm=lambda s: max_norm(s[:n])
            ),
            max_steps=cap,
            throw=False,
        )
        return sol.ys[-1], sol.stats["num_accepted_steps"], sol.result == diffrax.RESULTS.successful

    @jax.custom_vjp
    def outputs(p, start):
        return forward(p, start, False).ys

    def outputs_fwd(p, start):
        sol = forward(p, start, True)
        return sol.ys, (p, sol)

    def backward_pass(p, sol, g):
        """lambda and mu from the last output back to t = 0, interval by interval, each
        output's cotangent ``g[k]`` added at its time. Returns the augmented state at 0
        and each interval's accepted steps and success."""
        bounds = jnp.concatenate([jnp.zeros(1), times])

        def interval(s, k):
            s, steps, ok = backward_solve(p, s.at[:n].add(g[k]), bounds[k + 1], bounds[k], sol.evaluate, True)
            return s, (steps, ok)

        start = jnp.zeros(n + ravel_pytree(p)[0].size)
        return jax.lax.scan(interval, start, jnp.arange(times.size - 1, -1, -1))

    def outputs_bwd(res, g):
        p, sol = res
        s, _ = backward_pass(p, sol, g)
        return ravel_pytree(p)[1](s[n:]), s[:n]

    outputs.defvjp(outputs_fwd, outputs_bwd)

    def discrete_loss(m):
        return loss_of(solve(m, table, times, 720.0, config).ys)

    def interpolating_loss(m):
        return loss_of(outputs(*params(m)))

    n_steps = int(eqx.filter_jit(lambda m: solve(m, table, times, 720.0, config).n_steps)(model))
    rows = {}
    for name, f in (
        ("diffrax, RecursiveCheckpointAdjoint(64)", discrete_loss),
        ("interpolating adjoint", interpolating_loss),
    ):
        value = median_s(eqx.filter_jit(f), model, repeat=args.repeat)
        both = median_s(eqx.filter_jit(eqx.filter_value_and_grad(f)), model, repeat=args.repeat)
        rows[name] = timing_row(value, both, n_steps)

    # Backward steps and success of every interval, and the gradients' agreement.
    p, start = params(model)
    sol = eqx.filter_jit(forward)(p, start, True)
    flat, _ = ravel_pytree(p)
    g_out = jax.grad(loss_of)(sol.ys)

    steps, ok = jax.jit(backward_pass)(p, sol, g_out)[1]
    g_ref, g_int = (
        ravel_pytree(eqx.filter(eqx.filter_jit(eqx.filter_grad(f))(model), eqx.is_inexact_array))[0]
        for f in (discrete_loss, interpolating_loss)
    )
    rel = float(jnp.linalg.norm(g_int - g_ref) / jnp.linalg.norm(g_ref))

    # Where the backward pass's time goes: one solve from day 30 back to 0.
    frozen = sol.ys[-1]
    parts = {}
    for label, state_at, with_params in (
        ("lambda only, state frozen", lambda t: frozen, False),
        ("lambda only, state from the dense output", sol.evaluate, False),
        ("lambda and mu, state from the dense output", sol.evaluate, True),
    ):
        start = g_out[-1] if not with_params else jnp.zeros(n + flat.size).at[:n].set(g_out[-1])
        run = jax.jit(
            lambda s, state_at=state_at, w=with_params: backward_solve(p, s, 720.0, 0.0, state_at, w)[:2]
        )
        k = int(run(start)[1])
        t = median_s(run, start, repeat=args.repeat)
        parts[label] = {"s": t, "accepted_steps": k, "us_per_step": t / k * 1e6}

    value = rows["diffrax, RecursiveCheckpointAdjoint(64)"]["value_s"]
    result = {
        "benchmark": "interpolating (continuous) adjoint from two diffrax solves vs the discrete adjoint",
        "setting": "mouse, bm_msc, 1e6 cells IV, 30 d, 30 outputs, rtol 1e-6, atol 1e-11 x dose",
        "accepted_steps_forward": n_steps,
        "accepted_steps_backward": int(steps.sum()),
        "forward_solved": bool(sol.result == diffrax.RESULTS.successful),
        "backward_intervals_solved": bool(ok.all()),
        "dense_buffer_rows": cap,
        "lambda_atol": args.lambda_atol,
        "rows": rows,
        "interpolating_over_discrete_value": rows["interpolating adjoint"]["value_and_grad_s"] / value,
        "backward_components": parts,
        "gradient_rel_diff_vs_discrete": rel,
        "repeat": args.repeat,
        **environment(),
    }
    print(f"forward accepted steps {n_steps}; backward {int(steps.sum())} over {times.size} intervals")
    print(f"{'':44s} {'value':>10s} {'value+grad':>11s} {'ratio':>6s}")
    for name, r in rows.items():
        print(
            f"{name:44s} {r['value_s'] * 1e3:8.2f}ms {r['value_and_grad_s'] * 1e3:9.2f}ms {r['grad_over_value']:6.2f}"
        )
    for label, r in parts.items():
        print(
            f"backward, {label:44s} {r['s'] * 1e3:8.2f}ms {r['accepted_steps']:5d} steps {r['us_per_step']:7.1f} us/step"
        )
    print(f"gradient vs the discrete one, relative 2-norm: {rel:.2e}")
    write_result("interpolating-adjoint", result)


if __name__ == "__main__":
    main()
