"""``benchmarks/recalibrate.py``: the one command that re-creates the shipped calibration
(issue 6). Its stages are checked against the committed runs the shipped posterior came
from; its control flow (resume, extend until converged, export only a converged fit)
with a stand-in for the hours-long NUTS runs."""

from __future__ import annotations

import hashlib
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import recalibrate  # noqa: E402

RUNS = ROOT / "benchmarks" / "runs"


def _options(argv) -> dict:
    out = {}
    for a in argv:
        key, _, value = a[2:].partition("=")
        out[key] = value if value else True
    return out


def test_stages_are_the_runs_behind_the_shipped_posterior(tmp_path):
    """Pointed at the committed pilot and pooled runs, each stage has the settings of the
    run that followed (its config.pkl), starts from the last piece of the one before (as
    the shipped fit's meta records) and gets the dense mass matrix that run used (to
    rounding)."""
    from mscpk.calibration import defaults
    from mscpk.calibration import fit as calfit

    shipped = RUNS / "recalibrate_v2"
    (tmp_path / "pilot").symlink_to(shipped / "pilot")
    (tmp_path / "pooled").symlink_to(shipped / "pooled")
    problem = calfit.problem_of_run(shipped / "final")
    # The options every stage of the shipped fit got (recalibrate's defaults).
    options = json.loads((shipped / "pipeline.json").read_text())["options"]
    assert options == ["--share-step-size", "--detection-limit-log-sd=1.0"]
    for stage in ("pilot", "pooled", "final"):
        opts = _options(recalibrate.stage_args(tmp_path, stage, draws=240, options=options))
        config = pickle.loads((shipped / stage / "config.pkl").read_bytes())
        assert config["share_step_size"] is True and config["detection_limit_log_sd"] == 1.0
        assert int(opts["chains"]) == config["chains"] and int(opts["warmup"]) == config["warmup"]
        assert int(opts["max-tree-depth"]) == config["max_tree_depth"]
        assert float(opts["target-accept"]) == config["target_accept"]
        assert float(opts.get("init-scatter", 0.0)) == config.get("init_scatter", 0.0)
        assert config["adapt_mass_matrix"] is False and config["warm_start"] == ("warm-start" in opts)
        assert opts["state-dir"] == str(tmp_path / stage)
        if stage == "pilot":
            assert opts["metric-laplace"] is True  # its matrix needs the MAP: not recomputed here
            continue
        before = opts["metric-from"]
        assert opts["warm-start"] == str(Path(before) / "piece_0007.pkl")
        draws = calfit.pilot_draws(before, since=int(opts["metric-since"]))
        assert next(iter(draws.values())).shape[:2] == (4, 60)  # the 60 draws per chain it ran
        m = calfit.dense_metric(problem, draws)
        # The run's own matrix (the file whose SHA-256 its config records), recomputed: to
        # rounding, since BLAS sums in an order that depends on the CPU (this gave the same
        # bits on the machine that ran the fit, and differs in the last bit of 128 of the
        # 2,500 entries on another).
        used = np.load(shipped / stage / "metric.npy")
        assert (
            hashlib.sha256(np.ascontiguousarray(used).tobytes()).hexdigest()
            == config["inverse_mass_matrix_sha256"]
        )
        np.testing.assert_allclose(m, used, rtol=0, atol=1e-12 * np.abs(used).max())
    meta = (
        json.loads((defaults.DATA_DIR / defaults.META_FILE).read_text())
        if defaults.DATA_DIR.exists()
        else None
    )
    if meta is not None:  # the shipped fit records where it started (mscpk fit --export)
        assert meta["warm_start"].endswith("recalibrate_v2/pooled/piece_0007.pkl")
        assert meta["metric_from"].endswith("recalibrate_v2/pooled") and meta["metric_since"] == "19"
        assert meta["detection_limit_log_sd"] == 1.0
    with pytest.raises(ValueError, match="unknown stage"):
        recalibrate.stage_args(tmp_path, "extra")
    with pytest.raises(ValueError, match="draws: the final stage"):
        recalibrate.stage_args(tmp_path, "final")


