"""Exact solution of the linear configuration by matrix exponentials.

With every saturable mechanism off the model is ``dy/dt = A y + u`` with ``u`` constant
between dose events, so on each segment

.. math::

    \\begin{pmatrix} y(t) \\\\ 1 \\end{pmatrix}
    = \\exp\\!\\left( (t - t_0) \\begin{pmatrix} A & u \\\\ 0 & 0 \\end{pmatrix} \\right)
      \\begin{pmatrix} y(t_0) \\\\ 1 \\end{pmatrix}.

It uses the same event schedule as :func:`mscpk.solve.segments.solve` and serves as the
reference that the adaptive solver is tested and benchmarked against.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.linalg import expm
from jaxtyping import Array, Float

from ..dosing.regimen import DoseTable
from ..model.model import Model
from .segments import Solution, event_schedule, infusion_rate


def solve_expm(model: Model, table: DoseTable, times_h: Float[Array, " T"], t_end_h) -> Solution:
    """States at ``times_h`` by matrix exponentials (linear configuration only)."""
    times_h = jnp.asarray(times_h, dtype=float)
    t_end_h = jnp.asarray(t_end_h, dtype=float)
    a = model.linear_matrix()
    n = a.shape[0]
    bounds, jumps, per_cell, to_blood = event_schedule(table, model, t_end_h)
    n_seg = bounds.shape[0] - 1
    last = jnp.arange(n_seg) == n_seg - 1

    def propagate(aug, y, dt):
        return (expm(aug * dt) @ jnp.append(y, 1.0))[:n]

    def segment(carry, k):
        y, out, blood = carry
        t0, t1 = bounds[k], bounds[k + 1]
        y = y + jnp.where(k > 0, jumps[jnp.maximum(k - 1, 0)], 0.0)
        rate = infusion_rate(table, 0.5 * (t0 + t1))
        u = rate @ per_cell
        aug = jnp.zeros((n + 1, n + 1)).at[:n, :n].set(a).at[:n, n].set(u)
        ys = jax.vmap(lambda t: propagate(aug, y, jnp.clip(t, t0, t1) - t0))(times_h)
        in_seg = (times_h >= t0) & ((times_h < t1) | (last[k] & (times_h <= t1)))
        out = out + jnp.where(in_seg[:, None], ys, 0.0)
        blood = blood + jnp.where(in_seg[:, None], (rate @ to_blood)[None, :], 0.0)
        return (propagate(aug, y, t1 - t0), out, blood), None

    n_t = times_h.shape[0]
    init = (jnp.zeros(n), jnp.zeros((n_t, n)), jnp.zeros((n_t, model.n_size_classes)))
    (_, ys, blood), _ = jax.lax.scan(segment, init, jnp.arange(n_seg))
    return Solution(ts=times_h, ys=ys, blood_input=blood, success=jnp.array(True), n_steps=jnp.array(0))
