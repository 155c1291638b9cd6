"""An experiment of ``adjoint_floor.py``: diffrax's explicit Runge-Kutta step with its
reverse-mode derivative taken stage by stage (``equinox.filter_custom_vjp``). Not used by
mscpk: inside diffrax's ``RecursiveCheckpointAdjoint`` it was slower than JAX's own
derivative of the step (session 27; ``adjoint_floor.py``, rows ``diffrax, module field``).

The forward pass of every step *is* diffrax's ``step`` (same tableau, FSAL handling,
error estimate and dense output, bit for bit); only the rule by which JAX differentiates
one step is replaced. diffrax still drives the loop, its checkpoints, the controller and
the interpolation at the output times, and calls this rule for each step it walks back
over. Session 26 had measured the stage-wise pullback at about half the cost of JAX's
transpose of a whole step in a hand-written loop; the question was whether that carries
over into diffrax's loop without writing one.

The step, for an explicit tableau ``(A, b, e, c)`` that is first-same-as-last and
solution-at-last-stage (Tsit5, Dopri5 and Dopri8 in diffrax are both)::

    dt = t1 - t0,   control = term.contr(t0, t1)
    f_0 = f0 (solver state; evaluated as F(t0, y0) on the first step or after a jump)
    z_i = y0 + sum_{j<i} A_ij k_j,   f_i = F(t_i, z_i),   k_i = prod(f_i, control)
    t_i = t0 + c_i dt   (t1 where c_i = 1)
    y1 = z_{s-1},   y_err = sum_j e_j k_j,   dense = (y0, y1, k),   f0_next = f_{s-1}

and its pullback walks ``i = s-1 ... 1`` with ``k_bar_i`` complete once every later
stage has added ``A_mi z_bar_m``: one ``jax.vjp`` of ``(F, prod)`` at ``(t_i, z_i)``
per stage, then stage 0 (through ``F`` or into the solver state, as the forward went).
Gradients with respect to the term's arrays, ``args``, ``y0``, ``t0``, ``t1`` and the
FSAL state are all returned; ``adjoint_floor.py`` checks them against JAX's.
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np


def _tableau_arrays(tableau, dtype):
    s = tableau.num_stages
    a = np.zeros((s, s))
    for i, row in enumerate(tableau.a_lower):
        a[i + 1, : i + 1] = row
    c = np.zeros(s)
    c[0] = tableau.c1
    c[1:] = tableau.c
    return jnp.asarray(a, dtype), jnp.asarray(tableau.b_error, dtype), c


def _add(a, b):
    return jtu.tree_map(
        lambda x, y: x if y is None else (y if x is None else x + y), a, b, is_leaf=lambda x: x is None
    )


def _stage(terms, args, t, z, control):
    f = terms.vf(t, z, args)
    return f, terms.prod(f, control)


@eqx.filter_custom_vjp
def _step(primals, solver, made_jump):
    terms, t0, t1, y0, args, solver_state = primals
    return solver._library_step(terms, t0, t1, y0, args, solver_state, made_jump)


@_step.def_fwd
def _step_fwd(perturbed, primals, solver, made_jump):
    del perturbed
    out = _step.fn(primals, solver, made_jump)
    return out, out[2]["k"]


@_step.def_bwd
def _step_bwd(ks, grads, perturbed, primals, solver, made_jump):
    del perturbed
    terms, t0, t1, y0, args, solver_state = primals
    first_step, f0 = solver_state
    g_y1, g_err, g_dense, g_state, _ = grads
    zeros = jnp.zeros_like(y0)

    def filled(g):
        return zeros if g is None else g

    g_dense = g_dense or {}
    g_f1 = zeros if g_state is None else filled(g_state[1])
    a, e, c = _tableau_arrays(solver.tableau, y0.dtype)
    s = a.shape[0]
    g_k = e[:, None] * filled(g_err)[None, :]
    if g_dense.get("k") is not None:
        g_k = g_k + g_dense["k"]
    dt = t1 - t0
    control, control_pull = jax.vjp(lambda t0, t1: terms.contr(t0, t1), t0, t1)
    stage = lambda t, z, terms, args, control: _stage(terms, args, t, z, control)  # noqa: E731
    diff = (terms, args)
    zero_diff = jtu.tree_map(jnp.zeros_like, eqx.filter(diff, eqx.is_inexact_array))
    c_arr = jnp.asarray(c, jnp.result_type(t0, t1))

    def body(carry, i):
        g_k, g_y0, g_diff, g_t0, g_t1, g_control = carry
        z = y0 + a[i] @ ks
        t_i = jnp.where(c_arr[i] == 1, t1, t0 + c_arr[i] * dt)
        _, pull = eqx.filter_vjp(lambda t, z, d, control: stage(t, z, *d, control), t_i, z, diff, control)
        g_f = jnp.where(i == s - 1, g_f1, 0.0)
        g_t, g_z, g_d, g_c = pull((g_f, g_k[i]))
        g_z = g_z + jnp.where(i == s - 1, filled(g_y1) + filled(g_dense.get("y1")), 0.0)
        g_k = g_k + a[i][:, None] * g_z[None, :]
        carry = (
            g_k,
            g_y0 + g_z,
            _add(g_diff, g_d),
            g_t0 + (1.0 - c_arr[i]) * g_t,
            g_t1 + c_arr[i] * g_t,
            g_control + g_c,
        )
        return carry, None

    t_zero = jnp.zeros_like(jnp.asarray(t0, float))
    init = (g_k, filled(g_dense.get("y0")), zero_diff, t_zero, t_zero, jtu.tree_map(jnp.zeros_like, control))
    (g_k, g_y0, g_diff, g_t0, g_t1, g_control), _ = jax.lax.scan(body, init, jnp.arange(s - 1, 0, -1))

    # Stage 0: evaluated here on the first step (or after a jump), else the FSAL state.
    eval_first = eqxi.unvmap_any(first_step | made_jump)
    f_0 = jnp.where(eval_first, 0.0, f0)
    _, pull0 = eqx.filter_vjp(lambda f, control: terms.prod(f, control), f_0, control)
    g_f0_state, g_c0 = pull0(g_k[0])

    def through_field(_):
        _, pull = eqx.filter_vjp(lambda t, z, d, control: stage(t, z, *d, control), t0, y0, diff, control)
        g_t, g_z, g_d, g_c = pull((zeros, g_k[0]))
        return g_t, g_z, _add(zero_diff, g_d), g_c

    def from_state(_):
        return t_zero, zeros, zero_diff, jtu.tree_map(jnp.zeros_like, control)

    g_t, g_z, g_d, g_c = jax.lax.cond(eval_first, through_field, from_state, None)
    g_f0_state = jnp.where(eval_first, 0.0, g_f0_state)
    g_y0 = g_y0 + g_z
    g_diff = _add(g_diff, g_d)
    g_control = g_control + g_c + jnp.where(eval_first, 0.0, g_c0)
    g_ct0, g_ct1 = control_pull(g_control)
    g_t0 = g_t0 + g_t + g_ct0
    g_t1 = g_t1 + g_ct1
    g_terms, g_args = g_diff
    return (g_terms, g_t0, g_t1, g_y0, g_args, (None, g_f0_state))


class _Stagewise:
    """Mixin: diffrax's step forward, :func:`_step`'s stage-wise rule backward."""

    def _library_step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        return super().step(terms, t0, t1, y0, args, solver_state, made_jump)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        return _step((terms, t0, t1, y0, args, solver_state), self, made_jump)


class StagewiseTsit5(_Stagewise, diffrax.Tsit5):
    """diffrax's ``Tsit5`` with the stage-wise reverse-mode rule of this module."""