class FakeRuns:
    """Stands in for ``benchmarks/calibration.py``: writes a stage's pieces (10 draws per
    call), and on finishing its posterior, ``calibration.json`` and coverage.csv. The
    final stage's diagnostics improve with its draws as given by ``ess``."""

    def __init__(self, clock, ess=lambda draws: 2.0 * draws, within=0.9, stop_pilot_after=None):
        self.calls, self.clock, self.ess, self.within = [], clock, ess, within
        self.stop_pilot_after = stop_pilot_after

    def __call__(self, argv):
        opts = _options(argv)
        self.calls.append(opts)
        if "export" in opts:  # the shipped files; here only the metadata the pipeline adds to
            Path(opts["export"]).mkdir(parents=True, exist_ok=True)
            (Path(opts["export"]) / "posterior_meta.json").write_text(json.dumps({"seconds": 1.0}))
        d = Path(opts["state-dir"])
        d.mkdir(parents=True, exist_ok=True)
        if not (d / "map.pkl").exists():
            assert d.name == "pilot"  # the later stages get the pilot's MAP
            (d / "map.pkl").write_bytes(b"map")
        if "warm-start" in opts:
            assert Path(opts["warm-start"]).exists()
        draws = int(opts["draws"])
        have = len(list(d.glob("piece_*.pkl"))) * 10
        while have < draws:
            if d.name == "pilot" and self.stop_pilot_after is not None and have >= self.stop_pilot_after:
                return  # stopped by --hours
            (d / f"piece_{have // 10:04d}.pkl").write_bytes(b"piece")
            have += 10
            self.clock.t += 100.0
        (d / "posterior.nc").write_bytes(b"nc")
        ess = self.ess(draws) if d.name == "final" else 50.0
        diag = {"max_r_hat": 1.005, "min_ess_bulk": ess, "divergence_fraction": 0.0}
        (d / "calibration.json").write_text(json.dumps({"diagnostics": diag}))
        (d / "posterior.nc.ppc").mkdir(exist_ok=True)
        pd.DataFrame(
            {"within": [True] * int(100 * self.within) + [False] * (100 - int(100 * self.within))}
        ).to_csv(d / "posterior.nc.ppc" / "coverage.csv", index=False)


def _recorded_before(root, setting: str) -> None:
    """``root``'s ``pipeline.json`` as a root started before ``setting`` was recorded."""
    record = json.loads((root / "pipeline.json").read_text())
    del record[setting]
    (root / "pipeline.json").write_text(json.dumps(record))


class Clock:
    t = 0.0

    def __call__(self):
        return self.t


def test_pipeline_resumes_extends_until_converged_and_exports_only_then(tmp_path, capsys):
    clock = Clock()
    root = tmp_path / "cal"
    runs = FakeRuns(clock, stop_pilot_after=30)
    # Stopped in the pilot (its --hours): nothing after it runs; the same command continues.
    assert recalibrate.main(["--root", str(root), "--hours", "1"], runner=runs, clock=clock) == 0
    assert [c["state-dir"] for c in runs.calls] == [str(root / "pilot")]
    assert "stopped in stage 'pilot'" in capsys.readouterr().out
    assert float(runs.calls[0]["hours"]) == pytest.approx(1.0)
    runs.stop_pilot_after = None
    out = tmp_path / "shipped"
    assert recalibrate.main(["--root", str(root), "--export", str(out)], runner=runs, clock=clock) == 0
    stages = [(Path(c["state-dir"]).name, int(c["draws"]), "export" in c) for c in runs.calls[1:]]
    assert stages[:3] == [("pilot", 60, False), ("pooled", 60, False), ("final", 240, False)]
    assert stages[-1] == ("final", 240, True)  # 2 x 240 = 480 >= 400: met at once, exported
    assert (root / "pooled" / "map.pkl").read_bytes() == b"map" == (root / "final" / "map.pkl").read_bytes()
    assert runs.calls[2]["warm-start"] == str(root / "pilot" / "piece_0005.pkl")
    assert runs.calls[3]["warm-start"] == str(root / "pooled" / "piece_0005.pkl")
    record = json.loads((root / "pipeline.json").read_text())
    assert record["stages"]["pilot"]["finished"] and record["stages"]["pooled"]["finished"]
    assert record["stages"]["pilot"]["wall_s"] == pytest.approx(600.0)  # 3 + 3 pieces of 100 s
    assert record["final_draws"] == 240 and record["ppc_within_90"] == pytest.approx(0.9)
    # The export's metadata carries the whole calibration's wall time beside its own.
    meta = json.loads((out / "posterior_meta.json").read_text())
    assert meta["seconds"] == 1.0 and meta["pipeline"]["final_draws"] == 240
    walls = {k: v["wall_s"] for k, v in record["stages"].items()}
    assert meta["pipeline"]["stages_wall_s"] == walls and meta["pipeline"]["total_wall_s"] == sum(
        walls.values()
    )
    assert meta["pipeline"]["options"] == record["options"]
    # Finished stages are not run again.
    n = len(runs.calls)
    assert recalibrate.main(["--root", str(root)], runner=runs, clock=clock) == 0
    assert [Path(c["state-dir"]).name for c in runs.calls[n:]] == ["final"]


