"""Pieces of the benchmark suite (``make bench``): the NumPy port used as the SciPy baseline
(benchmarks/scipy_reference.py) computes the same right-hand side as the JAX model, so
``speedup_vs_scipy_lsoda`` compares like with like; NUTS seconds per effective sample."""

import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import mscpk
from mscpk.mechanisms import Mechanisms
from mscpk.model.layout import unpack

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from scipy_reference import numpy_field, numpy_transport, solve_scipy  # noqa: E402
from suite import nuts_from_posterior  # noqa: E402

CONFIGS = {
    "mouse_default": dict(),
    "human_allogeneic_injured": dict(
        species="human",
        product=mscpk.cell_product("bm_msc", donor="allogeneic"),
        host=mscpk.Host(injury_organ="skin", injury_level=0.8),
    ),
    "no_efferocytosis": dict(mechanisms=Mechanisms(efferocytosis=False)),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_numpy_field_equals_jax_field(name):
    model = mscpk.build_model(n_size_classes=3, **CONFIGS[name])
    p = numpy_transport(model)
    tr = model.transport()
    rng = np.random.default_rng(0)
    for trial in range(3):
        # positive states of cell-like magnitudes; the 0-1 signals stay in [0, 1]
        y = rng.uniform(0.0, 1e5, model.n_states)
        x = unpack(np.arange(model.n_states), model.n_size_classes)
        for k in ("immune_effector", "immune_memory", "inflammation_relief"):
            y[int(getattr(x, k))] = rng.uniform()
        fast = None if trial == 0 else rng.uniform(0.0, 1e4, 3)
        want = np.asarray(
            model.vector_field_from(tr, jnp.asarray(y), None if fast is None else jnp.asarray(fast))
        )
        got = numpy_field(p, y, fast)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-9)
        assert np.any(want != 0.0)


def test_scipy_solution_matches_mscpk():
    """LSODA on the port reproduces mscpk's lung and whole-body viable cells (same
    tolerances), so the two solvers in the benchmark produce the same answer."""
    model = mscpk.build_model()
    regimen = mscpk.Regimen.bolus(1e6)
    times = np.array([0.0, 1.0, 24.0, 96.0])
    config = mscpk.SolverConfig()
    out = solve_scipy(model, regimen.table(), times, 96.0, "LSODA", config)
    ys = out["ys"]
    assert out["success"] and out["nfev"] > 10 and out["solve_s"] > 0
    sol = mscpk.solve(model, regimen.table(), jnp.asarray(times), 96.0, config)
    obs_ref = model.observe(sol.ys, sol.blood_input)
    obs = model.observe(jnp.asarray(ys), sol.blood_input)
    viable_ref = np.asarray(obs_ref.viable)
    viable = np.asarray(obs.viable)
    np.testing.assert_allclose(viable[:, 1], viable_ref[:, 1], rtol=1e-4)  # lung
    np.testing.assert_allclose(viable.sum(1), viable_ref.sum(1), rtol=1e-4)
    assert viable_ref[1, 1] > 1e4  # cells are in the lung at 1 h


def test_scipy_on_the_output_slots_matches_the_full_solve():
    """SciPy on the subsystem ``simulate_population`` integrates (the output slots) gives
    the outputs of the full SciPy solve, in fewer evaluations; other columns stay zero."""
    from mscpk.population import output_slots

    model = mscpk.build_model()
    table = mscpk.Regimen.bolus(1e6).table()
    times = np.array([0.0, 1.0, 24.0, 96.0])
    slots = output_slots(model, table, [("viable_cells", 1)])
    assert 0 < len(slots) < model.n_states
    full = solve_scipy(model, table, times, 96.0, "LSODA")
    part = solve_scipy(model, table, times, 96.0, "LSODA", slots=slots)
    assert part["success"] and part["nfev"] < full["nfev"]
    blood = jnp.zeros((len(times), model.n_size_classes))
    lung = [np.asarray(model.observe(jnp.asarray(r["ys"]), blood).viable[:, 1]) for r in (full, part)]
    np.testing.assert_allclose(lung[1], lung[0], rtol=1e-4)
    outside = np.setdiff1d(np.arange(model.n_states), slots)
    assert np.all(part["ys"][:, outside] == 0.0) and np.any(full["ys"][:, outside] != 0.0)


