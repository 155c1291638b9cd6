"""Where a NUTS run diverged: exact replay of its saved transitions.

NumPyro keeps only the accepted draw of a transition, so a divergent transition's saved
draw is a point of the trajectory before it diverged, not where. A resumable run
(:func:`~mscpk.calibration.fit.run_nuts_resumable`) saves every draw and the run's keys,
and NumPyro's key sequence does not depend on the trajectories (iteration ``i`` uses
``split(key_i, 3)``, ``key_{i+1}`` being the first of the three), so a transition of the
draws phase can be computed again: from the previous draw, with the chain's adapted step
size and mass matrix (fixed after warm-up) and the iteration's key, through NumPyro's own
kernel. The potential and kinetic energies are recorded at every leapfrog step
(``jax.debug.callback``), which gives the whole trajectory, its energy error, and the
point where it diverged; there the log-density is split into its prior and per-row
evidence terms, to show which data rows or parameters make the posterior's shape hard
for the sampler.

The replay is exact up to floating-point order (a chain saved from a ``pmap`` over host
devices replayed alone); :func:`replay` reports whether it reproduced the saved draw.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax.flatten_util import ravel_pytree
from numpyro.distributions import biject_to
from numpyro.infer import NUTS, init_to_value
from numpyro.infer.hmc import HMCState
from numpyro.infer.hmc_util import euclidean_kinetic_energy
from numpyro.infer.util import initialize_model

from .fit import _load, _run_config_file, problem_of_run, set_up_kernel
from .problem import CalibrationProblem

#: NumPyro's divergence threshold on the energy error (nats), NUTS's default.
MAX_DELTA_ENERGY = 1000.0


@dataclass
class Transition:
    """One replayed NUTS transition of chain ``chain`` at iteration ``iteration``.

    ``trajectory``: one line per leapfrog step in the order computed (``step``,
    ``potential`` energy, ``kinetic`` energy, ``delta_energy`` from the start, ``finite``);
    ``positions``: (steps, d) unconstrained positions of those steps, flattened in
    ``names`` order; ``start``: the unconstrained start (d,); ``diverged``: whether the
    replay diverged; ``divergent_step``: the step whose energy error passed
    :data:`MAX_DELTA_ENERGY` (or was not finite), ``None`` if none; ``reproduced``: the
    replay's accepted draw and divergence flag equal the saved ones (to 1e-6 relative).
    """

    chain: int
    iteration: int
    names: list
    start: np.ndarray
    trajectory: pd.DataFrame
    positions: np.ndarray
    diverged: bool
    divergent_step: int | None
    reproduced: bool
    saved_diverging: bool


class RunReplay:
    """Replays the saved transitions of a resumable run in ``directory``.

    ``problem``: the run's problem (default :func:`~mscpk.calibration.fit.problem_of_run`).
    Only draws-phase transitions replay (the warm-up changes the step size and mass
    matrix every iteration, and only the last state is kept); a run whose saved states
    were all slimmed away (``benchmarks/slim_run.py`` keeps the last piece's) is a
    ``ValueError``.
    """

    def __init__(self, directory, problem: CalibrationProblem | None = None):
        self.directory = Path(directory)
        self.config = _run_config_file(self.directory)
        self.problem = problem_of_run(self.directory) if problem is None else problem
        paths = sorted(self.directory.glob("piece_*.pkl"))
        if not paths:
            raise ValueError(f"directory: {self.directory} holds no saved piece yet")
        pieces = [_load(p) for p in paths]
        self.init_state = _load(self.directory / "init.pkl")["state"]
        self.warmup = int(self.config["warmup"])
        self.chains = int(self.config["chains"])
        final = [x["state"] for x in pieces if x["state"] is not None and x["phase"] == "draws"]
        if not final:
            raise ValueError(f"directory: {self.directory} keeps no state of its draws phase to replay from")
        self.final_state = final[-1]
        self.samples = {
            k: np.concatenate([np.asarray(x["samples"][k]) for x in pieces], axis=1)
            for k in pieces[0]["samples"]
        }
        self.diverging = np.concatenate([np.asarray(x["extra"]["diverging"]) for x in pieces], axis=1)
        self.iterations = self.diverging.shape[1]
        self._setup()

    # --------------------------------------------------------------- set-up
    def _chain(self, tree, c):
        return jax.tree.map(lambda x: np.asarray(x)[c] if self.chains > 1 else np.asarray(x), tree)

    def _setup(self):
        problem = self.problem
        start = {k: jnp.asarray(self.samples[k][0, -1]) for k in self.samples}
        info = initialize_model(
            jax.random.PRNGKey(0),
            problem.model,
            init_strategy=init_to_value(values=start),
            validate_grad=False,
        )
        sites = {
            name: site
            for name, site in info.model_trace.items()
            if site["type"] == "sample" and not site["is_observed"]
        }
        self._transforms = {name: biject_to(site["fn"].support) for name, site in sites.items()}
        self.names = sorted(self._transforms)
        z0 = {k: jnp.asarray(self._unconstrain_one(k, start[k])) for k in self.names}
        flat, self._unravel = ravel_pytree(z0)
        self._record: list = []
        # The problem's potential (NumPyro's potential of the same model) and its compiled
        # value and gradient: one program with the fit's, found in the persistent
        # compilation cache when the fit ran before with the same settings.
        potential = problem.potential

        def recorded_potential(z):
            value = potential(z)
            jax.debug.callback(
                lambda x, v: self._record.append(("pe", np.array(x), float(v))), ravel_pytree(z)[0], value
            )
            return value

        def recorded_kinetic(inverse_mass_matrix, r):
            value = euclidean_kinetic_energy(inverse_mass_matrix, r)
            jax.debug.callback(lambda v: self._record.append(("ke", None, float(v))), value)
            return value

        # NumPyro's own kinetic gradient (otherwise it differentiates the recording function,
        # which then records the half steps' momenta as well).
        recorded_kinetic._kinetic_grad = euclidean_kinetic_energy._kinetic_grad
        kernel = NUTS(
            potential_fn=recorded_potential,
            kinetic_fn=recorded_kinetic,
            dense_mass=bool(self.config.get("dense_mass", False)),
            max_tree_depth=int(self.config["max_tree_depth"]),
            target_accept_prob=float(self.config["target_accept"]),
        )
        set_up_kernel(kernel, self.warmup, z0)
        self._kernel = kernel
        self._sample = jax.jit(lambda s: kernel.sample(s, (), {}))
        self._value_and_grad = problem.value_and_grad
        self._potential = potential
        self._record.clear()

    def _unconstrain_one(self, name, value):
        return self._transforms[name].inv(jnp.asarray(value))

    def unconstrained(self, chain: int, iteration: int) -> dict:
        """The saved draw of ``chain`` at ``iteration`` on the unconstrained scale."""
        return {k: self._unconstrain_one(k, self.samples[k][chain, iteration]) for k in self.names}

    def constrained(self, flat) -> dict:
        """Constrained values of a flat unconstrained position (``names`` order)."""
        z = self._unravel(jnp.asarray(flat))
        return {k: self._transforms[k](z[k]) for k in self.names}

    def key(self, chain: int, iteration: int):
        """The chain's key at ``iteration`` (NumPyro: ``key_{i+1} = split(key_i, 3)[0]``)."""
        k = jnp.asarray(self._chain(self.init_state.rng_key, chain))
        for _ in range(iteration):
            k = jax.random.split(k, 3)[0]
        return k

    def divergent(self) -> list[tuple[int, int]]:
        """(chain, iteration) of every saved divergent transition of the draws phase."""
        c, i = np.nonzero(self.diverging)
        return [(int(a), int(b)) for a, b in zip(c, i, strict=True) if b > self.warmup]

    # --------------------------------------------------------------- replay
    def start_state(self, chain: int, iteration: int, step_size=None) -> HMCState:
        """NumPyro's state from which transition ``iteration`` of ``chain`` started: the
        saved draw of ``iteration - 1``, the chain's adapted step size (or ``step_size``)
        and mass matrix, and its key at that iteration."""
        z = self.unconstrained(chain, iteration - 1)
        pe, grad = self._value_and_grad(z)
        adapt = self._chain(self.final_state.adapt_state, chain)
        if step_size is not None:
            adapt = adapt._replace(step_size=np.asarray(step_size, dtype=float))
        return HMCState(
            i=jnp.asarray(iteration),
            z=z,
            z_grad=grad,
            potential_energy=pe,
            energy=pe,
            r=None,
            trajectory_length=jnp.asarray(0.0),
            num_steps=jnp.asarray(0),
            accept_prob=jnp.asarray(0.0),
            mean_accept_prob=jnp.asarray(0.0),
            diverging=jnp.asarray(False),
            adapt_state=jax.tree.map(jnp.asarray, adapt),
            rng_key=self.key(chain, iteration),
        )

    def replay(self, chain: int, iteration: int) -> Transition:
        """Replays transition ``iteration`` (0-based over the whole run, warm-up
        included) of ``chain``: it starts at the draw of ``iteration - 1``."""
        if not 0 <= chain < self.chains:
            raise ValueError(f"chain: must be in [0, {self.chains}), got {chain!r}")
        if not self.warmup < iteration < self.iterations:
            raise ValueError(
                f"iteration: draws-phase transitions from {self.warmup + 1} to {self.iterations - 1} replay "
                f"(the first draw starts from the adapting warm-up), got {iteration!r}"
            )
        state = self.start_state(chain, iteration)
        z, pe = state.z, state.potential_energy
        self._record.clear()
        new = self._sample(state)
        jax.block_until_ready(new)
        record = list(self._record)
        self._record.clear()
        pes = [(x, v) for kind, x, v in record if kind == "pe"]
        kes = [v for kind, _, v in record if kind == "ke"]
        if len(kes) != len(pes) + 1:
            raise RuntimeError(f"replay recorded {len(pes)} potentials and {len(kes)} kinetic energies")
        h0 = float(pe) + kes[0]
        traj = pd.DataFrame(
            {
                "step": np.arange(len(pes)),
                "potential": [v for _, v in pes],
                "kinetic": kes[1:],
            }
        )
        traj["delta_energy"] = traj.potential + traj.kinetic - h0
        traj["finite"] = np.isfinite(traj.delta_energy)
        bad = np.nonzero(~(traj.delta_energy.to_numpy() <= MAX_DELTA_ENERGY))[0]
        accepted = ravel_pytree(new.z)[0]
        saved = ravel_pytree(self.unconstrained(chain, iteration))[0]
        reproduced = bool(np.allclose(accepted, saved, rtol=1e-6, atol=1e-8)) and bool(new.diverging) == bool(
            self.diverging[chain, iteration]
        )
        return Transition(
            chain=chain,
            iteration=iteration,
            names=self.names,
            start=np.asarray(ravel_pytree(z)[0]),
            trajectory=traj,
            positions=np.stack([x for x, _ in pes]) if pes else np.zeros((0, accepted.size)),
            diverged=bool(new.diverging),
            divergent_step=int(bad[0]) if bad.size else None,
            reproduced=reproduced,
            saved_diverging=bool(self.diverging[chain, iteration]),
        )

    # --------------------------------------------------------------- terms
    def terms(self, flat) -> pd.Series:
        """The log-density at an unconstrained position split into its terms: ``prior``
        (with the transforms' log-Jacobians: minus the potential less the evidence) and
        one per evidence row (by ``row_id``), plus ``solve_ok`` (1 or 0)."""
        values = self.constrained(flat)
        pred = self.problem.predictions(values)
        z = self._unravel(jnp.asarray(flat))
        total = -float(self._potential(z))
        log_lik = np.asarray(pred.log_lik)
        table = self.problem.likelihood.table
        out = pd.Series(log_lik, index=list(table.row_id))
        out["prior"] = total - float(np.sum(log_lik))
        out["solve_ok"] = float(bool(pred.success))
        return out

    def where_diverged(self, t: Transition, before: int = 1) -> pd.DataFrame:
        """Terms of the log-density at the start, at the step ``before`` steps before the
        divergent one (in computation order) and at the divergent step, with the change
        from the start, largest first."""
        if t.divergent_step is None:
            raise ValueError("t: this transition did not diverge in the replay")
        s = t.divergent_step
        frame = pd.DataFrame(
            {
                "start": self.terms(t.start),
                "before": self.terms(t.positions[max(s - before, 0)]),
                "divergent": self.terms(t.positions[s]),
            }
        )
        frame["change"] = frame.divergent - frame.start
        return frame.reindex(frame.change.abs().sort_values(ascending=False).index)

    @cached_property
    def _draw_sd(self) -> tuple[np.ndarray, list[str]]:
        """SD of the draws (unconstrained, flattened in ``names`` order) and the labels of
        the flat entries; computed once for every transition shown."""
        columns, labels = [], []
        for k in self.names:
            x = np.asarray(self._transforms[k].inv(jnp.asarray(self.samples[k][:, self.warmup :])))
            x = x.reshape(x.shape[0] * x.shape[1], -1)
            columns.append(x)
            labels += [k] if x.shape[1] == 1 else [f"{k}[{j}]" for j in range(x.shape[1])]
        return np.concatenate(columns, axis=1).std(axis=0), labels

    def moved(self, t: Transition, step: int | None = None) -> pd.DataFrame:
        """Parameters at a step of the trajectory (default: the divergent one) against the
        start, on the unconstrained scale, in units of the draws' posterior SD there."""
        step = t.divergent_step if step is None else step
        sd, labels = self._draw_sd
        x = t.positions[step]
        frame = pd.DataFrame(
            {"start": t.start, "at_step": x, "posterior_sd": sd, "moved_sd": (x - t.start) / sd},
            index=labels,
        )
        return frame.reindex(frame.moved_sd.abs().sort_values(ascending=False).index)

    def nonfinite_gradient_rows(self, flat) -> list[str]:
        """The evidence rows (``row_id``) whose log-likelihood term has a non-finite
        gradient at an unconstrained position, and ``"prior"`` if the rest has: where a
        finite log-density with a NaN gradient comes from (one reverse pass per row)."""
        flat = jnp.asarray(flat)

        def rows(x):
            return self.problem.predictions(self.constrained(x)).log_lik

        jac = np.asarray(jax.jacrev(rows)(flat))
        out = [
            rid
            for rid, g in zip(self.problem.likelihood.table.row_id, jac, strict=True)
            if not np.all(np.isfinite(g))
        ]
        total = np.asarray(jax.grad(lambda x: -self._potential(self._unravel(x)) - jnp.sum(rows(x)))(flat))
        if not np.all(np.isfinite(total)):
            out.append("prior")
        return out


def cause(t: Transition) -> str:
    """In words, why a replayed transition diverged at its divergent step."""
    if t.divergent_step is None:
        return "did not diverge in the replay"
    step = t.trajectory.iloc[t.divergent_step]
    if not np.isfinite(step.potential):
        return "log-density not finite there (e.g. a failed solve)"
    if not np.isfinite(step.kinetic):
        return "log-density finite but its gradient is not (the momentum became NaN)"
    return f"energy error {step.delta_energy:.3g} > {MAX_DELTA_ENERGY:g}"