def test_pipeline_extends_the_final_stage_and_refuses_to_export_what_falls_short(tmp_path, capsys):
    clock = Clock()
    runs = FakeRuns(clock, ess=lambda draws: draws + 150.0)
    root, out = tmp_path / "cal", tmp_path / "shipped"
    assert recalibrate.main(["--root", str(root), "--export", str(out)], runner=runs, clock=clock) == 0
    finals = [(int(c["draws"]), "export" in c) for c in runs.calls if Path(c["state-dir"]).name == "final"]
    assert finals == [(240, False), (270, False), (270, True)]  # ESS 390 < 400, then 420
    assert json.loads((root / "pipeline.json").read_text())["final_draws"] == 270
    # Too few rows inside their predictive interval: converged but not exported.
    runs2 = FakeRuns(clock, within=0.7)
    assert (
        recalibrate.main(["--root", str(tmp_path / "b"), "--export", str(out)], runner=runs2, clock=clock)
        == 1
    )
    assert not any("export" in c for c in runs2.calls)
    assert "not exported: 70%" in capsys.readouterr().out
    # Never converging: stops at --max-draws with exit status 1.
    runs3 = FakeRuns(clock, ess=lambda draws: 100.0)
    assert (
        recalibrate.main(["--root", str(tmp_path / "c"), "--max-draws", "300"], runner=runs3, clock=clock)
        == 1
    )
    assert [int(c["draws"]) for c in runs3.calls if Path(c["state-dir"]).name == "final"] == [240, 270, 300]
    with pytest.raises(ValueError, match="--extend: expected an integer >= 1, got 0"):
        recalibrate.main(["--root", str(tmp_path / "d"), "--extend", "0"], runner=runs3)
    with pytest.raises(ValueError, match="--hours: expected hours > 0"):
        recalibrate.main(["--root", str(tmp_path / "d"), "--hours", "0"], runner=runs3)


def test_pipeline_options_go_to_every_stage_and_stay_with_the_root(tmp_path):
    """The shipped fit's options by default (one shared step size after warm-up, the
    assumed detection limits integrated out with log-SD ``DETECTION_LIMIT_LOG_SD``):
    given to every stage (the export included) and recorded; ``--own-step-sizes`` and
    ``--detection-limit-log-sd 0`` give the earlier fit's; a root started with other
    options is refused."""
    from mscpk.observation.parameters import DETECTION_LIMIT_LOG_SD

    clock = Clock()
    runs = FakeRuns(clock)
    root = tmp_path / "cal"
    assert (
        recalibrate.main(
            ["--root", str(root), "--export", str(tmp_path / "shipped")], runner=runs, clock=clock
        )
        == 0
    )
    assert [Path(c["state-dir"]).name for c in runs.calls] == ["pilot", "pooled", "final", "final"]
    for c in runs.calls:
        assert (
            c["share-step-size"] is True
            and float(c["detection-limit-log-sd"]) == DETECTION_LIMIT_LOG_SD == 1.0
        )
    assert json.loads((root / "pipeline.json").read_text())["options"] == [
        "--share-step-size",
        "--detection-limit-log-sd=1.0",
    ]
    # The explicit spelling of the defaults is the same run: it continues this root.
    n = len(runs.calls)
    same = ["--root", str(root), "--share-step-size", "--detection-limit-log-sd", "1"]
    assert recalibrate.main(same, runner=runs, clock=clock) == 0 and len(runs.calls) == n + 1
    plain = recalibrate.stage_args(root, "final", draws=240)
    assert not any(a.startswith(("--share-step-size", "--detection-limit")) for a in plain)
    with pytest.raises(ValueError, match="holds a calibration run with the options"):
        recalibrate.main(["--root", str(root), "--own-step-sizes"], runner=runs, clock=clock)
    # The fit shipped before 2026-12: each chain's own step size, known detection limits.
    earlier = tmp_path / "earlier"
    runs2 = FakeRuns(clock)
    argv = ["--root", str(earlier), "--own-step-sizes", "--detection-limit-log-sd", "0"]
    assert recalibrate.main(argv, runner=runs2, clock=clock) == 0
    for c in runs2.calls:
        assert "share-step-size" not in c and c["detection-limit-log-sd"] == "0.0"
    assert json.loads((earlier / "pipeline.json").read_text())["options"] == ["--detection-limit-log-sd=0.0"]
    with pytest.raises(ValueError, match="--own-step-sizes: not with --share-step-size"):
        recalibrate.main(
            ["--root", str(tmp_path / "d"), "--own-step-sizes", "--share-step-size"], runner=runs
        )
    with pytest.raises(ValueError, match="--detection-limit-log-sd: expected a finite number >= 0, got -1.0"):
        recalibrate.main(["--root", str(tmp_path / "d"), "--detection-limit-log-sd", "-1"], runner=runs)


