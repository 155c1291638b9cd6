"""Every shipped number carries its source and how it was obtained; physiology is sane."""

import numpy as np
import pandas as pd
import pytest

import mscpk
from mscpk.model.parameters import default_table
from mscpk.physiology.species import allometric_factor, physiology_table
from mscpk.product.cell_product import preset_table

LEVELS = {"V", "I", "R", "A"}


def _check_rows(table: pd.DataFrame, what: str):
    numbers = table[pd.to_numeric(table.value, errors="coerce").notna()]
    assert len(numbers) > 0
    for _, row in numbers.iterrows():
        label = f"{what}: {dict(row)}"
        assert row.verification in LEVELS, label
        assert isinstance(row.source, str) and row.source.strip(), label
        if row.verification == "A":
            assert "ASSUMPTION" in str(row.note), label
        if row.verification == "I":
            text = f"{row.get('how_obtained', '')} {row.get('note', '')}"
            assert "derived" in text, label
        if row.verification == "V":  # read in a source: where in it
            assert str(row.get("locator", "")).strip() not in ("", "-", "nan"), label


def test_physiology_rows_have_provenance():
    _check_rows(physiology_table(), "physiology.csv")


def test_kinetic_defaults_have_provenance():
    _check_rows(default_table(), "kinetic_defaults.csv")


def test_cell_presets_have_provenance():
    _check_rows(preset_table(), "cell_presets.csv")


@pytest.mark.parametrize("name", mscpk.SPECIES)
def test_species_physiology_is_consistent(name):
    sp = mscpk.species(name)
    np.testing.assert_allclose(float(sp.arterial_supply_fraction.sum()), 1.0, atol=1e-9)
    assert float(sp.arterial_supply_fraction[mscpk.ORGANS.index("lung")]) == 0.0
    volume_fraction = float(sp.organ_volume_ml.sum() + sp.blood_volume_ml) / float(sp.body_weight_g)
    np.testing.assert_allclose(volume_fraction, 1.0, atol=1e-6)
    assert 0.3 < float(sp.haematocrit) < 0.6
    circulation_s = 3600 * float(sp.blood_volume_ml / sp.cardiac_output_ml_per_h)
    assert 3 < circulation_s < 120  # mouse ~4 s ... human ~66 s


def test_species_scale_as_expected():
    mouse, rat, human = (mscpk.species(s) for s in ("mouse", "rat", "human"))
    assert float(mouse.body_weight_g) == 25.0 and float(rat.body_weight_g) == 250.0
    assert float(human.body_weight_g) == 70000.0
    assert (
        float(mouse.cardiac_output_ml_per_h)
        < float(rat.cardiac_output_ml_per_h)
        < float(human.cardiac_output_ml_per_h)
    )
    assert np.isclose(float(allometric_factor(25.0)), 1.0)
    assert np.isclose(float(allometric_factor(70000.0)), (70000 / 25) ** -0.25)
    scaled = mscpk.build_model("human", "bm_msc").rates
    ref = mscpk.KineticParameters.default()
    assert np.isclose(
        float(scaled.debris_clearance_rate_per_h), float(ref.debris_clearance_rate_per_h) * (2800) ** -0.25
    )
    np.testing.assert_array_equal(np.asarray(scaled.death_rate_per_h), np.asarray(ref.death_rate_per_h))


def test_presets_listed_and_valid():
    assert {"bm_msc", "uc_msc", "at_msc", "spheroid_msc", "bm_mnc"} <= set(mscpk.presets())
    for name in mscpk.presets():
        p = mscpk.cell_product(name)
        assert 5 < float(p.diameter_mean_um) < 40 and 0 < float(p.viability) <= 1
    small = mscpk.cell_product("bm_msc", diameter_mean_um=11.5)
    np.testing.assert_allclose(float(small.diameter_sd_um / small.diameter_mean_um), 0.25)
    d, w = mscpk.cell_product("bm_msc").size_classes(5)
    np.testing.assert_allclose(float(w.sum()), 1.0)
    np.testing.assert_allclose(float((w * d).sum()), 23.0, rtol=1e-6)  # quadrature keeps the mean
