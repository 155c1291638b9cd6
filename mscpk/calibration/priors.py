"""Prior distributions of every calibratable parameter (first version).

Each kinetic parameter's prior is centred on its shipped default, with a spread set by
the basis of that default in ``model/data/kinetic_defaults.csv`` (:data:`LOG_SD`):

- positive parameters (rates, sizes): log-normal, median = default;
- fractions in [0, 1]: logit-normal around the default (defaults of exactly 0 or 1 stay
  fixed: a switched-off or complete process is a modelling choice, not a calibration target);
- multipliers >= 1: 1 + log-normal excess;
- rates that are exactly 0 by default stay 0 (a process switched off).

Observation parameters (:class:`~mscpk.observation.parameters.ObservationParameters`)
are assumptions throughout: log-normal with the spreads in :data:`OBSERVATION_LOG_SD`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ..model.parameters import AT_LEAST_ONE, FRACTIONS, KineticParameters, default_table, parameter_names
from ..observation.parameters import DETECTION_LIMIT_LOG_SD, ObservationParameters

#: Log-scale SD of the prior by the basis of the default: read in a source (V), derived
#: by arithmetic from read values (I), assumption (A). ASSUMPTION: a read value is
#: known to within ~30%, a derived one within a factor ~1.6, an assumption within a
#: factor ~2.7 (one SD).
LOG_SD = {"V": 0.3, "I": 0.5, "A": 1.0}
#: ASSUMPTION: spreads of the observation-model priors (log scale).
OBSERVATION_LOG_SD = {
    "sigma_log": 0.3,
    "detection_limit_cells": DETECTION_LIMIT_LOG_SD,
    "label_leak_rate_per_h": 0.7,
    "label_residual_loss_rate_per_h": 0.7,
}
_ORDER = {"V": 0, "I": 1, "A": 2}


@functools.cache
def kinetic_log_sd() -> dict[str, float]:
    """Prior SD per kinetic parameter (the least certain basis among its rows)."""
    table = default_table()
    out = {}
    for name in parameter_names():
        bases = [str(b) for b in table[table.parameter == name].verification]
        basis = max(bases, key=lambda b: _ORDER.get(b, 2)) if bases else "A"
        out[name] = LOG_SD.get(basis, LOG_SD["A"])
    return out


def _draw(key, default, sd, name):
    z = jax.random.normal(key, jnp.shape(default))
    if name in FRACTIONS:
        interior = (default > 0) & (default < 1)
        p = jnp.clip(default, 1e-6, 1 - 1e-6)
        logit = jnp.log(p) - jnp.log1p(-p) + sd * z
        return jnp.where(interior, jax.nn.sigmoid(logit), default)
    if name in AT_LEAST_ONE:
        return jnp.where(default > 1, 1.0 + (default - 1.0) * jnp.exp(sd * z), default)
    return default * jnp.exp(sd * z)


def sample_kinetic(key) -> KineticParameters:
    """One prior draw of the kinetic parameters."""
    base = KineticParameters.default()
    names = parameter_names()
    keys = jax.random.split(key, len(names))
    sds = kinetic_log_sd()
    return KineticParameters(
        **{n: _draw(k, getattr(base, n), sds[n], n) for n, k in zip(names, keys, strict=True)}
    )


def sample_observation(key) -> ObservationParameters:
    """One prior draw of the observation parameters."""
    base = ObservationParameters.default()
    fields = tuple(OBSERVATION_LOG_SD)
    keys = jax.random.split(key, len(fields))
    return ObservationParameters(
        **{
            f: getattr(base, f)
            * jnp.exp(OBSERVATION_LOG_SD[f] * jax.random.normal(k, jnp.shape(getattr(base, f))))
            for f, k in zip(fields, keys, strict=True)
        }
    )


def sample(key, n: int):
    """``n`` prior draws as lists of (kinetic, observation) parameter sets."""
    if not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"n: expected a number of draws >= 1, got {n!r}")
    out = []
    for k in jax.random.split(key, int(n)):
        kk, ko = jax.random.split(k)
        out.append((sample_kinetic(kk), sample_observation(ko)))
    return out