def test_scipy_reference_refuses_infusions():
    model = mscpk.build_model()
    with pytest.raises(ValueError, match="regimen"):
        solve_scipy(model, mscpk.Regimen.infusion(1e6, 1.0).table(), np.array([0.0, 2.0]), 2.0)


def test_nuts_seconds_per_ess(tmp_path):
    """Seconds recorded by the fit over the smallest bulk ESS of the global (2-D) sites;
    per-study (3-D) sites are left out."""
    import arviz as az

    rng = np.random.default_rng(1)
    fast = rng.normal(size=(4, 200))
    slow = np.cumsum(rng.normal(size=(4, 200)), axis=1) * 0.05 + rng.normal(size=(4, 200))
    idata = az.from_dict(
        posterior={"fast": fast, "slow": slow, "per_study": rng.normal(size=(4, 200, 3))},
        sample_stats={"diverging": np.zeros((4, 200), dtype=bool)},
    )
    idata.posterior.attrs["seconds"] = 1234.0
    path = tmp_path / "post.nc"
    idata.to_netcdf(path)
    out = nuts_from_posterior(path)
    ess = az.ess(idata, var_names=["fast", "slow"], method="bulk")
    want = min(float(ess["fast"]), float(ess["slow"]))
    assert out["min_bulk_ess"] == pytest.approx(want, abs=0.5)  # arviz ESS vs the summary table
    assert out["nuts_s_per_ess"] == pytest.approx(1234.0 / out["min_bulk_ess"], rel=1e-12)
    assert out["draws"] == 800 and out["divergence_fraction"] == 0.0
    # --nuts-only: replaces only the NUTS figure of an existing results file.
    import json

    from suite import main as suite_main

    latest = tmp_path / "latest.json"
    earlier = {"speedup_vs_scipy_lsoda": 109.8, "nuts_s_per_ess": None, "sections_measured": {"scipy": {}}}
    latest.write_text(json.dumps({**earlier, "grad_over_value": {"reverse": 7.9, "forward": 132.0}}))
    with pytest.raises(SystemExit):
        suite_main(["--nuts-only", "--out", str(latest)])
    suite_main(["--nuts-only", "--posterior", str(path), "--out", str(latest)])
    got = json.loads(latest.read_text())
    assert got["nuts_s_per_ess"] == out["nuts_s_per_ess"] and got["speedup_vs_scipy_lsoda"] == 109.8
    assert set(got["sections_measured"]) == {"scipy", "nuts"} and got["nuts"]["posterior"] == str(path)


def test_versions_only_replaces_jax_versions(tmp_path, monkeypatch, capsys):
    """``--versions-only`` (``make bench-versions``) needs ``--other-python`` and an existing
    results file, and replaces only ``jax_versions`` (keyed by each stack's jax version)
    and its ``sections_measured`` entry. The measurements are stubbed: only the plumbing is
    checked here, the figures are ``key_figures``' own."""
    import json

    import suite

    def figures(jax_version, value_s):
        return {
            "population": {"subjects_per_s": 200.0},
            "grad": {
                "reverse": {"value_s": value_s, "value_and_grad_s": 0.2, "grad_over_value": 0.2 / value_s},
                "forward": {"value_and_grad_s": 2.0},
            },
            "compile": {"simulate": {"cold_s": 3.0, "warm_s": 1.5}},
            "expm": {"solver_over_expm": 0.25},
            "versions": {"jax": jax_version},
        }

    calls = []
    monkeypatch.setattr(suite, "key_figures", lambda args: calls.append("this") or figures("0.4.31", 0.02))
    monkeypatch.setattr(
        suite,
        "_other_key_figures",
        lambda args: calls.append(args.other_python) or figures("0.12.0.1", 0.016),
    )
    latest = tmp_path / "latest.json"
    with pytest.raises(SystemExit):
        suite.main(["--versions-only", "--out", str(latest), "--other-python", "py"])  # no file yet
    earlier = {
        "speedup_vs_scipy_lsoda": 110.1,
        "jax_versions": {"0.10.2": {}},
        "sections_measured": {"scipy": {}},
    }
    latest.write_text(json.dumps(earlier))
    with pytest.raises(SystemExit):
        suite.main(["--versions-only", "--out", str(latest)])  # no --other-python
    assert "--versions-only: needs --other-python" in capsys.readouterr().err
    assert calls == []
    suite.main(["--versions-only", "--out", str(latest), "--other-python", "py"])
    assert calls == ["this", "py"]
    got = json.loads(latest.read_text())
    assert set(got["jax_versions"]) == {"0.4.31", "0.12.0.1"} and got["speedup_vs_scipy_lsoda"] == 110.1
    assert got["jax_versions"]["0.12.0.1"]["grad"]["reverse"]["value_s"] == 0.016
    assert set(got["sections_measured"]) == {"scipy", "jax_versions"}
    table = capsys.readouterr().out
    assert "0.12.0.1" in table and "grad_over_value (reverse)" in table and "12.5" in table