def test_final_target_acceptance_goes_to_the_final_stage_and_stays_with_the_root(tmp_path):
    """``--final-target-accept``: the final stage's NUTS target (the export's included),
    recorded in ``pipeline.json`` and the export's metadata; the pilot and pooled stages
    keep theirs. A root recorded with another target is refused, and a root started
    before the target was recorded is taken to have run at 0.9."""
    clock = Clock()
    runs = FakeRuns(clock)
    root = tmp_path / "cal"
    argv = ["--root", str(root), "--final-target-accept", "0.7", "--export", str(tmp_path / "shipped")]
    assert recalibrate.main(argv, runner=runs, clock=clock) == 0
    assert [(Path(c["state-dir"]).name, float(c["target-accept"])) for c in runs.calls] == [
        ("pilot", 0.85),
        ("pooled", recalibrate.POOLED_TARGET_ACCEPT),
        ("final", 0.7),
        ("final", 0.7),
    ]
    assert json.loads((root / "pipeline.json").read_text())["final_target_accept"] == 0.7
    meta = json.loads((tmp_path / "shipped" / "posterior_meta.json").read_text())
    assert meta["pipeline"]["final_target_accept"] == 0.7
    with pytest.raises(ValueError, match="final stage targets acceptance 0.7, not 0.9"):
        recalibrate.main(["--root", str(root), "--final-target-accept", "0.9"], runner=runs, clock=clock)
    # the default is the shipped fit's
    default = recalibrate.stage_args(root, "final", draws=240)
    assert f"--target-accept={recalibrate.FINAL_TARGET_ACCEPT!r}" in default
    # a root from before: its stages ran, its record has no target
    _recorded_before(root, "final_target_accept")
    with pytest.raises(ValueError, match="final stage targets acceptance 0.9, not 0.7"):
        recalibrate.main(["--root", str(root), "--final-target-accept", "0.7"], runner=runs, clock=clock)
    with pytest.raises(ValueError, match="--final-target-accept: expected a number in \\(0, 1\\), got 1.0"):
        recalibrate.main(["--root", str(tmp_path / "x"), "--final-target-accept", "1"], runner=runs)


