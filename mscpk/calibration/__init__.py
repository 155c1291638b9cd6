"""Calibration against the evidence library: priors, the registry of calibrated
parameters, the NumPyro model with study effects, MAP (optax) and NUTS (NumPyro),
posterior predictive and recovery checks, and the shipped posterior."""

from .problem import EFFECTS, CalibrationProblem
from .registry import REGISTRY, TAU_SCALE, Calibrated, informed

__all__ = ["EFFECTS", "REGISTRY", "TAU_SCALE", "Calibrated", "CalibrationProblem", "informed"]