def test_nuts_seconds_per_ess_of_a_resumable_run_so_far():
    """A resumable run's directory gives its draws so far: here the committed pilot run of
    session 15 (4 chains, 60 draws each; its seconds are the initial state's and the
    pieces'). If the evidence library changes, this run can no longer be continued and the
    check fails with 'no longer gives': replace the committed runs then."""
    import pickle

    run = Path(__file__).parents[1] / "benchmarks" / "runs" / "statement_pilot"
    out = nuts_from_posterior(run)
    seconds = pickle.loads((run / "init.pkl").read_bytes())["seconds"] + sum(
        pickle.loads(p.read_bytes())["seconds"] for p in sorted(run.glob("piece_*.pkl"))
    )
    assert out["partial"] and out["draws_per_chain"] == 60 and out["draws"] == 240
    assert out["nuts_wall_s"] == pytest.approx(seconds, rel=1e-12)
    assert out["nuts_s_per_ess"] == pytest.approx(seconds / out["min_bulk_ess"], rel=1e-12)
    assert 0 < out["divergence_fraction"] < 0.1 and 1.0 < out["max_r_hat"] < 1.2


def test_population_parts_combine_into_one_record(tmp_path):
    """A large population run as index ranges (``population.py --first``) is recorded as
    one population only if the ranges tile [0, N): wall time summed, steps weighted by
    subjects, the largest part's peak memory."""
    import json

    from population import combine, main

    def part(first, n, wall, steps, peak, solved=True):
        run = dict(first_subject=first, subjects=n, wall_s=wall, subjects_per_s=n / wall, mean_steps=steps)
        run |= dict(peak_memory_bytes=peak, all_solved=solved)
        return {"benchmark": "b", "solver": {"rtol": 1e-6}, "runs": [run], "date": "2026-11-24"}

    parts = [part(100, 50, 5.0, 40.0, 3e8), part(0, 100, 10.0, 30.0, 2e8)]
    c = combine(parts, ["b.json", "a.json"])
    assert (c["subjects"], c["parts"], c["wall_s"], c["subjects_per_s"]) == (150, 2, 15.0, 10.0)
    assert c["mean_steps"] == pytest.approx((100 * 30.0 + 50 * 40.0) / 150) and c["all_solved"]
    assert c["max_peak_memory_bytes"] == 3e8 and [p["file"] for p in c["parts_detail"]] == [
        "a.json",
        "b.json",
    ]
    assert not combine([part(0, 10, 1.0, 1.0, None, solved=False)])["all_solved"]
    with pytest.raises(ValueError, match=r"b.json: starts at subject 90, expected 100 \(gap or overlap\)"):
        combine([part(0, 100, 1.0, 1.0, 1), part(90, 10, 1.0, 1.0, 1)], ["a.json", "b.json"])
    with pytest.raises(ValueError, match="starts at subject 10, expected 0"):
        combine([part(10, 10, 1.0, 1.0, 1)])
    other = part(100, 50, 5.0, 40.0, 1) | {"solver": {"rtol": 1e-8}}
    with pytest.raises(ValueError, match="differ in 'solver'"):
        combine([part(0, 100, 1.0, 1.0, 1), other])
    files = []
    for i, p in enumerate(parts):
        files.append(tmp_path / f"p{i}.json")
        files[-1].write_text(json.dumps(p))
    main(["--combine", *map(str, files), "--out", str(tmp_path / "all.json")])
    assert json.loads((tmp_path / "all.json").read_text())["subjects"] == 150
    with pytest.raises(ValueError, match="--combine: give --out"):
        main(["--combine", *map(str, files)])