def test_final_metric_from_both_stages_goes_to_the_final_stage_and_stays_with_the_root(tmp_path):
    """``--final-metric-from pilot+pooled``: the final stage (its export included) gets
    both stages' directories as ``--metric-from`` (``mscpk fit`` pools their draws), still
    starts from the pooled stage's last piece, and the choice is recorded in
    ``pipeline.json`` and the export's metadata. A root recorded with the other choice, or
    started before the choice was recorded, is refused."""
    clock = Clock()
    runs = FakeRuns(clock)
    root = tmp_path / "cal"
    argv = ["--root", str(root), "--final-metric-from", "pilot+pooled", "--export", str(tmp_path / "shipped")]
    seen = []
    assert recalibrate.main(argv, runner=lambda a: (seen.append(a), runs(a)), clock=clock) == 0
    metric_args = [[a for a in call if a.startswith("--metric-from=")] for call in seen]
    assert metric_args[1] == [f"--metric-from={root / 'pilot'}"]  # the pooled stage's: as before
    both = [f"--metric-from={root / 'pilot'}", f"--metric-from={root / 'pooled'}"]
    assert metric_args[2:] == [both, both]  # the final stage and its export
    assert runs.calls[2]["warm-start"] == str(root / "pooled" / "piece_0005.pkl")
    assert json.loads((root / "pipeline.json").read_text())["final_metric_from"] == "pilot+pooled"
    meta = json.loads((tmp_path / "shipped" / "posterior_meta.json").read_text())
    assert meta["pipeline"]["final_metric_from"] == "pilot+pooled"
    with pytest.raises(ValueError, match="mass matrix comes from 'pilot\\+pooled', not 'pooled'"):
        recalibrate.main(["--root", str(root)], runner=runs, clock=clock)
    # the default is the shipped fit's: the pooled stage's draws only
    default = recalibrate.stage_args(root, "final", draws=240)
    assert [a for a in default if a.startswith("--metric-from=")] == [f"--metric-from={root / 'pooled'}"]
    # a root from before: its stages ran, its record has no choice
    _recorded_before(root, "final_metric_from")
    with pytest.raises(ValueError, match="comes from 'pooled', not 'pilot\\+pooled'"):
        recalibrate.main(
            ["--root", str(root), "--final-metric-from", "pilot+pooled"], runner=runs, clock=clock
        )
    with pytest.raises(
        ValueError, match="final_metric_from: expected one of \\['pilot\\+pooled', 'pooled'\\]"
    ):
        recalibrate.stage_args(root, "final", draws=240, final_metric_from="all")
    with pytest.raises(SystemExit):
        recalibrate.main(["--root", str(tmp_path / "x"), "--final-metric-from", "all"], runner=runs)


def test_final_seed_keys_only_the_final_stage_and_stays_with_the_root(tmp_path):
    """``--final-seed N`` with ``--stages-from``: a replicate of the final stage from the
    same pilot and pooled stages. The final stage (its export included) gets ``--seed=N``,
    the pilot and pooled stages keep the default key; ``pipeline.json`` and the export's
    metadata record it. The default passes no ``--seed`` (the shipped fit's arguments), a
    root recorded with another seed, or started before the seed was recorded with one
    other than 0, is refused, and so is a negative seed."""
    clock = Clock()
    runs = FakeRuns(clock)
    old = tmp_path / "old"
    assert recalibrate.main(["--root", str(old)], runner=runs, clock=clock) == 0
    assert not any("seed" in c for c in runs.calls)  # the default: no --seed anywhere
    assert json.loads((old / "pipeline.json").read_text())["final_seed"] == recalibrate.FINAL_SEED == 0
    n = len(runs.calls)
    new = tmp_path / "new"
    argv = ["--root", str(new), "--stages-from", str(old), "--final-seed", "3"]
    assert recalibrate.main(argv + ["--export", str(tmp_path / "shipped")], runner=runs, clock=clock) == 0
    assert [(Path(c["state-dir"]).name, c.get("seed")) for c in runs.calls[n:]] == [("final", "3")] * 2
    assert json.loads((new / "pipeline.json").read_text())["final_seed"] == 3
    meta = json.loads((tmp_path / "shipped" / "posterior_meta.json").read_text())
    assert meta["pipeline"]["final_seed"] == 3 and meta["pipeline"]["stages_from"] == str(old)
    assert recalibrate.main(["--root", str(new), "--final-seed", "3"], runner=runs, clock=clock) == 0
    with pytest.raises(ValueError, match="keyed by seed 3, not 0; use --final-seed 3 or a new --root"):
        recalibrate.main(["--root", str(new)], runner=runs, clock=clock)
    # the pilot and pooled stages' arguments do not depend on it
    for name in ("pilot", "pooled"):
        assert recalibrate.stage_args(new, name, final_seed=5) == recalibrate.stage_args(new, name)
    # ... and each stage's arguments go through benchmarks/calibration.py to mscpk fit's parser,
    # the final stage's with its seed (the key of its chains), the others' with fit's default
    import calibration

    from mscpk.cli import build_parser as fit_parser

    for name, draws in (("pilot", None), ("pooled", None), ("final", 240)):
        argv = recalibrate.stage_args(new, name, draws, final_metric_from="pilot+pooled", final_seed=5)
        cmd = calibration.fit_command(calibration.build_parser().parse_args(argv))
        fit = fit_parser().parse_args(cmd)
        assert (fit.command, fit.seed) == ("fit", 5 if name == "final" else 0), name
    # a root from before: its stages ran, its record has no seed (so 0)
    _recorded_before(old, "final_seed")
    with pytest.raises(ValueError, match="keyed by seed 0, not 2"):
        recalibrate.main(["--root", str(old), "--final-seed", "2"], runner=runs, clock=clock)
    with pytest.raises(ValueError, match="--final-seed: expected an integer >= 0, got -1"):
        recalibrate.main(["--root", str(tmp_path / "x"), "--final-seed", "-1"], runner=runs)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="final_seed: expected an integer >= 0"):
            recalibrate.stage_args(new, "final", draws=240, final_seed=bad)
    assert not (tmp_path / "x").exists()


