"""The literature evidence library and its likelihood.

- :func:`load`: the shipped evidence (validated) as a DataFrame, one row per fact.
- :func:`studies`: one line per study (id, species, routes, assays, rows).
- :mod:`~mscpk.evidence.schema`: the format and :func:`~mscpk.evidence.schema.validate`.
- :class:`EvidenceLikelihood`: log p(evidence | parameters), one jitted vmapped solve.
"""

from __future__ import annotations

import functools
from importlib import resources

import pandas as pd

from .schema import COLUMNS, SCHEMA_VERSION, EvidenceError, validate

#: Version of the shipped evidence table (``# version:`` line of the CSV).
DATA_FILE = "data/evidence.csv"


@functools.cache
def _read() -> tuple[str, pd.DataFrame]:
    with resources.files("mscpk.evidence").joinpath(DATA_FILE).open() as f:
        text = f.read()
    version = next(
        (
            ln.split(":", 1)[1].split(";")[0].strip()
            for ln in text.splitlines()
            if ln.startswith("# version:")
        ),
        "unknown",
    )
    from io import StringIO

    table = pd.read_csv(StringIO(text), comment="#", dtype={c: str for c in COLUMNS if c != "value"})
    return version, validate(table)


def version() -> str:
    """Version string of the shipped evidence table."""
    return _read()[0]


def load() -> pd.DataFrame:
    """The shipped evidence, validated (a fresh copy; one row per reported fact)."""
    return _read()[1].copy()


def studies(table: pd.DataFrame | None = None) -> pd.DataFrame:
    """One line per study: id, citation, species, routes, assays and number of rows."""
    table = load() if table is None else table

    def join(values):
        return ",".join(sorted(set(values)))

    out = table.groupby("study_id", sort=True).agg(
        citation=("authors", "first"),
        year=("year", "first"),
        journal=("journal", "first"),
        doi=("doi", "first"),
        species=("species", join),
        routes=("route", join),
        assays=("assay", join),
        rows=("row_id", "count"),
    )
    out["year"] = out["year"].astype(int)
    return out.reset_index()


def __getattr__(name):  # lazy: the likelihood imports the solver stack
    if name == "EvidenceLikelihood":
        from .likelihood import EvidenceLikelihood

        return EvidenceLikelihood
    raise AttributeError(name)


__all__ = [
    "COLUMNS",
    "SCHEMA_VERSION",
    "EvidenceError",
    "EvidenceLikelihood",
    "load",
    "studies",
    "validate",
    "version",
]