def test_peak_memory_is_the_benchmark_processs_own():
    """``peak_memory_bytes`` in a process started by a larger one (``suite.py`` starts each
    population run so) is that process's own peak: ``getrusage``'s ``ru_maxrss`` would
    carry the parent's resident set over (session 29: every scaling row read the suite's
    ~620 MiB)."""
    import subprocess

    from _common import peak_memory_bytes

    big = bytearray(1 << 30)  # this process: 1 GiB more, every page touched
    big[::4096] = b"x" * len(range(0, 1 << 30, 4096))
    here = peak_memory_bytes()
    code = "import sys; sys.path.insert(0, sys.argv[1]); from _common import peak_memory_bytes; print(peak_memory_bytes())"
    bench_dir = str(Path(__file__).parents[1] / "benchmarks")
    out = subprocess.run(
        [sys.executable, "-c", code, bench_dir], capture_output=True, text=True, check=True
    ).stdout
    child = int(out.split()[-1])
    del big
    assert here > 1 << 30
    assert 10 * 2**20 < child < here - (1 << 29), (child, here)  # jax imported, not the parent's GiB


def test_posterior_geometry_names_draws_and_whitened_hessian(tmp_path):
    """The geometry benchmark's pieces: entry names in ``ravel_pytree``'s order; only the
    draws-phase samples of a saved run; the whitened Hessian of a Gaussian potential by
    its own covariance is the identity; a directional curvature splits into the rows'
    parts and the rest."""
    import jax
    from jax.flatten_util import ravel_pytree
    from posterior_geometry import curvature_by_row, flat_names, run_draws, whitened_hessian

    z = {"tau_b": np.float64(3.0), "a": np.float64(1.0), "z_b": np.array([5.0, 6.0])}
    flat, _ = ravel_pytree(z)
    values = {"a": 1.0, "tau_b": 3.0, "z_b[0]": 5.0, "z_b[1]": 6.0}
    assert [values[n] for n in flat_names(z)] == np.asarray(flat).tolist()

    pilot = Path(__file__).parents[1] / "benchmarks" / "runs" / "statement_pilot"
    draws = run_draws(pilot)  # 4 chains x 60 draws; the 19 warm-up iterations left out
    assert {np.shape(v)[0] for v in draws.values()} == {240}
    assert draws["z_lung"].shape == (240, 10)
    with pytest.raises(ValueError, match="no draws-phase piece"):
        run_draws(tmp_path)

    rng = np.random.default_rng(0)
    b = rng.normal(size=(4, 4))
    a = b @ b.T + 4 * np.eye(4)
    grad = jax.jit(jax.grad(lambda y: 0.5 * y @ jnp.asarray(a) @ y))
    lower = np.linalg.cholesky(np.linalg.inv(a))
    hw, asymmetry = whitened_hessian(grad, rng.normal(size=4), lower, 1e-2)
    np.testing.assert_allclose(hw, np.eye(4), atol=1e-10)
    assert asymmetry < 1e-10

    # Curvature split over rows: two rows' terms and a prior part, all quadratic.
    def row_terms(y):
        return -0.5 * np.array([2.0 * y[0] ** 2, 7.0 * y[1] ** 2])

    def value(y):
        return -row_terms(y).sum() + 0.5 * 3.0 * y[2] ** 2

    split = curvature_by_row(value, row_terms, np.array([0.3, -1.0, 2.0]), np.ones(3), ["r0", "r1"])
    assert split["total"] == pytest.approx(12.0) and split["rows_sum"] == pytest.approx(9.0)
    assert split["rest"] == pytest.approx(3.0)
    assert [r for r, _ in split["top_rows"]] == ["r1", "r0"]
