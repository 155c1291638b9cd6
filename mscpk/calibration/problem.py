"""The calibration problem: priors + hierarchical study effects + evidence likelihood, as
a NumPyro model.

:class:`CalibrationProblem` ties an :class:`~mscpk.evidence.EvidenceLikelihood` to the
registry entries its table informs (:func:`mscpk.calibration.registry.informed`). Its
:meth:`~CalibrationProblem.model` is a NumPyro model:

- one sample site per calibrated quantity (log-normal or logit-normal prior);
- with ``hierarchical=True``, per effect ``e`` in ``survival``, ``lung``, ``scale``:
  ``tau_e ~ HalfNormal(TAU_SCALE[e])`` and ``z_e[study] ~ Normal(0, 1)`` (non-centred:
  ``effect = tau_e * z_e``), see :class:`~mscpk.evidence.scenarios.StudyEffects`;
- ``numpyro.factor("evidence", log p(evidence | parameters))`` (``-inf`` when a solve
  fails, which the sampler rejects).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.infer.util import get_transforms, potential_energy, transform_fn

from ..evidence.scenarios import StudyEffects
from ..model.parameters import KineticParameters
from ..observation.parameters import ObservationParameters
from .registry import TAU_SCALE, Calibrated, apply, informed

EFFECTS: tuple[str, ...] = ("survival", "lung", "scale")


def prior_distribution(c: Calibrated):
    """The NumPyro prior of a registry entry."""
    base = dist.Normal(c.loc, c.log_sd)
    if c.prior == "logitnormal":
        return dist.TransformedDistribution(base, dist.transforms.SigmoidTransform())
    return dist.LogNormal(c.loc, c.log_sd)


class CalibrationProblem:
    """Calibrated entries, the likelihood and the NumPyro model over them.

    **Arguments:**

    - ``likelihood``: an :class:`~mscpk.evidence.EvidenceLikelihood` (default: the whole
      shipped library).
    - ``entries``: registry entries to calibrate (default: those the table informs).
    - ``hierarchical``: include study-level effects (needs >= 2 studies).
    - ``kinetic``, ``observation``: values of everything not calibrated (defaults).
    """

    def __init__(
        self,
        likelihood=None,
        entries: tuple[Calibrated, ...] | None = None,
        hierarchical: bool = True,
        kinetic: KineticParameters | None = None,
        observation: ObservationParameters | None = None,
    ):
        from ..evidence.likelihood import EvidenceLikelihood

        self.likelihood = EvidenceLikelihood() if likelihood is None else likelihood
        if not isinstance(self.likelihood, EvidenceLikelihood):
            raise TypeError(
                f"likelihood: expected an EvidenceLikelihood, got {type(self.likelihood).__name__}"
            )
        self.entries = informed(self.likelihood.table) if entries is None else tuple(entries)
        for c in self.entries:
            if not isinstance(c, Calibrated):
                raise TypeError(f"entries: expected Calibrated entries, got {type(c).__name__}")
        names = [c.name for c in self.entries]
        if len(set(names)) != len(names):
            raise ValueError(f"entries: duplicate names in {names}")
        if not isinstance(hierarchical, bool):
            raise TypeError(f"hierarchical: expected a bool, got {type(hierarchical).__name__}")
        if hierarchical and self.likelihood.n_studies < 2:
            raise ValueError(
                f"hierarchical: study effects need >= 2 studies, the table has {self.likelihood.n_studies}"
            )
        self.hierarchical = hierarchical
        self.kinetic = KineticParameters.default() if kinetic is None else kinetic
        self.observation = ObservationParameters.default() if observation is None else observation
        # Jitted: NumPyro also runs the model eagerly (initialisation, tracing), where an
        # un-jitted solve would run op by op.
        self._f = jax.jit(self.likelihood.function())
        self._f_terms = jax.jit(self.likelihood.function(terms=True))
        self._transforms = None
        self._value_and_grad = None
        self._piece_runners = {}  # fit._piece_runner's compiled NUTS loops, per setting

    # ------------------------------------------------------------------ names
    @property
    def parameter_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.entries)

    @property
    def global_names(self) -> tuple[str, ...]:
        """Sites shared by all studies (calibrated parameters and effect SDs)."""
        taus = tuple(f"tau_{e}" for e in EFFECTS) if self.hierarchical else ()
        return self.parameter_names + taus

    @property
    def study_ids(self) -> tuple[str, ...]:
        return self.likelihood.study_ids

    # ------------------------------------------------------------------ pieces
    def parameters(self, values: dict) -> tuple[KineticParameters, ObservationParameters]:
        """Kinetic and observation parameters with calibrated ``values`` in place."""
        return apply(values, self.entries, self.kinetic, self.observation)

    def effects(self, values: dict) -> StudyEffects | None:
        """Study effects from sampled ``tau_*`` and ``z_*`` (``None`` if not hierarchical)."""
        if not self.hierarchical:
            return None
        return StudyEffects(*(values[f"tau_{e}"] * values[f"z_{e}"] for e in EFFECTS))

    def log_likelihood(self, values: dict, data=None):
        """log p(evidence | values); ``data`` optionally replaces the point rows' values."""
        kinetic, observation = self.parameters(values)
        return self._f(kinetic, observation, self.effects(values), data)

    def predictions(self, values: dict):
        """Per-row :class:`~mscpk.evidence.likelihood.Predictions` at ``values``."""
        kinetic, observation = self.parameters(values)
        return self._f_terms(kinetic, observation, self.effects(values))

    # ------------------------------------------------------------------ NumPyro
    def _sample_priors(self) -> dict:
        """Sample every prior site (inside a NumPyro model); returns the values by name."""
        values = {c.name: numpyro.sample(c.name, prior_distribution(c)) for c in self.entries}
        if self.hierarchical:
            n = len(self.study_ids)
            for e in EFFECTS:
                values[f"tau_{e}"] = numpyro.sample(f"tau_{e}", dist.HalfNormal(TAU_SCALE[e]))
                with numpyro.plate("study", n):
                    values[f"z_{e}"] = numpyro.sample(f"z_{e}", dist.Normal(0.0, 1.0))
        return values

    def model(self, data=None):
        """The NumPyro model. The evidence is closed over; ``data`` (R,) optionally replaces
        the values of its point rows (synthetic data sets, traced: one compilation)."""
        numpyro.factor("evidence", self.log_likelihood(self._sample_priors(), data))

    def prior_median(self) -> dict:
        """Prior medians of the global sites (effects zero): a deterministic start."""
        out = {c.name: jnp.asarray(c.median) for c in self.entries}
        if self.hierarchical:
            n = len(self.study_ids)
            for e in EFFECTS:
                out[f"tau_{e}"] = jnp.asarray(TAU_SCALE[e] * 0.6745)  # HalfNormal median
                out[f"z_{e}"] = jnp.zeros(n)
        return out

    def prior_sample(self, key, n: int | None = None) -> dict:
        """Draws from the prior (one, or ``n`` stacked along a leading axis)."""
        from numpyro.infer import Predictive

        m = 1 if n is None else int(n)
        draws = Predictive(self._sample_priors, num_samples=m)(key)
        return draws if n is not None else jax.tree_util.tree_map(lambda x: x[0], draws)

    # ------------------------------------------------------------------ NumPyro's scale
    def transforms(self) -> dict:
        """NumPyro's transform of each latent site from the unconstrained scale (where MAP
        and NUTS work) to its support, found from one abstract trace of the model
        (evaluating it would solve every scenario)."""
        if self._transforms is None:
            found = {}

            def trace(values):
                found["transforms"] = get_transforms(self.model, (), {}, values)
                return 0.0

            jax.eval_shape(trace, self.prior_median())
            self._transforms = found["transforms"]
        return self._transforms

    def unconstrain(self, values: dict) -> dict:
        """Constrained ``values`` of every latent site on the unconstrained scale."""
        missing = sorted(set(self.transforms()) - set(values))
        if missing:
            raise ValueError(f"values: no value of {missing}")
        z = transform_fn(self.transforms(), {k: values[k] for k in self.transforms()}, invert=True)
        # Strongly typed (prior medians are weakly typed, optimiser updates not): one
        # compilation of each function of ``z`` serves every call.
        return {k: jnp.asarray(v, dtype=jnp.result_type(float)) for k, v in z.items()}

    def constrain(self, z: dict) -> dict:
        """Unconstrained ``z`` back on each site's support."""
        return transform_fn(self.transforms(), z)

    def potential(self, z: dict):
        """NUTS's potential: the negative log joint density at unconstrained ``z`` (with
        the transforms' log-Jacobians)."""
        return potential_energy(self.model, (), {}, z)

    def value_and_grad(self, z: dict):
        """``(potential, gradient)`` at ``z``, compiled once per problem: the MAP's steps,
        NUTS's initial state and the Laplace metric share the one program (a gradient
        through the solver is the costliest compilation of a fit)."""
        if self._value_and_grad is None:
            self._value_and_grad = jax.jit(jax.value_and_grad(self.potential))
        return self._value_and_grad(z)

    def describe(self):
        """One line per calibrated entry: prior, units, basis (a DataFrame)."""
        import pandas as pd

        return pd.DataFrame(
            [
                {
                    "name": c.name,
                    "sets": f"{c.target}.{c.field}" + ("" if c.index is None else f"[{c.index}]"),
                    "prior": f"{c.prior}(median {c.median:.4g}, sd {c.log_sd:g})",
                    "units": c.units,
                    "basis": c.basis,
                }
                for c in self.entries
            ]
        )
