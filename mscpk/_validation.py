"""Input checks with messages that name the field, the value and what is allowed.

Checks run on concrete values only: inside ``jit``/``vmap``/``grad`` a field may hold a
tracer, whose value is unknown at trace time, and is then left to the caller.
"""

from __future__ import annotations

import jax
import numpy as np


def concrete(value) -> np.ndarray | None:
    """``value`` as a NumPy array, or ``None`` if it is (or contains) a tracer."""
    if isinstance(value, jax.core.Tracer):
        return None
    try:
        return np.asarray(value, dtype=float)
    except (TypeError, jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return None


def _show(arr: np.ndarray) -> str:
    return repr(arr.item()) if arr.size == 1 else np.array2string(arr, precision=6, threshold=20)


def check_finite(field: str, value) -> None:
    arr = concrete(value)
    if arr is not None and not np.all(np.isfinite(arr)):
        raise ValueError(f"{field}: must be finite (no NaN or inf), got {_show(arr)}")


def check_positive(field: str, value, *, allow_zero: bool = False) -> None:
    arr = concrete(value)
    if arr is None:
        return
    check_finite(field, arr)
    bad = arr < 0 if allow_zero else arr <= 0
    if np.any(bad):
        allowed = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{field}: must be {allowed}, got {_show(arr)}")


def check_range(field: str, value, low: float, high: float, *, closed: bool = True) -> None:
    arr = concrete(value)
    if arr is None:
        return
    check_finite(field, arr)
    bad = (arr < low) | (arr > high) if closed else (arr <= low) | (arr >= high)
    if np.any(bad):
        interval = f"[{low}, {high}]" if closed else f"({low}, {high})"
        raise ValueError(f"{field}: must lie in {interval}, got {_show(arr)}")


def check_choice(field: str, value, allowed) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{field}: expected a str, one of {', '.join(allowed)}; got {type(value).__name__}")
    key = value.strip().lower()
    if key not in allowed:
        raise ValueError(f"{field}: unknown value {value!r}; allowed: {', '.join(allowed)}")
    return key
