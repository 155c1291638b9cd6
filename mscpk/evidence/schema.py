"""The evidence format: one row per reported fact, validated with clear messages.

Each row of ``evidence/data/evidence.csv`` is one published number (or bound) about
donor cells: the study and its provenance, the scenario that produced it (species,
host, product, regimen), what was measured (assay, quantity, organ, time) and what was
reported (value, uncertainty, censoring). :func:`validate` checks a table against the
vocabularies and rules below and raises :class:`EvidenceError` (a ``ValueError``) naming
the row, the field, the value and what is allowed.

**Quantities** (``quantity`` column, allowed units in :data:`UNITS`):

- ``percent_injected_dose``: amount in an organ as % of the administered dose (cells,
  donor DNA) or of the injected activity (radiolabel, decay-corrected unless
  ``decay_corrected`` is ``no``).
- ``percent_whole_body``: amount in an organ as % of what the whole body holds at that time.
- ``cells``: donor cells (or cell-equivalents of DNA) in an organ.
- ``cells_per_g``: the same per g of organ.
- ``relative_to_baseline``: signal at ``time_h`` over signal at ``baseline_time_h``.
- ``half_life``: apparent half-life of the signal between ``baseline_time_h`` and ``time_h``.
- ``ratio_between_arms``: signal of this row's scenario over that of the ``comparator``
  row's scenario, same assay, organ and time.
- ``auc_ratio``: area under the signal curve over ``[baseline_time_h, time_h]``, this
  scenario over the comparator's.
- ``time_until_undetectable``: first time the signal falls below the detection limit.
- ``first_pass_fraction``: fraction of the cells arrested in ``organ`` on their first
  pass (intra-arterial delivery into that organ's bed; the lung for iv).
- ``first_pass_passage_ratio``: fraction passing that bed on first pass, this scenario
  over the comparator's.
- ``plasma_concentration``: a plasma marker (``organ`` is ``blood``).

**Censoring**: ``none`` (a measurement), ``lower_bound`` / ``upper_bound`` (the true
value exceeds / is below ``value``), ``interval`` (between ``lower`` and ``upper``),
``below_detection`` / ``above_detection`` (the signal was below / above the detection
limit, given in ``detection_limit`` in the row's unit, or the assay's default limit).

**Uncertainty**: ``none``, ``sd``, ``sem`` (with ``n``), ``ci95`` (``lower``/``upper``),
``range`` (min-max over ``n``, ``lower``/``upper``; the likelihood treats it as an
interval). A value read off a figure (``obtained`` = ``digitised``) carries its
``digitisation_uncertainty`` (same unit as ``value``).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..model.layout import ORGANS
from ..physiology.species import SPECIES
from ..product.cell_product import presets
from ..routes import IA_TARGETS, VEHICLES

#: Version of the evidence format (bump when columns or vocabularies change meaning).
SCHEMA_VERSION = 1


class EvidenceError(ValueError):
    """A row of the evidence table breaks the schema."""


#: Columns, in file order, and whether a value is required.
COLUMNS: dict[str, bool] = {
    "row_id": True,
    "study_id": True,
    "species": True,
    "strain": False,
    "host_immune": True,
    "host_disease": True,
    "cell_type": True,
    "cell_origin": True,
    "diameter_um": False,
    "preparation": True,
    "donor_match": True,
    "route": True,
    "target": False,
    "cells": False,
    "cells_per_kg": False,
    "infusion_h": False,
    "assay": True,
    "isotope": False,
    "decay_corrected": False,
    "quantity": True,
    "organ": True,
    "time_h": True,
    "baseline_time_h": False,
    "comparator": False,
    "value": False,
    "unit": True,
    "uncertainty_type": True,
    "uncertainty": False,
    "lower": False,
    "upper": False,
    "censoring": True,
    "detection_limit": False,
    "n": False,
    "authors": True,
    "year": True,
    "journal": True,
    "doi": True,
    "doi_status": True,
    "locator": True,
    "obtained": True,
    "digitisation_uncertainty": False,
    "verification": True,
    "quote": True,
    "notes": False,
}
NUMERIC = (
    "diameter_um",
    "cells",
    "cells_per_kg",
    "infusion_h",
    "time_h",
    "baseline_time_h",
    "value",
    "uncertainty",
    "lower",
    "upper",
    "detection_limit",
    "n",
    "year",
    "digitisation_uncertainty",
)

HOST_IMMUNE = ("competent", "athymic", "nod_scid", "nsg")
#: ``unknown``: not stated; simulated as fresh (most preclinical studies inject cells
#: harvested from culture). Rescued products are not in the format yet (no rescue time column).
PREPARATIONS = ("fresh", "thawed", "unknown")
DONOR_MATCH = ("autologous", "syngeneic", "hla_matched", "allogeneic", "xenogeneic")
CELL_ORIGIN = ("human", "mouse", "rat", "pig", "dog")
ROUTES = ("iv", "ia", "im", "sc", "ip", "topical")
#: Assays and what they see of the model: living cells, donor DNA, label, plasma marker.
ASSAYS: dict[str, str] = {
    "bli": "viable",  # bioluminescence of a reporter (living cells)
    "flow": "viable",  # flow cytometry of reporter/labelled cells
    "culture": "viable",  # re-culture of living donor cells from tissue
    "alu_qpcr": "dna",  # human Alu qPCR
    "qpcr": "dna",  # other donor-specific qPCR (beta-globin, Sry, reporter gene)
    "ddpcr": "dna",
    "microscopy": "viable",  # (intravital) microscopy counts of labelled cells
    "radiolabel": "label",  # gamma counting / SPECT / PET of a cell label
    "plasma_tat": "tat",
    "plasma_il10": "il10",
}
#: Assay family of each assay (noise and detection-limit parameters are per family).
ASSAY_FAMILY: dict[str, str] = {
    "bli": "bli",
    "flow": "flow",
    "culture": "flow",
    "microscopy": "flow",
    "alu_qpcr": "pcr",
    "qpcr": "pcr",
    "ddpcr": "pcr",
    "radiolabel": "radiolabel",
    "plasma_tat": "plasma",
    "plasma_il10": "plasma",
}
ISOTOPES = ("in111", "cr51", "tc99m", "zr89", "f18", "cu64")
OUTPUT_ORGANS = ("blood",) + ORGANS + ("whole_body",)
#: Allowed units per quantity and the factor converting them to the canonical unit (first).
UNITS: dict[str, dict[str, float]] = {
    "percent_injected_dose": {"%": 1.0},
    "percent_whole_body": {"%": 1.0},
    "cells": {"cells": 1.0},
    "cells_per_g": {"cells/g": 1.0, "cells/kg": 1e-3},
    "relative_to_baseline": {"fraction": 1.0, "%": 0.01},
    "half_life": {"h": 1.0, "d": 24.0},
    "ratio_between_arms": {"ratio": 1.0},
    "auc_ratio": {"ratio": 1.0},
    "time_until_undetectable": {"h": 1.0, "d": 24.0},
    "first_pass_fraction": {"fraction": 1.0, "%": 0.01},
    "first_pass_passage_ratio": {"ratio": 1.0},
    "plasma_concentration": {"ng/mL": 1.0, "pg/mL": 1e-3},
}
QUANTITIES = tuple(UNITS)
CENSORING = ("none", "lower_bound", "upper_bound", "interval", "below_detection", "above_detection")
UNCERTAINTY = ("none", "sd", "sem", "ci95", "range")
OBTAINED = ("text", "table", "digitised", "derived")
#: Only facts read in the source (V) become evidence; recalled facts (R) may not.
VERIFICATION = ("V",)
#: How the DOI was checked: ``read`` (the DOI string was read next to the paper in
#: retrieved text), ``literature_map`` (given in shared/LITERATURE.md), ``unconfirmed``
#: (title, journal, volume and pages were read; the DOI string was not found in any
#: retrieved text and comes from the citation as recalled; to be checked at doi.org).
DOI_STATUS = ("read", "literature_map", "unconfirmed")
#: ``not_stated`` is allowed where decay cancels (% of whole body, ratios of bounds that
#: hold either way); % of injected dose needs ``yes`` or ``no``.
DECAY_CORRECTED = ("yes", "no", "not_stated")
#: Quantities that need a baseline time / a comparator row.
NEEDS_BASELINE = ("relative_to_baseline", "half_life", "auc_ratio")
NEEDS_COMPARATOR = ("ratio_between_arms", "auc_ratio", "first_pass_passage_ratio")
#: Quantities whose signal is an amount that a detection limit applies to.
DETECTABLE = ("percent_injected_dose", "cells", "cells_per_g", "relative_to_baseline")


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def _fail(row, field, value, allowed) -> None:
    rid = row.get("row_id", "?")
    raise EvidenceError(f"evidence row {rid!r}: {field}={value!r} is not allowed; {allowed}")


def _choice(row, field, allowed) -> None:
    value = row.get(field)
    if _missing(value) or value not in allowed:
        _fail(row, field, value, f"allowed: {', '.join(allowed)}")


def validate(table: pd.DataFrame) -> pd.DataFrame:
    """Check every row of ``table``; return it with numeric columns as floats.

    Raises :class:`EvidenceError` at the first violation, naming row, field and value.
    """
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"evidence: expected a pandas DataFrame, got {type(table).__name__}")
    missing_cols = [c for c in COLUMNS if c not in table.columns]
    if missing_cols:
        raise EvidenceError(f"evidence: missing columns {missing_cols}; the format has {list(COLUMNS)}")
    extra = [c for c in table.columns if c not in COLUMNS]
    if extra:
        raise EvidenceError(f"evidence: unknown columns {extra}; the format has {list(COLUMNS)}")
    table = table.copy()
    for c in NUMERIC:
        try:
            table[c] = pd.to_numeric(table[c], errors="raise").astype(float)
        except (ValueError, TypeError) as err:
            bad = [v for v in table[c] if not _is_number(v)]
            raise EvidenceError(f"evidence column {c}: expected numbers, got {bad[:3]!r}") from err
    dup = table.row_id[table.row_id.duplicated()].tolist()
    if dup:
        raise EvidenceError(f"evidence: row_id must be unique; duplicated: {dup}")
    ids = set(table.row_id)
    for row in table.to_dict("records"):
        _validate_row(row, ids, table)
    return table


def _is_number(v) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def _validate_row(row: dict, ids: set, table: pd.DataFrame) -> None:
    for field, required in COLUMNS.items():
        if required and _missing(row[field]):
            what = (
                "provenance"
                if field in ("authors", "year", "journal", "doi", "locator", "obtained", "quote")
                else "field"
            )
            _fail(row, field, row[field], f"a value is required ({what})")
    for field in NUMERIC:
        v = row[field]
        if not _missing(v) and (not np.isfinite(v) or v < 0):
            _fail(row, field, v, "must be a finite number >= 0 (no negative values)")
    if not str(row["doi"]).startswith("10."):
        _fail(row, "doi", row["doi"], "a DOI starting with '10.' is required (provenance)")
    _choice(row, "species", SPECIES)
    _choice(row, "host_immune", HOST_IMMUNE)
    _choice(row, "cell_type", presets())
    _choice(row, "cell_origin", CELL_ORIGIN)
    _choice(row, "preparation", PREPARATIONS)
    _choice(row, "donor_match", DONOR_MATCH)
    _choice(row, "route", ROUTES)
    _choice(row, "assay", tuple(ASSAYS))
    _choice(row, "quantity", QUANTITIES)
    _choice(row, "organ", OUTPUT_ORGANS)
    _choice(row, "censoring", CENSORING)
    _choice(row, "uncertainty_type", UNCERTAINTY)
    _choice(row, "obtained", OBTAINED)
    _choice(row, "verification", VERIFICATION)
    _choice(row, "doi_status", DOI_STATUS)
    _choice(row, "unit", tuple(UNITS[row["quantity"]]))
    if row["route"] == "ia":
        _choice(row, "target", IA_TARGETS)
    elif row["route"] == "topical":
        _choice(row, "target", VEHICLES)
    elif not _missing(row["target"]):
        _fail(
            row,
            "target",
            row["target"],
            f"only an ia or topical route has a target (route is {row['route']})",
        )
    if _missing(row["cells"]) == _missing(row["cells_per_kg"]):
        _fail(row, "cells", row["cells"], "give exactly one of cells (per subject) and cells_per_kg")
    for field in ("cells", "cells_per_kg", "infusion_h", "diameter_um"):
        if not _missing(row[field]) and not row[field] > 0:
            _fail(row, field, row[field], "must be > 0 when given")
    if row["assay"] == "radiolabel":
        _choice(row, "isotope", ISOTOPES)
        _choice(row, "decay_corrected", DECAY_CORRECTED)
    elif not (_missing(row["isotope"]) and _missing(row["decay_corrected"])):
        _fail(row, "isotope", row["isotope"], "isotope and decay_corrected are for radiolabel rows only")
    kind = ASSAYS[row["assay"]]
    if kind in ("tat", "il10") and (row["quantity"] != "plasma_concentration" or row["organ"] != "blood"):
        _fail(row, "quantity", row["quantity"], "a plasma marker is a plasma_concentration in blood")
    if row["quantity"] == "plasma_concentration" and kind not in ("tat", "il10"):
        _fail(row, "assay", row["assay"], "plasma_concentration needs a plasma_* assay")
    if row["quantity"] in ("first_pass_fraction", "first_pass_passage_ratio"):
        if row["route"] not in ("ia", "iv"):
            _fail(row, "route", row["route"], f"{row['quantity']} is defined for ia and iv delivery")
        if row["route"] == "iv" and row["organ"] != "lung":
            _fail(row, "organ", row["organ"], "the first bed met by an iv dose is the lung")
    if (
        row["assay"] == "radiolabel"
        and row["quantity"] == "percent_injected_dose"
        and row["decay_corrected"] == "not_stated"
    ):
        _fail(row, "decay_corrected", "not_stated", "% of injected activity needs yes or no")
    if row["quantity"] in NEEDS_BASELINE:
        if _missing(row["baseline_time_h"]) or not row["baseline_time_h"] < row["time_h"]:
            _fail(
                row,
                "baseline_time_h",
                row["baseline_time_h"],
                f"{row['quantity']} needs baseline_time_h < time_h",
            )
    if row["quantity"] in NEEDS_COMPARATOR:
        comp = row["comparator"]
        if _missing(comp) or comp not in ids or comp == row["row_id"]:
            _fail(row, "comparator", comp, f"{row['quantity']} needs the row_id of another evidence row")
        other = table[table.row_id == comp].iloc[0]
        if other.study_id != row["study_id"]:
            _fail(row, "comparator", comp, "the comparator must be a row of the same study")
    elif not _missing(row["comparator"]):
        _fail(
            row, "comparator", row["comparator"], f"only {', '.join(NEEDS_COMPARATOR)} rows have a comparator"
        )
    if row["quantity"] == "time_until_undetectable" and not _missing(row["detection_limit"]):
        _fail(
            row,
            "detection_limit",
            row["detection_limit"],
            "time_until_undetectable uses the assay's limit (in cells)",
        )
    if row["quantity"] == "time_until_undetectable" and ASSAYS[row["assay"]] not in ("viable", "dna"):
        _fail(row, "assay", row["assay"], "time_until_undetectable needs a cell or DNA assay")
    if row["obtained"] == "digitised" and _missing(row["digitisation_uncertainty"]):
        _fail(
            row,
            "digitisation_uncertainty",
            row["digitisation_uncertainty"],
            "a digitised value needs its uncertainty",
        )
    _validate_censoring(row)
    _validate_uncertainty(row)


def _validate_censoring(row: dict) -> None:
    c, v, lo, hi = row["censoring"], row["value"], row["lower"], row["upper"]
    dl = row["detection_limit"]
    if c in ("none", "lower_bound", "upper_bound") and _missing(v):
        _fail(row, "value", v, f"censoring={c} needs a value")
    if c == "interval":
        if _missing(lo) or _missing(hi) or not lo < hi:
            _fail(row, "lower", lo, f"censoring=interval needs lower < upper (got {lo!r}, {hi!r})")
        if not _missing(v) and not lo <= v <= hi:
            _fail(row, "value", v, f"an interval-censored value must lie in [{lo:g}, {hi:g}]")
        if row["uncertainty_type"] != "none":
            _fail(
                row,
                "uncertainty_type",
                row["uncertainty_type"],
                "an interval row carries its range in lower/upper",
            )
    if c in ("below_detection", "above_detection"):
        if not _missing(v):
            _fail(row, "value", v, f"censoring={c} takes the detection limit, not a value")
        if row["quantity"] not in DETECTABLE:
            _fail(row, "quantity", row["quantity"], f"censoring={c} applies to {', '.join(DETECTABLE)}")
        if ASSAYS[row["assay"]] not in ("viable", "dna"):
            _fail(
                row, "assay", row["assay"], f"censoring={c} needs a cell or DNA assay with a detection limit"
            )
        if row["quantity"] != "cells" and _missing(dl):
            _fail(
                row,
                "detection_limit",
                dl,
                f"censoring={c} on {row['quantity']} needs the limit in the row's unit",
            )
    elif not _missing(dl) and not _missing(v) and c == "none" and v < dl:
        _fail(row, "value", v, f"a measured value below its detection limit {dl:g} must be censored")
    if c in ("lower_bound", "upper_bound") and row["uncertainty_type"] != "none":
        _fail(row, "uncertainty_type", row["uncertainty_type"], "a bound carries no uncertainty")


def _validate_uncertainty(row: dict) -> None:
    u, lo, hi, n = row["uncertainty_type"], row["lower"], row["upper"], row["n"]
    if u in ("sd", "sem") and (_missing(row["uncertainty"]) or not row["uncertainty"] > 0):
        _fail(row, "uncertainty", row["uncertainty"], f"uncertainty_type={u} needs a value > 0")
    if u == "sem" and (_missing(n) or n < 2):
        _fail(row, "n", n, "an SEM needs n >= 2")
    if u in ("ci95", "range"):
        if _missing(lo) or _missing(hi) or not lo < hi:
            _fail(row, "lower", lo, f"uncertainty_type={u} needs lower < upper")
        if not _missing(row["value"]) and not lo <= row["value"] <= hi:
            _fail(row, "value", row["value"], f"the value must lie within its {u} [{lo:g}, {hi:g}]")
    if u == "none" and row["censoring"] != "interval" and not (_missing(lo) and _missing(hi)):
        _fail(row, "lower", lo, "lower/upper are for interval censoring, ci95 or range rows")