def test_stages_from_an_earlier_root_runs_only_the_final_stage(tmp_path):
    """``--stages-from OLD --root NEW``: NEW starts with copies of OLD's finished pilot and
    pooled stages and their recorded wall times; only the final stage runs (with NEW's own
    final-stage settings), from the copied pooled stage's last piece; the export's metadata
    names OLD. Refused: an existing NEW, an OLD with other options or unfinished stages."""
    clock = Clock()
    runs = FakeRuns(clock)
    old = tmp_path / "old"
    assert recalibrate.main(["--root", str(old)], runner=runs, clock=clock) == 0
    n = len(runs.calls)
    new = tmp_path / "new"
    argv = ["--root", str(new), "--stages-from", str(old), "--final-metric-from", "pilot+pooled"]
    seen = []
    argv_export = argv + ["--export", str(tmp_path / "shipped")]
    assert recalibrate.main(argv_export, runner=lambda a: (seen.append(a), runs(a)), clock=clock) == 0
    assert [Path(c["state-dir"]).name for c in runs.calls[n:]] == ["final", "final"]  # run, export
    assert runs.calls[n]["warm-start"] == str(new / "pooled" / "piece_0005.pkl")
    assert [a for a in seen[0] if a.startswith("--metric-from=")] == [
        f"--metric-from={new / 'pilot'}",
        f"--metric-from={new / 'pooled'}",
    ]
    was, now = (json.loads((d / "pipeline.json").read_text()) for d in (old, new))
    for name in ("pilot", "pooled"):
        assert now["stages"][name] == was["stages"][name]
        assert sorted(p.name for p in (new / name).iterdir()) == sorted(
            p.name for p in (old / name).iterdir()
        )
    assert now["stages_from"] == str(old) and now["final_metric_from"] == "pilot+pooled"
    assert now["final_target_accept"] == recalibrate.FINAL_TARGET_ACCEPT
    meta = json.loads((tmp_path / "shipped" / "posterior_meta.json").read_text())
    assert meta["pipeline"]["stages_from"] == str(old)
    assert meta["pipeline"]["total_wall_s"] == pytest.approx(sum(s["wall_s"] for s in now["stages"].values()))
    # continuing NEW later is an ordinary resume
    assert (
        recalibrate.main(
            ["--root", str(new), "--final-metric-from", "pilot+pooled"], runner=runs, clock=clock
        )
        == 0
    )
    with pytest.raises(ValueError, match="--root .* exists; it needs a new --root"):
        recalibrate.main(argv, runner=runs, clock=clock)
    with pytest.raises(ValueError, match="ran with the options .*, not"):
        recalibrate.main(
            ["--root", str(tmp_path / "n2"), "--stages-from", str(old), "--own-step-sizes"], runner=runs
        )
    with pytest.raises(ValueError, match="holds no pipeline.json"):
        recalibrate.main(["--root", str(tmp_path / "n3"), "--stages-from", str(tmp_path)], runner=runs)
    unfinished = tmp_path / "unfinished"
    assert recalibrate.main(["--root", str(unfinished), "--hours", "0.01"], runner=runs, clock=clock) == 0
    with pytest.raises(ValueError, match="has not finished its 'pooled' stage"):
        recalibrate.main(["--root", str(tmp_path / "n4"), "--stages-from", str(unfinished)], runner=runs)
    assert not any((tmp_path / n).exists() for n in ("n2", "n3", "n4"))
