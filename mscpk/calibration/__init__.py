"""Calibration against the evidence library: priors (issue 6 builds MAP/NUTS on these)."""
