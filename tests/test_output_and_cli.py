"""Tidy output contract, CSV, plots and the command-line interface."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import mscpk
from mscpk.cli import main

CONTRACT_QUANTITIES = {"viable_cells", "dead_cells", "donor_dna", "radiolabel", "radiolabel_pct_whole_body"}


@pytest.fixture(scope="module")
def result():
    return mscpk.simulate("mouse", "bm_msc", cells=2e6, t_end_h=48.0, times_h=[0.0, 0.25, 1.0, 24.0, 48.0])


def test_tidy_dataframe_contract(result):
    df = result.to_dataframe()
    assert list(df.columns) == ["time_h", "organ", "quantity", "value", "unit"]
    assert CONTRACT_QUANTITIES <= set(df.quantity)
    assert {"blood", "lung", "liver", "spleen", "whole_body"} <= set(df.organ)
    assert all(o == o.lower() for o in df.organ.unique())
    per_time = sum(len(result.organs_of(q)) for q in result.observations)
    assert len(df) == 5 * per_time
    assert per_time >= len(mscpk.OUTPUT_ORGANS) * len(CONTRACT_QUANTITIES)
    assert set(df[df.quantity == "il10"].organ) == {"blood"}
    units = df.groupby("quantity").unit.unique()
    assert all(len(u) == 1 for u in units)
    assert units["viable_cells"][0] == "cells"


def test_whole_body_is_the_sum_of_compartments(result):
    df = result.to_dataframe()
    for q in ("viable_cells", "dead_cells", "donor_dna", "radiolabel", "engulfed_cells"):
        sub = df[df.quantity == q].pivot(index="time_h", columns="organ", values="value")
        parts = sub.drop(columns="whole_body").sum(axis=1)
        np.testing.assert_allclose(sub["whole_body"], parts, rtol=1e-12, atol=1e-9)


def test_assays_tell_label_dna_and_viable_cells_apart(result):
    # Label and DNA persist in tissue after cells die: label >= viable fraction, DNA >= viable cells.
    df = result.to_dataframe().set_index(["time_h", "organ", "quantity"]).value
    viable_pct = 100 * df[(48.0, "lung", "viable_cells")] / 2e6
    assert df[(48.0, "lung", "radiolabel")] > viable_pct
    assert df[(48.0, "lung", "donor_dna")] > df[(48.0, "lung", "viable_cells")]
    assert np.isclose(df[(48.0, "whole_body", "radiolabel_pct_whole_body")], 100.0)
    assert df[(48.0, "whole_body", "radiolabel")] < 100.0  # some label leaked and was eliminated


def test_csv_roundtrip(result, tmp_path):
    path = tmp_path / "r.csv"
    result.to_csv(path)
    back = pd.read_csv(path)
    pd.testing.assert_frame_equal(back, result.to_dataframe(), check_dtype=False)


def test_plot_writes_png(result, tmp_path):
    path = tmp_path / "r.png"
    result.plot(path)
    assert path.stat().st_size > 10_000


def test_cli_simulate_prints_table_and_writes_files(tmp_path, capsys):
    out, png = tmp_path / "result.csv", tmp_path / "result.png"
    code = main(
        [
            "simulate",
            "--species",
            "mouse",
            "--route",
            "iv",
            "--cells",
            "2e6",
            "--hours",
            "96",
            "--out",
            str(out),
            "--plot",
            str(png),
            "--infusion-min",
            "30",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "viable cells, % of total dose" in printed and "lung" in printed and "24 h" in printed
    df = pd.read_csv(out)
    assert list(df.columns) == ["time_h", "organ", "quantity", "value", "unit"]
    assert df.time_h.max() == 96.0
    assert png.stat().st_size > 10_000


def test_cli_rejects_bad_input_with_clear_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["simulate", "--cells", "-5", "--out", str(tmp_path / "x.csv")])
    assert err.value.code == 2
    assert "--cells: must be a finite number >= 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["simulate", "--cells", "1e6", "--species", "dog", "--out", str(tmp_path / "x.csv")])
    assert "invalid choice: 'dog'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["simulate", "--cells", "1e6", "--infusion-min", "0", "--out", str(tmp_path / "x.csv")])
    assert "--infusion-min: must be a finite number > 0" in capsys.readouterr().err
    # A solve that fails (an IM depot over 1e9 h exceeds the default max_steps) is a
    # clear message and exit code 1, not a traceback, and writes nothing.
    out = tmp_path / "long.csv"
    assert main(["simulate", "--route", "im", "--cells", "1e6", "--hours", "1e9", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "the ODE solve failed" in err and "SolverConfig(max_steps" in err
    assert not out.exists()


def test_cli_help_explains_every_option():
    text = subprocess.run(
        [sys.executable, "-m", "mscpk.cli", "simulate", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for option in (
        "--species",
        "--product",
        "--route",
        "--cells",
        "--hours",
        "--infusion-min",
        "--site",
        "--jugular-stasis",
        "--out",
        "--plot",
    ):
        assert option in text


def test_cli_mechanism_options_and_scenario_file(tmp_path, capsys):
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(
        'species = "mouse"\ncells = 1e6\nhours = 24\nprep = "thawed"\ntf-positive = 0.6\n'
        'heparin_iu_per_kg = 0\ndonor = "allogeneic"\ngravity = "micro"\ninjury = "kidneys:1.5"\n'
        'culture = "spheroid"\ninfusion-min = 30\ndevice = "bag"\nsite = "jugular"\njugular-stasis = 1\n'
    )
    out = tmp_path / "s.csv"
    assert main(["simulate", "--scenario", str(scenario), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "peak plasma TAT" in text and "inflammation of kidneys" in text
    df = pd.read_csv(out)
    tat_scenario = df[df.quantity == "tat"].value.max()
    assert set(df[df.quantity == "inflammation"].organ) == set(mscpk.ORGANS)
    # A peripheral line does not meet the jugular stasis: lower TAT peak.
    out3 = tmp_path / "p.csv"
    assert main(["simulate", "--scenario", str(scenario), "--site", "peripheral", "--out", str(out3)]) == 0
    assert pd.read_csv(out3).query("quantity == 'tat'").value.max() < tat_scenario
    # The command line wins over the scenario: heparin lowers the TAT peak.
    out2 = tmp_path / "h.csv"
    assert (
        main(["simulate", "--scenario", str(scenario), "--heparin-iu-per-kg", "500", "--out", str(out2)]) == 0
    )
    assert pd.read_csv(out2).query("quantity == 'tat'").value.max() < tat_scenario
    bad = tmp_path / "bad.toml"
    bad.write_text("cels = 5\n")
    assert main(["simulate", "--scenario", str(bad), "--out", str(out)]) == 2
    assert "unknown key 'cels'" in capsys.readouterr().err
    assert main(["simulate", "--cells", "1e6", "--injury", "kidney:1", "--out", str(out)]) == 2
    assert "Host.injury_organ: unknown value 'kidney'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["simulate", "--cells", "1e6", "--jugular-stasis", "1.5", "--out", str(out)])
    assert "--jugular-stasis: must lie in [0, 1]" in capsys.readouterr().err


def test_settings_that_only_set_numbers_share_one_compiled_solve():
    """simulate solves Model.numeric_equivalent with padded times and dose rows: settings
    that only change numbers (species, product, preparation, donor match, host immunity,
    gravity, the number of output times or doses within a bucket) reuse one compiled program, and
    the result is the original model's solve (to rounding), on the caller's times only."""
    import equinox as eqx
    import jax.numpy as jnp

    from mscpk import Dose, Host, Regimen, cell_product
    from mscpk.api import _solve_jit
    from mscpk.solve.segments import solve

    def programs():
        return _solve_jit._cached._cache_size()

    t72, t168 = np.linspace(0.0, 72.0, 41), np.linspace(0.0, 168.0, 57)
    allogeneic = [  # one program: an allogeneic response of some strength
        dict(species="mouse", product=cell_product("bm_msc", donor="allogeneic"), times_h=t72),
        dict(
            species="rat",
            product=cell_product("uc_msc", preparation="thawed", donor="hla_matched"),
            host=Host(immune_status="athymic", immunosuppression=0.3, gravity="micro"),
            times_h=t168,
            t_end_h=168.0,
        ),
    ]
    none = [  # one program: no response (syngeneic donor, or none in an NSG host)
        dict(
            species="mouse", product=cell_product("bm_mnc", preparation="rescued", rescue_h=4.0), times_h=t72
        ),
        dict(
            species="human",
            product=cell_product("bm_msc", donor="xenogeneic"),
            host=Host(immune_status="nsg"),
            times_h=np.geomspace(0.01, 72.0, 50),
        ),
    ]
    # The original model's solve, as its own program (filter_jit of `solve` itself would
    # share simulate's program cache).
    reference = eqx.filter_jit(lambda model, table, times, t_end: solve(model, table, times, t_end))
    for group in (allogeneic, none):
        before = None
        for case in group:
            r = mscpk.simulate(cells=1e6, **case)
            before = programs() if before is None else before
            ref = reference(r.model, r.regimen.table(), jnp.asarray(r.times_h), jnp.asarray(r.t_end_h))
            assert r.states.shape == np.asarray(ref.ys).shape and r.n_steps == int(ref.n_steps)
            scale = np.maximum(np.abs(np.asarray(ref.ys)).max(0), 1e-300)
            assert np.max(np.abs(r.states - np.asarray(ref.ys)) / scale) < 1e-12
            np.testing.assert_array_equal(r.times_h, case["times_h"])
        assert programs() == before, group  # the group's later cases compiled nothing
    # 3 and 4 doses share the 4-row bucket; with a padded dose row the fresh product's
    # result is the unpadded solve's bit for bit.
    before = programs()
    for n in (3, 4):
        reg = Regimen([Dose(24.0 * i, 5e5) for i in range(n)])
        r = mscpk.simulate("mouse", "bm_msc", reg, t_end_h=96.0, times_h=np.linspace(0.0, 96.0, 33))
        if n == 3:
            ref = reference(r.model, reg.table(), jnp.asarray(r.times_h), jnp.asarray(96.0))
            np.testing.assert_array_equal(r.states, np.asarray(ref.ys))
    assert programs() == before + 1
