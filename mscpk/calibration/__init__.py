"""Calibration against the evidence library: priors, the registry of calibrated
parameters, the NumPyro model with study effects, MAP (optax) and NUTS (NumPyro),
posterior predictive and recovery checks, and the shipped posterior.

Names are imported on first use, so that ``import mscpk`` (which reads the shipped
posterior through :mod:`mscpk.calibration.defaults`) does not import NumPyro or optax.
"""

from importlib import import_module

_LAZY = {
    "EFFECTS": "problem",
    "CalibrationProblem": "problem",
    "REGISTRY": "registry",
    "TAU_SCALE": "registry",
    "Calibrated": "registry",
    "informed": "registry",
}
__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
