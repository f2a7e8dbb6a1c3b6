"""Tests for rlscale.analysis and rlscale.report: exact fits on synthetic frontiers first, then
a fake sweep directory analysed end to end."""

from __future__ import annotations

import base64
import json
import math
import subprocess
import sys
import warnings
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rlscale.analysis import analyze, diminishing_returns, fit_pareto, pareto_entries, pending_batch_sizes, steps_to_target_table
from rlscale.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

BATCH_SIZES = 2.0 ** np.arange(5, 14)  # 32 .. 8192 env steps per iteration
COMBOS = [(100.0, 256.0), (1000.0, 1024.0), (10.0, 2048.0), (50.0, 128.0), (300.0, 4096.0)]


def _rel(a: float, b: float) -> float:
    return abs(a / b - 1.0)


# ----------------------------------------------------------------------------------------
# fit_pareto
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("s_min,b_crit", COMBOS)
def test_fit_pareto_exact(s_min, b_crit):
    steps = s_min * (1.0 + b_crit / BATCH_SIZES)
    fit = fit_pareto(BATCH_SIZES, steps)
    assert _rel(fit.s_min, s_min) < 0.01
    assert _rel(fit.e_min, s_min * b_crit) < 0.01
    assert _rel(fit.b_crit, b_crit) < 0.01
    assert fit.n_points == fit.n_batch_sizes == BATCH_SIZES.size
    assert fit.residual_rms < 1e-6
    np.testing.assert_allclose(fit.steps(BATCH_SIZES), steps, rtol=1e-6)


@pytest.mark.parametrize("s_min,b_crit", COMBOS)
def test_fit_pareto_multiplicative_noise(s_min, b_crit):
    # Four noisy runs per batch size, as seeds would give; 5% log-normal noise.
    rng = np.random.default_rng(1234)
    batch_sizes = np.repeat(BATCH_SIZES, 4)
    steps = s_min * (1.0 + b_crit / batch_sizes) * np.exp(rng.normal(0.0, 0.05, batch_sizes.size))
    fit = fit_pareto(batch_sizes, steps)
    assert _rel(fit.s_min, s_min) < 0.10
    assert _rel(fit.e_min, s_min * b_crit) < 0.10
    assert _rel(fit.b_crit, b_crit) < 0.10
    assert fit.n_batch_sizes == BATCH_SIZES.size
    assert 0.02 < fit.residual_rms < 0.08  # it sees the 5% noise


def test_fit_pareto_needs_two_batch_sizes():
    with pytest.raises(ValueError):
        fit_pareto([256, 256, 256], [10.0, 11.0, 12.0])
    with pytest.raises(ValueError):
        fit_pareto([128, 256], [10.0, float("inf")])


# ----------------------------------------------------------------------------------------
# A fake sweep directory
# ----------------------------------------------------------------------------------------

ENV = "CartPole-v1"
SWEEP_SIZES = [64, 128, 256, 512, 1024]
NUM_MINIBATCHES = 4
S_MIN, B_CRIT = 20.0, 256.0  # true frontier for the low target: S = 20 (1 + 256 / B)
SEED_FACTORS = {0: 0.95, 1: 1.0, 2: 1.07}  # the median seed is exactly on the frontier


def _good_lr(b: int) -> float:
    # The best lr changes with batch size, so the per-B choice matters.
    return 3e-4 if b <= 128 else 1e-3


def _write_trial(sweep: Path, trial: dict, n_iterations: int | None = None) -> None:
    trial_dir = sweep / "trials" / trial["trial_id"]
    trial_dir.mkdir(parents=True)
    (trial_dir / "trial.json").write_text(json.dumps(trial))
    if n_iterations:
        b = trial["env_steps_per_iteration"]
        it = np.arange(1, n_iterations + 1)
        noise = 30.0 + it.astype(float)
        noise[:2] = np.nan  # the EMA is undefined for the first iterations
        pd.DataFrame({
            "iteration": it,
            "env_steps": it * b,
            "optimizer_steps": it * NUM_MINIBATCHES * 4,
            "wall_time_s": it * 0.1,
            "charts/episode_return_smoothed": np.linspace(10, 500, it.size),
            "noise/b_simple_ema": noise,
        }).to_csv(trial_dir / "metrics.csv", index=False)


def _target_result(b: int, iterations: float | None, b_simple: float) -> dict:
    if iterations is None:
        return {"reached": False, "iterations": None, "optimizer_steps": None, "env_steps": None,
                "wall_time_s": None, "b_simple_mean": None}
    it = int(round(iterations))
    return {"reached": True, "iterations": it, "optimizer_steps": it * NUM_MINIBATCHES * 4,
            "env_steps": it * b, "wall_time_s": it * 0.1, "b_simple_mean": b_simple}


def make_fake_sweep(root: Path) -> Path:
    """Five batch sizes x two lrs x three seeds, plus one failed trial and one pending at B=2048.

    Target 100: the good lr follows the frontier exactly at the median seed, the other lr takes
    1.5x the steps (and one of its seeds never reaches). Target 475: reached only at B=1024.
    Best-config trials report b_simple_mean = 60 + seed per gradient; others report 1000.
    """
    sweep = root / "sweep"
    sweep.mkdir()
    (sweep / "sweep.json").write_text(json.dumps(
        {"name": "fake-sweep", "targets": {ENV: [100.0, 475.0]}, "grid": "ignored"}))
    for b in SWEEP_SIZES:
        for lr in (3e-4, 1e-3):
            good = lr == _good_lr(b)
            for seed, factor in SEED_FACTORS.items():
                s_low = S_MIN * (1 + B_CRIT / b) * factor * (1.0 if good else 1.5)
                if not good and b == 64 and seed == 2:
                    s_low = None  # this seed never reached: +inf in the median
                b_simple = 60.0 + seed if good else 1000.0
                s_high = 80.0 * factor if (b == 1024 and good) else None
                trial = {
                    "trial_id": f"b{b}_lr{lr:g}_s{seed}", "env_id": ENV, "seed": seed,
                    "env_steps_per_iteration": b, "num_minibatches": NUM_MINIBATCHES,
                    "lr_rule": "grid", "lr": lr, "status": "completed", "error": None,
                    "targets": {"100.0": _target_result(b, s_low, b_simple),
                                "475.0": _target_result(b, s_high, b_simple)},
                    "b_simple_mean": b_simple,
                }
                _write_trial(sweep, trial, n_iterations=120)
    # A failed trial with a suspiciously fast result: it must not enter the fit.
    _write_trial(sweep, {
        "trial_id": "b256_failed", "env_id": ENV, "seed": 3, "env_steps_per_iteration": 256,
        "num_minibatches": NUM_MINIBATCHES, "lr_rule": "grid", "lr": 1e-3, "status": "failed",
        "error": "RuntimeError: worker died", "targets": {"100.0": _target_result(256, 1, 1.0)},
        "b_simple_mean": None})
    _write_trial(sweep, {
        "trial_id": "b2048_pending", "env_id": ENV, "seed": 4, "env_steps_per_iteration": 2048,
        "num_minibatches": NUM_MINIBATCHES, "lr_rule": "grid", "lr": 1e-3, "status": "pending",
        "error": None, "targets": {}, "b_simple_mean": None})
    return sweep


class _ImgCollector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs: list[str] = []
        self.tables = 0

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs).get("src", ""))
        if tag == "table":
            self.tables += 1


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    sweep = make_fake_sweep(tmp_path_factory.mktemp("fake"))
    result = analyze(sweep, wandb_mode="disabled")
    return sweep, result


def _entry(analysis: dict, target: float) -> dict:
    (entry,) = [e for e in analysis["entries"] if e["env_id"] == ENV and e["target"] == target]
    return entry


def test_steps_to_target_table(tmp_path):
    sweep = make_fake_sweep(tmp_path)
    table = steps_to_target_table(sweep)
    n_trials = len(SWEEP_SIZES) * 2 * 3 + 2
    assert len(table) == 2 * n_trials  # every trial gets a row per sweep target
    assert {"env_id", "target", "B", "lr_rule", "lr", "seed", "status", "reached", "iterations",
            "env_steps", "optimizer_steps", "wall_time_s", "b_simple_to_target"} <= set(table.columns)
    failed = table[table["trial_id"] == "b256_failed"]
    assert set(failed["status"]) == {"failed"}
    assert set(table.loc[table["trial_id"] == "b2048_pending", "reached"]) == {False}


def test_a_batch_size_with_trials_pending_stays_out_of_the_fits_until_they_finish(tmp_path, capsys):
    from rlscale.cli import main

    sweep = make_fake_sweep(tmp_path)
    table = steps_to_target_table(sweep)
    assert pending_batch_sizes(table).to_dict(orient="records") == [{"env_id": ENV, "B": 2048.0, "n_pending": 1}]
    # B = 512 mid-population: the slower lr (1e-3 there) was pruned and is completed, the winner
    # (3e-4) still runs. Its finished trials alone would make 1e-3 the best lr at 512.
    running = (table["B"] == 512) & (table["lr"] == _good_lr(512))
    table.loc[running, "status"] = "pending"
    # an adaptive run pending at B = 256 is no trial of that cell: 256 stays in
    adaptive = table[table["B"] == 256].head(2).assign(trial_id="adaptive_s1", lr_rule="adaptive", status="pending")
    table = pd.concat([table, adaptive], ignore_index=True)
    (low, _) = pareto_entries(table, n_bootstrap=20)
    assert low["batch_sizes"] == [64.0, 128.0, 256.0, 1024.0] and low["batch_sizes_swept"] == low["batch_sizes"]
    assert low["batch_sizes_pending"] == [512.0, 2048.0]
    assert math.isclose(low["b_crit"], B_CRIT, rel_tol=1e-3)  # the other four still lie on the frontier
    dim = diminishing_returns(table)
    assert 512.0 not in set(dim["B"]) and set(dim["B"]) == {64.0, 128.0, 256.0, 1024.0}
    # once the population finishes, B = 512 is back with its winner
    (low, _) = pareto_entries(steps_to_target_table(sweep), n_bootstrap=20)
    assert 512.0 in low["batch_sizes"] and {c["B"]: c["lr"] for c in low["best_configs"]}[512.0] == _good_lr(512)

    lost = next(d for d in sorted((sweep / "trials").iterdir()) if (d / "metrics.csv").is_file())
    (lost / "metrics.csv").unlink()  # one completed trial's table gone (records kept before tables were packed)
    assert main(["analyze", str(sweep), "--wandb-mode", "disabled"]) == 0
    err = capsys.readouterr().err
    assert f"{ENV} B=2048: 1 trial still pending, left out of the fits until it finishes" in err
    on_disk = json.loads((sweep / "analysis.json").read_text())
    assert on_disk["trials_without_metrics"] == {ENV: 1}
    assert f"{ENV}: 1 completed trial without a metrics table (metrics.csv or metrics.csv.gz): no pooled B_simple for the points it" in err
    assert on_disk["pending_batch_sizes"] == [{"env_id": ENV, "B": 2048.0, "n_pending": 1}]
    report = (sweep / "report.html").read_text()
    assert "while trials are pending (1)</h2>" in report and f"<td>{ENV}</td>\n      <td>2048</td>" in report


def test_an_entrys_intervals_do_not_depend_on_the_other_envs_analysed(tmp_path):
    table = steps_to_target_table(make_fake_sweep(tmp_path))
    other = table.assign(env_id="Acrobot-v1", trial_id=table["trial_id"] + "_acrobot")
    alone = {e["target"]: e for e in pareto_entries(table)}
    beside = {e["target"]: e for e in pareto_entries(pd.concat([other, table], ignore_index=True)) if e["env_id"] == ENV}
    for key in ("b_crit_ci", "s_min_ci", "e_min_ci", "b_simple_ci"):
        assert alone[100.0][key] is not None and alone[100.0][key] == beside[100.0][key], key
    # ... while another seed of the analysis draws other resamples
    assert pareto_entries(table, seed=1)[0]["b_crit_ci"] != alone[100.0]["b_crit_ci"]


def test_a_b_crit_interval_whose_resamples_run_beyond_the_batches_swept_is_flagged_unbounded(tmp_path):
    table = steps_to_target_table(make_fake_sweep(tmp_path))
    assert not pareto_entries(table)[0]["b_crit_ci_unbounded"]  # the fake frontier is well bounded
    # the good lr at B = 64 and 128 only: 100 iterations at 64 and 50, 60, 60 (seeds 0-2) at 128.
    # The medians (100, 60) fit S_min 20, B_crit 256 exactly; a resample with two 50s at 128
    # (7 in 27) halves the steps: S_min 0, B_crit without bound
    sel = table[(table["target"] == 100.0) & table["B"].isin([64, 128]) & (table["lr"] == 3e-4)].copy()
    sel["iterations"] = np.where(sel["B"] == 64, 100.0, sel["seed"].map({0: 50.0, 1: 60.0, 2: 60.0}))
    (entry,) = pareto_entries(sel)
    assert entry["status"] == "ok" and entry["b_crit"] == pytest.approx(256.0)
    assert entry["b_crit_ci"][1] > 8 * 128 and entry["b_crit_ci_unbounded"]


def test_analysis_json_fit_and_best_lr(analysed):
    sweep, result = analysed
    on_disk = json.loads((sweep / "analysis.json").read_text())
    assert on_disk["entries"] == result["entries"]
    for e in on_disk["entries"]:
        assert {"env_id", "target", "s_min", "e_min", "b_crit", "b_simple", "ratio"} <= set(e)

    low = _entry(on_disk, 100.0)
    assert low["status"] == "ok"
    assert low["batch_sizes"] == SWEEP_SIZES
    # Medians are the seed-1 runs, exactly on the frontier (the failed trial is ignored).
    expected = [round(S_MIN * (1 + B_CRIT / b)) for b in SWEEP_SIZES]
    assert low["steps"] == expected
    best = {c["B"]: c["lr"] for c in low["best_configs"]}
    assert best == {float(b): _good_lr(b) for b in SWEEP_SIZES}
    assert math.isclose(low["s_min"], S_MIN, rel_tol=1e-3)
    assert math.isclose(low["e_min"], S_MIN * B_CRIT, rel_tol=1e-3)
    assert math.isclose(low["b_crit"], B_CRIT, rel_tol=1e-3)
    for name in ["s_min", "e_min", "b_crit"]:
        lo, hi = low[f"{name}_ci"]
        assert 0 < lo <= low[name] <= hi
    # the same frontier per optimizer step: 4 epochs x NUM_MINIBATCHES steps per iteration
    per_iter = 4 * NUM_MINIBATCHES
    assert low["optimizer_steps_per_iteration"] == per_iter
    assert math.isclose(low["s_min_optimizer_steps"], low["s_min"] * per_iter)
    assert math.isclose(low["b_crit_per_optimizer_step"], low["b_crit"] / per_iter)
    assert low["b_crit_per_optimizer_step_ci"] == pytest.approx([x / per_iter for x in low["b_crit_ci"]])

    # b_simple: mean of (60, 61, 62) per gradient over best-config trials, x4 minibatches.
    assert math.isclose(low["b_simple_per_gradient"], 61.0)
    assert math.isclose(low["b_simple"], 61.0 * NUM_MINIBATCHES)
    assert math.isclose(low["ratio"], low["b_crit"] / (61.0 * NUM_MINIBATCHES))
    lo, hi = low["b_simple_ci"]  # over the trials' 60, 61, 62 per gradient
    assert 60.0 * NUM_MINIBATCHES <= lo <= low["b_simple"] <= hi <= 62.0 * NUM_MINIBATCHES


def test_too_few_batch_sizes_and_failed_trials(analysed):
    sweep, result = analysed
    high = _entry(result, 475.0)
    assert high["status"] == "too_few_batch_sizes"
    assert high["n_batch_sizes"] == 1
    assert high["s_min"] is None and high["b_crit"] is None and high["ratio"] is None
    assert [t["trial_id"] for t in result["failed_trials"]] == ["b256_failed"]
    assert result["failed_trials"][0]["error"] == "RuntimeError: worker died"
    # JSON must be strict: no NaN/Infinity tokens.
    text = (sweep / "analysis.json").read_text()
    assert "NaN" not in text and "Infinity" not in text


def test_diminishing_returns(analysed):
    sweep, result = analysed
    (dim,) = [d for d in result["diminishing_returns"] if d["target"] == 100.0]
    # Steps 100, 60, 40, 30, 25: cuts per doubling 40%, 33%, 25%, then 17% (< 20%) at 512.
    assert dim["lr_rule"] == "grid"
    assert dim["median_iterations"] == [100, 60, 40, 30, 25]
    assert dim["b_diminishing"] == 512
    (high,) = [d for d in result["diminishing_returns"] if d["target"] == 475.0]
    assert high["b_diminishing"] is None


def test_csv_tables(analysed):
    sweep, _ = analysed
    table = pd.read_csv(sweep / "steps_to_target.csv")
    fits = pd.read_csv(sweep / "pareto_fits.csv")
    dim = pd.read_csv(sweep / "diminishing_returns.csv")
    assert len(table) == 2 * (len(SWEEP_SIZES) * 2 * 3 + 2)
    assert set(fits["status"]) == {"ok", "too_few_batch_sizes"}
    assert {"b_crit", "b_crit_lo", "b_crit_hi", "b_simple", "ratio"} <= set(fits.columns)
    assert {"B", "lr_rule", "median_iterations", "b_diminishing"} <= set(dim.columns)


def test_figures_and_report(analysed):
    import matplotlib.image

    sweep, result = analysed
    pngs = sorted((sweep / "figures").glob("*.png"))
    assert len(pngs) == 4
    assert sorted(sweep / f for f in result["figures"]) == pngs
    for png in pngs:
        data = png.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
        assert matplotlib.image.imread(png).ndim == 3

    parser = _ImgCollector()
    parser.feed((sweep / "report.html").read_text())
    parser.close()
    assert parser.tables >= 3
    assert len(parser.srcs) == len(pngs)
    embedded = {base64.b64decode(s.split(",", 1)[1]) for s in parser.srcs}
    assert all(s.startswith("data:image/png;base64,") for s in parser.srcs)
    assert embedded == {p.read_bytes() for p in pngs}
    assert "b256_failed" in (sweep / "report.html").read_text()


def test_wandb_offline_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_env_dir"))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    sweep = make_fake_sweep(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        analyze(sweep, wandb_mode="offline", n_bootstrap=20)
    assert not [w for w in caught if "W&B logging failed" in str(w.message)]
    runs = list((sweep / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and runs[0].is_dir()
    assert list(runs[0].glob("*.wandb"))  # the run's data file


def test_degenerate_sweep_does_not_crash(tmp_path):
    # Only a failed trial and an unreadable trial.json: entries say why, nothing crashes.
    sweep = tmp_path / "bad"
    (sweep / "trials" / "broken").mkdir(parents=True)
    (sweep / "trials" / "broken" / "trial.json").write_text("{not json")
    (sweep / "sweep.json").write_text(json.dumps({"name": "bad", "targets": {"Pong": [1.0]}}))
    _write_trial(sweep, {
        "trial_id": "oom", "env_id": "Pong", "seed": 0, "env_steps_per_iteration": 128,
        "num_minibatches": 4, "lr_rule": "fixed", "lr": 1e-3, "status": "failed",
        "error": "CUDA out of memory", "targets": {}, "b_simple_mean": None})
    result = analyze(sweep, wandb_mode="disabled")
    (entry,) = result["entries"]
    assert entry["status"] == "too_few_batch_sizes" and entry["n_batch_sizes"] == 0
    assert {t["trial_id"] for t in result["failed_trials"]} == {"broken", "oom"}
    assert len(list((sweep / "figures").glob("*.png"))) == 4
    assert (sweep / "report.html").stat().st_size > 0


# ----------------------------------------------------------------------------------------
# Bad input: a clear ConfigError before anything is written
# ----------------------------------------------------------------------------------------


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_analyze_missing_dir(tmp_path):
    missing = tmp_path / "no_such_sweep"
    with pytest.raises(ConfigError) as info:
        analyze(missing, wandb_mode="disabled")
    message = str(info.value)
    assert message == (f"sweep directory '{missing}' does not exist; pass the directory a "
                       "`rlscale sweep` run wrote (default sweeps/<name>)")
    assert "\n" not in message
    assert not missing.exists()
    assert list(tmp_path.iterdir()) == []


def test_analyze_empty_dir(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError) as info:
        analyze(empty, wandb_mode="offline")
    assert str(info.value) == (f"'{empty}' holds no sweep (sweep.json missing); run "
                               f"`rlscale sweep SWEEP_CONFIG --out {empty}` first")
    assert list(empty.iterdir()) == []


def test_analyze_not_a_directory(tmp_path):
    file = tmp_path / "sweep.txt"
    file.write_text("hello")
    with pytest.raises(ConfigError, match="is not a directory"):
        analyze(file, wandb_mode="disabled")
    assert file.read_text() == "hello" and _tree(tmp_path) == ["sweep.txt"]


def test_analyze_sweep_without_trials(tmp_path):
    sweep = tmp_path / "sweep"
    (sweep / "trials" / "half_made").mkdir(parents=True)  # a trial dir without trial.json
    (sweep / "sweep.json").write_text(json.dumps({"name": "s", "targets": {ENV: [100.0]}}))
    before = _tree(sweep)
    with pytest.raises(ConfigError) as info:
        analyze(sweep, wandb_mode="disabled")
    assert str(info.value).startswith(f"'{sweep}' holds no trials (no trials/*/trial.json); run ")
    assert _tree(sweep) == before


@pytest.mark.parametrize("text,fragment", [
    ("{not json", "is not valid JSON (Expecting property name"),
    ("[1, 2]", "must hold a JSON object, not list"),
    ('{"targets": [100]}', "has malformed targets"),
    ('{"targets": {"CartPole-v1": ["high"]}}', "has malformed targets"),
    (b"\xff\xfe{", "is not valid JSON"),
])
def test_analyze_bad_sweep_json(tmp_path, text, fragment):
    sweep = make_fake_sweep(tmp_path)
    path = sweep / "sweep.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    before = _tree(sweep)
    with pytest.raises(ConfigError) as info:
        analyze(sweep, wandb_mode="disabled")
    message = str(info.value)
    assert fragment in message and f"'{path}'" in message, message
    assert "\n" not in message and message.endswith(f"--out {sweep}` again to rewrite it")
    assert _tree(sweep) == before  # no analysis.json, tables, figures or report


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_cli_analyze_bad_dir(tmp_path, capsys, make):
    # Needs rlscale.cli to catch rlscale.errors.ConfigError (config.ConfigError is that class).
    from rlscale.cli import main

    path = tmp_path / "sweep"
    if make == "empty":
        path.mkdir()
    code = main(["analyze", str(path), "--wandb-mode", "disabled"])
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("rlscale: error: "), err
    assert ("does not exist" if make == "missing" else "holds no sweep") in err[0]
    assert captured.out == ""
    assert _tree(tmp_path) == ([] if make == "missing" else ["sweep"])


def test_report_does_not_import_analysis():
    import ast

    import rlscale.report

    tree = ast.parse(Path(rlscale.report.__file__).read_text())
    imported = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import analysis / from .analysis import X
                imported += [f".{node.module or ''}"] + [f".{a.name}" for a in node.names]
            else:
                imported += [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
    bad = [name for name in imported if name.split(".")[-1] == "analysis"
           or name.startswith("rlscale.analysis")]
    assert not bad, f"rlscale/report.py imports {bad}; shared constants belong in rlscale.units"


def test_noise_scale_claim_across_points():
    from rlscale.analysis import noise_scale_claim

    def entry(env, b_crit, b_simple, status="ok"):
        return {"env_id": env, "target": 1.0, "status": status, "b_crit": b_crit, "b_simple": b_simple}

    exact = [entry(f"E{i}", 2.0 * b, b) for i, b in enumerate([10.0, 100.0, 1000.0, 30.0])]
    c = noise_scale_claim(exact)
    assert c["n_points"] == 4 and c["n_envs"] == 4 and c["fraction_within"] == 1.0
    assert c["r2_log"] == pytest.approx(1.0) and c["slope_log"] == pytest.approx(1.0) and c["median_ratio"] == pytest.approx(2.0)
    off = exact + [entry("E9", 500.0, 50.0), entry("E8", 10.0, 5.0, status="b_crit_above_range")]
    c = noise_scale_claim(off)
    assert c["n_points"] == 5 and c["fraction_within"] == pytest.approx(0.8) and c["n_lower_bounds"] == 1
    assert c["r2_log"] < 1.0


def test_best_lr_at_the_edge_of_its_grid_is_flagged():
    from rlscale.analysis import _best_configs

    rows = pd.DataFrame({
        "B": [64] * 3 + [128] * 3, "lr_rule": ["grid"] * 6, "lr": [1e-4, 2e-4, 4e-4] * 2,
        "iterations": [30.0, 20.0, 25.0, 30.0, 20.0, 10.0], "reached": [True] * 6, "seed": [1] * 6,
    })
    best = _best_configs(rows).set_index("B")
    assert best.loc[64.0, "lr"] == 2e-4 and not best.loc[64.0, "lr_at_grid_edge"]
    assert best.loc[128.0, "lr"] == 4e-4 and best.loc[128.0, "lr_at_grid_edge"]


def test_a_batch_size_where_no_lr_reached_the_target_flags_no_grid_edge():
    """Where no lr's median seed reached the target, the first lr (at the grid's bottom) stands in
    only to break the tie: it is not a best lr at the edge."""
    from rlscale.analysis import _best_configs

    rows = pd.DataFrame({
        "B": [64] * 6 + [128] * 3, "lr_rule": ["grid"] * 9, "lr": [1e-4] * 3 + [2e-4] * 3 + [1e-4, 2e-4, 4e-4],
        "iterations": [5.0, np.nan, np.nan, 7.0, 9.0, np.nan, np.nan, np.nan, np.nan],
        "reached": [True, False, False, True, True, False, False, False, False], "seed": [1, 2, 3] * 3,
    })
    best = _best_configs(rows).set_index("B")
    assert best.loc[64.0, "lr"] == 2e-4 and best.loc[64.0, "median_iterations"] == 9.0
    assert best.loc[64.0, "lr_at_grid_edge"]  # a median reached at the top lr: flagged
    assert np.isposinf(best.loc[128.0, "median_iterations"]) and not best.loc[128.0, "lr_at_grid_edge"]


def test_adaptive_runs_sit_beside_the_fixed_batch_frontier_not_in_it(tmp_path):
    """Adaptive-batch trials stay out of the fit; each fitted target reports their S/S_min,
    E/E_min, product and the gamma predicted from their own histories."""
    from rlscale.adaptive import predicted_gamma

    sweep = make_fake_sweep(tmp_path)
    plain = analyze(sweep, wandb_mode="disabled")
    assert plain["trials_without_metrics"] == {}
    histories = {1: [64, 128, 256, 512, 512, 512], 2: [64, 64, 128, 256, 512, 1024, 1024, 1024]}
    for seed, batches in histories.items():
        d = sweep / "trials" / f"adaptive_s{seed}"
        S, E = len(batches), sum(batches)
        b = np.array([np.nan] + [40.0 * (k + 1) for k in range(S - 1)]) / NUM_MINIBATCHES  # per gradient
        d.mkdir(parents=True)
        pd.DataFrame({"iteration": np.arange(1, S + 3), "env_steps_per_iteration": batches + [2048, 2048],
                      "noise/b_simple_ema": list(b) + [1.0, 1.0]}).to_csv(d / "metrics.csv", index=False)
        reached = {"reached": True, "iterations": S, "optimizer_steps": 16 * S, "env_steps": E, "wall_time_s": 1.0, "b_simple": 50.0}
        (d / "summary.json").write_text(json.dumps({"seed": seed, "num_minibatches": NUM_MINIBATCHES, "targets": {"100.0": reached}}))
        (d / "trial.json").write_text(json.dumps({
            "trial_id": d.name, "env_id": ENV, "seed": seed, "env_steps_per_iteration": 64, "num_minibatches": NUM_MINIBATCHES,
            "lr_rule": "adaptive", "lr": 1e-3, "status": "completed", "error": None,
            "targets": {"100.0": reached, "475.0": {"reached": False}}}))
    result = analyze(sweep, wandb_mode="disabled")
    low, before = _entry(result, 100.0), _entry(plain, 100.0)
    for key in ("s_min", "e_min", "b_crit", "batch_sizes", "steps", "b_simple"):
        assert low[key] == before[key], key  # the fixed-B analysis is untouched
    ad = low["adaptive"]
    assert (ad["n_runs"], ad["n_reached"]) == (2, 2)
    for p in ad["runs"]:
        batches = histories[p["seed"]]
        S, E = len(batches), sum(batches)
        assert (p["iterations"], p["env_steps"]) == (S, E)
        assert math.isclose(p["s_over_s_min"], S / low["s_min"]) and math.isclose(p["e_over_e_min"], E / low["e_min"])
        assert math.isclose(p["measured_product"], (S / low["s_min"] - 1) * (E / low["e_min"] - 1))
        b = np.array([np.nan] + [40.0 * (k + 1) for k in range(S - 1)])
        assert math.isclose(p["predicted_gamma"], predicted_gamma(b, np.array(batches, dtype=float)))
    assert math.isclose(ad["s_over_s_min"]["median"], np.median([p["s_over_s_min"] for p in ad["runs"]]))
    assert _entry(result, 475.0)["status"] != "ok" and "adaptive" not in _entry(result, 475.0)  # no frontier to sit beside
    fits = pd.read_csv(sweep / "pareto_fits.csv")
    assert fits.loc[fits["target"] == 100.0, "adaptive_n_reached"].item() == 2
    png = sweep / "figures" / "adaptive_batch_over_training.png"
    assert "figures/adaptive_batch_over_training.png" in result["figures"] and png.read_bytes()[:4] == b"\x89PNG"
    assert "figures/adaptive_batch_over_training.png" not in plain.get("figures", [])
    # a clone of records kept before tables were packed: seed 2's table is gone. Its point keeps
    # S / S_min (from summary.json), the rest of its point is unknown, and the analysis says so;
    # seed 1 kept only its packed table, which counts as a table
    from rlscale.tracking import pack_metrics

    (sweep / "trials" / "adaptive_s2" / "metrics.csv").unlink()
    pack_metrics(sweep / "trials" / "adaptive_s1")
    (sweep / "trials" / "adaptive_s1" / "metrics.csv").unlink()
    clone = analyze(sweep, wandb_mode="disabled")
    ad2 = _entry(clone, 100.0)["adaptive"]
    assert (ad2["n_runs"], ad2["n_reached"], ad2["n_without_metrics"], ad["n_without_metrics"]) == (2, 2, 1, 0)
    p2 = next(p for p in ad2["runs"] if p["seed"] == 2)
    assert p2["metrics_missing"] and p2["s_over_s_min"] == next(p for p in ad["runs"] if p["seed"] == 2)["s_over_s_min"]
    assert p2["e_over_e_min"] is None and p2["predicted_gamma"] is None
    assert ad2["predicted_gamma"]["n"] == 1 and ad2["s_over_s_min"] == ad["s_over_s_min"]
    assert clone["trials_without_metrics"] == {ENV: 1}
    assert next(p for p in ad2["runs"] if p["seed"] == 1) == {**next(p for p in ad["runs"] if p["seed"] == 1), "metrics_missing": False}
    for key in ("s_min", "e_min", "b_crit", "b_simple"):
        assert _entry(clone, 100.0)[key] == low[key], key
    assert pd.read_csv(sweep / "pareto_fits.csv").set_index("target").loc[100.0, "adaptive_n_without_metrics"] == 1
    assert "<h2>Completed trials without a metrics table (1)</h2>" in (sweep / "report.html").read_text()
    # with no adaptive run's table left, the figure cannot be drawn again: the earlier one stays,
    # outside this analysis' figures; with no adaptive runs at all, it goes
    import shutil

    (sweep / "trials" / "adaptive_s1" / "metrics.csv.gz").unlink()
    bare = analyze(sweep, wandb_mode="disabled")
    assert png.is_file() and "figures/adaptive_batch_over_training.png" not in bare["figures"]
    for seed in histories:
        shutil.rmtree(sweep / "trials" / f"adaptive_s{seed}")
    analyze(sweep, wandb_mode="disabled")
    assert not png.exists()


def test_noise_scale_variants_are_averaged_from_the_trials_that_recorded_them(tmp_path):
    """Trials that measured the policy and value gradients apart (b_simple_parts) give each
    entry those variants' B_simple from the best-config trials that have them, their ratios to
    B_crit, a claim per variant, a figure with a panel per variant and the report's table."""
    sweep = make_fake_sweep(tmp_path)
    for path in (sweep / "trials").glob("*/trial.json"):
        t = json.loads(path.read_text())
        if t["status"] != "completed" or t["env_steps_per_iteration"] == 64:  # B = 64's trials did not split
            continue
        for res in t["targets"].values():
            if res["reached"]:
                res["b_simple_parts"] = {"policy": {"b_simple": 10.0 + t["seed"]}, "value": {"b_simple": 100.0 + 2 * t["seed"]}}
        path.write_text(json.dumps(t))
    result = analyze(sweep, wandb_mode="disabled")
    low = next(e for e in result["entries"] if e["target"] == 100.0)
    v = low["b_simple_variants"]
    assert list(v) == ["combined", "policy", "value"]  # no trial recorded an Adam-preconditioned one
    # the good lr's seeds 0, 1, 2 at B = 128 .. 1024 (B = 64's best trials recorded none)
    assert v["policy"]["n_trials"] == 12 and v["combined"]["n_trials"] == 15
    assert math.isclose(v["policy"]["b_simple_per_gradient"], 11.0)
    assert math.isclose(v["value"]["b_simple"], 102.0 * NUM_MINIBATCHES)
    assert math.isclose(v["policy"]["ratio"], low["b_crit"] / (11.0 * NUM_MINIBATCHES))
    assert math.isclose(v["combined"]["b_simple"], low["b_simple"]) and v["combined"]["ratio"] == low["ratio"]
    lo, hi = v["value"]["b_simple_ci"]
    assert 100.0 * NUM_MINIBATCHES <= lo <= v["value"]["b_simple"] <= hi <= 104.0 * NUM_MINIBATCHES
    claims = result["noise_scale_claim_by_variant"]
    assert list(claims) == ["combined", "policy", "value"] and claims["combined"] == result["noise_scale_claim"]
    assert claims["policy"]["variant"] == "policy" and claims["policy"]["n_points"] == 1
    assert claims["policy"]["median_ratio"] == pytest.approx(v["policy"]["ratio"])
    fits = pd.read_csv(sweep / "pareto_fits.csv")
    assert fits.loc[fits["target"] == 100.0, "b_simple_policy"].item() == pytest.approx(44.0)
    assert "figures/b_crit_vs_b_simple_by_variant.png" in result["figures"]
    assert "per noise-scale variant" in (sweep / "report.html").read_text()


def test_noise_scale_claim_per_variant_uses_that_variants_b_simple():
    from rlscale.analysis import claims_by_variant, noise_scale_claim

    def entry(env, b_crit, b_simple, policy=None, status="ok"):
        return {"env_id": env, "target": 1.0, "status": status, "b_crit": b_crit, "b_simple": b_simple,
                "b_simple_variants": {"policy": {"b_simple": policy}} if policy else {}}

    pts = [entry("A", 100.0, 10.0, policy=100.0), entry("B", 1000.0, 50.0, policy=2000.0), entry("C", 40.0, 40.0),
           entry("D", 10.0, 5.0, policy=1.0, status="b_crit_above_range")]
    combined, policy = noise_scale_claim(pts), noise_scale_claim(pts, variant="policy")
    assert combined["n_points"] == 3 and combined["fraction_within"] == pytest.approx(1 / 3)
    assert combined["median_ratio"] == pytest.approx(10.0) and combined["n_lower_bounds"] == 1
    assert policy["n_points"] == 2 and policy["n_envs"] == 2 and policy["fraction_within"] == 1.0
    assert policy["median_ratio"] == pytest.approx(0.75) and policy["r2_log"] is None  # 2 points: no fit
    assert list(claims_by_variant(pts)) == ["combined", "policy"]


def test_variants_leave_the_combined_numbers_and_the_fit_unchanged(tmp_path):
    """An analysis of trials that also recorded Adam-preconditioned (and negative policy) B_simple
    gives the same combined B_simple, intervals and fit as one of the same trials without them;
    the adam variant of a lower-bound entry counts as a lower bound, a negative mean as no point."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    plain_dir, parts_dir = make_fake_sweep(tmp_path / "a"), make_fake_sweep(tmp_path / "b")
    for path in (parts_dir / "trials").glob("*/trial.json"):
        t = json.loads(path.read_text())
        for res in t.get("targets", {}).values():
            if res.get("reached"):
                res["b_simple_parts"] = {"adam": {"b_simple": 3.0 * res["b_simple_mean"]}, "policy": {"b_simple": -5.0}}
        path.write_text(json.dumps(t))
    plain, parts = analyze(plain_dir, wandb_mode="disabled"), analyze(parts_dir, wandb_mode="disabled")
    keys = ["b_simple", "b_simple_ci", "b_crit", "b_crit_ci", "s_min_ci", "e_min_ci", "ratio", "status"]
    for a, b in zip(plain["entries"], parts["entries"]):
        assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
    assert parts["noise_scale_claim"] == plain["noise_scale_claim"] == parts["noise_scale_claim_by_variant"]["combined"]
    low = next(e for e in parts["entries"] if e["target"] == 100.0)
    assert math.isclose(low["b_simple_variants"]["adam"]["b_simple"], 3 * low["b_simple"])
    assert list(parts["noise_scale_claim_by_variant"]) == ["combined", "adam"]  # a negative policy mean is no point

    from rlscale.analysis import noise_scale_claim

    bound = {"env_id": "X", "target": 1.0, "status": "b_crit_above_range", "b_crit": 9e9, "b_simple": 10.0,
             "b_simple_variants": {"adam": {"b_simple": 30.0}}}
    assert noise_scale_claim([low, bound], variant="adam")["n_lower_bounds"] == 1
    assert noise_scale_claim([low, bound], variant="value")["n_lower_bounds"] == 0


def test_an_unresolved_b_simple_is_counted_not_averaged(tmp_path):
    """A trial whose B_simple to a target was measured but unresolved (averaged |G|^2 not
    positive) shows as inf in the table, stays out of the mean and is counted per variant; a
    part the trial did not measure (0 updates) is neither."""
    sweep = make_fake_sweep(tmp_path)
    path = sweep / "trials" / "b128_lr0.0003_s0" / "trial.json"  # a best-config trial at target 100
    t = json.loads(path.read_text())
    t["targets"]["100.0"].update(b_simple=None, b_simple_parts={
        "combined": {"b_simple": None, "b_simple_ci": [400.0, None], "updates": 12},
        "value": {"b_simple": None, "b_simple_ci": [300.0, None], "updates": 12},
        "policy": {"b_simple": None, "b_simple_ci": [None, None], "updates": 0},
        "adam": {"b_simple": None, "b_simple_ci": [None, None], "updates": 12, "finite_updates": 0}})  # all NaN: no estimate
    path.write_text(json.dumps(t))
    old_style = sweep / "trials" / "b256_lr0.001_s1" / "trial.json"  # before b_simple_parts: a missing value stays missing
    t = json.loads(old_style.read_text())
    t["targets"]["100.0"]["b_simple_mean"] = None
    old_style.write_text(json.dumps(t))
    result = analyze(sweep, wandb_mode="disabled")
    low = _entry(result, 100.0)
    v = low["b_simple_variants"]
    assert (low["n_b_simple_trials"], low["n_b_simple_unresolved"]) == (13, 1)
    # the other 13 best-config trials: seeds 0, 1, 2 report 60 + seed per gradient; seed 0 at B = 128
    # (unresolved) and seed 1 at B = 256 (no value) left out
    assert math.isclose(low["b_simple_per_gradient"], (4 * 61 + 4 * 60 + 5 * 62) / 13)
    assert v["value"] == {"b_simple": None, "b_simple_per_gradient": None, "n_trials": 0, "n_unresolved": 1,
                          "b_simple_ci": None, "ratio": None}
    assert "policy" not in v and "adam" not in v and list(result["noise_scale_claim_by_variant"]) == ["combined"]
    assert result["noise_scale_claim"]["n_points_with_unresolved"] == 1
    table = pd.read_csv(sweep / "steps_to_target.csv")
    row = table[(table["trial_id"] == "b128_lr0.0003_s0") & (table["target"] == 100.0)]
    assert np.isposinf(row["b_simple_to_target"].item()) and np.isposinf(row["b_simple_value_to_target"].item())
    assert np.isnan(row["b_simple_policy_to_target"].item()) and np.isnan(row["b_simple_adam_to_target"].item())
    assert np.isnan(table.loc[(table["trial_id"] == "b256_lr0.001_s1") & (table["target"] == 100.0), "b_simple_to_target"].item())
    fits = pd.read_csv(sweep / "pareto_fits.csv")
    assert fits.loc[fits["target"] == 100.0, "n_b_simple_unresolved"].item() == 1
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "study_table.py"), str(sweep / "analysis.json")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert ", 1 of 14 trials unresolved |" in out.stdout


def test_b_crit_figure_axes_ignore_an_unbounded_interval():
    """An interval whose upper end is far above every point (a fit with no upper bound) runs off
    the top of the B_crit vs B_simple panel instead of setting its axes."""
    from matplotlib.figure import Figure

    from rlscale.report import MAX_AXIS_SPAN, _bcrit_panel

    def entry(env, b_crit, hi):
        return {"env_id": env, "target": 1.0, "status": "ok", "b_crit": b_crit, "b_crit_ci": [b_crit / 2, hi],
                "b_simple": b_crit / 2, "b_simple_ci": [b_crit / 4, b_crit]}

    analysis = {"entries": [entry("A", 100.0, 300.0), entry("B", 1000.0, 1e16)]}
    ax = Figure().add_subplot()
    _bcrit_panel(ax, analysis, "combined", {"A": "C0", "B": "C1"})
    top = ax.get_ylim()[1]
    assert 1000.0 < top <= 3 * MAX_AXIS_SPAN * 1000.0


def test_b_crit_figure_names_an_env_whose_targets_are_all_lower_bounds():
    """An env whose every B_crit lies beyond its largest batch is drawn as arrows and still named
    in the legend; an env with fitted points is named once, however many bounds it also has."""
    from matplotlib.figure import Figure

    from rlscale.report import _bcrit_panel

    fitted = {"env_id": "A", "target": 1.0, "status": "ok", "b_crit": 100.0, "b_crit_ci": [50.0, 300.0],
              "b_simple": 80.0, "b_simple_ci": [40.0, 120.0]}

    def bound(env, target):
        return {"env_id": env, "target": target, "status": "b_crit_above_range", "b_crit": 1e16, "b_crit_lower_bound": 8192.0,
                "b_crit_ci": None, "b_simple": 5e4, "b_simple_ci": [4e4, 6e4]}

    analysis = {"entries": [fitted, bound("A", 2.0), bound("S", 1.0), bound("S", 2.0)]}
    ax = Figure().add_subplot()
    _bcrit_panel(ax, analysis, "combined", {"A": "C0", "S": "C1"})
    labels = ax.get_legend_handles_labels()[1]
    assert labels.count("A") == 1 and labels.count("S (lower bounds only)") == 1
    assert not any(lab.startswith("A (") for lab in labels)
    # every point and bound carries its target: A's point at 1 and bound at 2, S's bounds at 1 and 2
    assert sorted(t.get_text() for t in ax.texts if t.get_text()) == ["1", "1", "2", "2"]


def _noise_trial(sweep: Path, b: int, seed: int, reach: int, g: list[float], t: list[float]) -> None:
    """A completed trial at batch size b that reaches target 1.0 at iteration `reach`, with per-update
    combined estimates g (|G|^2) and t (tr(Sigma)) in its metrics.csv (nan: a missing estimate)."""
    trial_id = f"b{b}_s{seed}"
    d = sweep / "trials" / trial_id
    d.mkdir(parents=True)
    # the trial's own record: its ratio of means up to the target (inf-free here), as NoiseProbe writes it
    ga, ta = np.array(g[:reach]), np.array(t[:reach])
    ok = np.isfinite(ga) & np.isfinite(ta)
    own = float(ta[ok].mean() / ga[ok].mean()) if ga[ok].mean() > 0 else None
    (d / "trial.json").write_text(json.dumps({
        "trial_id": trial_id, "env_id": "X", "seed": seed, "env_steps_per_iteration": b, "num_minibatches": 2,
        "lr_rule": "grid", "lr": 1e-3, "status": "completed", "error": None,
        "targets": {"1.0": {"reached": True, "iterations": reach, "env_steps": reach * b, "optimizer_steps": reach * 2,
                            "wall_time_s": 1.0, "b_simple": own,
                            "b_simple_parts": {"combined": {"b_simple": own, "updates": reach, "finite_updates": int(ok.sum())}}}}}))
    pd.DataFrame({"iteration": np.arange(1, len(g) + 1), "noise/grad_sq": g, "noise/trace_cov": t}).to_csv(d / "metrics.csv", index=False)


def test_b_simple_pooled_over_seeds_within_each_batch_size(tmp_path):
    """The pooled B_simple: per batch size, the seeds' mean tr(Sigma) over their mean |G|^2 (each
    seed's means over its updates up to the target, nan estimates skipped), then the mean over
    batch sizes; a seed unresolved alone stays in. Exact numbers on a hand-made sweep."""
    sweep = tmp_path / "sweep"
    (sweep / "trials").mkdir(parents=True)
    (sweep / "sweep.json").write_text(json.dumps({"name": "pooled", "targets": {"X": [1.0]}}))
    nan = float("nan")
    # B = 64: seed 1's |G|^2 averages below zero up to its target (unresolved alone); rows past the
    # target (iteration 4 of seed 1, 3-4 of seed 2) must not count
    _noise_trial(sweep, 64, 1, 3, g=[1.0, -3.0, nan, 100.0], t=[10.0, 20.0, 30.0, 1e6])
    _noise_trial(sweep, 64, 2, 2, g=[2.0, 4.0, 1e6, 1e6], t=[30.0, 50.0, 0.0, 0.0])
    _noise_trial(sweep, 128, 1, 2, g=[10.0, 30.0], t=[40.0, 80.0])
    _noise_trial(sweep, 128, 2, 1, g=[5.0, 1e6], t=[25.0, 0.0])
    result = analyze(sweep, wandb_mode="disabled", make_report=False)
    entry = result["entries"][0]
    pooled = entry["b_simple_variants"]["combined"]["pooled"]
    # seed means: B=64: (g -1, t 15) and (3, 40); B=128: (20, 60) and (5, 25); x2 minibatches
    r64, r128 = 2 * (15 + 40) / (-1 + 3), 2 * (60 + 25) / (20 + 5)
    assert [r["b_simple"] for r in pooled["by_batch"]] == pytest.approx([r64, r128])
    assert pooled["b_simple"] == pytest.approx((r64 + r128) / 2)
    assert pooled["b_simple_per_gradient"] == pytest.approx((r64 + r128) / 4)
    assert pooled["log_slope"] == pytest.approx(math.log(r128 / r64) / math.log(2))
    assert (pooled["n_trials"], pooled["n_unresolved_batches"]) == (4, 0)
    lo, hi = pooled["b_simple_ci"]
    # the resamples' means run from 6 (B = 64's seed 1 twice, unresolved there, so B = 128's first
    # seed twice alone: 2 x 60 / 20) to 32.5 ((2 x 55 / 2 + 2 x 25 / 5) / 2)
    assert (lo, hi) == (pytest.approx(6.0), pytest.approx(32.5))
    # the mean of the trials' ratios leaves seed 1 at B = 64 out
    assert entry["n_b_simple_unresolved"] == 1
    assert entry["b_simple"] == pytest.approx(2 * (40 / 3 + 60 / 20 + 25 / 5) / 3)
    # the fit (B_crit from the steps 2.5 and 1.5 at B = 64 and 128) and the pooled claim
    assert entry["b_simple_variants"]["combined"]["pooled"]["ratio"] == pytest.approx(entry["b_crit"] / pooled["b_simple"])
    claim = result["noise_scale_claim_pooled_by_variant"]["combined"]
    assert (claim["estimator"], claim["n_points"], claim["n_points_with_unresolved"]) == ("pooled", 1, 0)
    fits = pd.read_csv(sweep / "pareto_fits.csv")
    assert fits["b_simple_pooled_combined"].item() == pytest.approx(pooled["b_simple"])
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "study_table.py"), str(sweep / "analysis.json")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "| X | 1 | combined |" in out.stdout and "| 64: 55, 128: 6.8 |" in out.stdout
    assert "Claim (B_crit ~ B_simple pooled within batch sizes, combined): 1 points over 1 envs" in out.stdout


def test_an_analysis_of_a_clone_reads_the_trials_packed_metrics(tmp_path):
    """A clone of a study's records holds metrics.csv.gz, not metrics.csv: the pooled B_simple
    read from the copies is the one read from the tables."""
    from rlscale.tracking import pack_metrics

    results = []
    for name in ("tables", "clone", "one lost"):
        sweep = tmp_path / name
        (sweep / "trials").mkdir(parents=True)
        (sweep / "sweep.json").write_text(json.dumps({"name": "pooled", "targets": {"X": [1.0]}}))
        _noise_trial(sweep, 64, 1, 2, g=[2.0, 4.0, 9.0], t=[30.0, 50.0, 1.0])
        _noise_trial(sweep, 128, 1, 2, g=[10.0, 30.0], t=[40.0, 80.0])
        if name == "clone":
            for d in (sweep / "trials").iterdir():
                pack_metrics(d)
                (d / "metrics.csv").unlink()
        if name == "one lost":  # B = 128's table is gone: no pooled value from B = 64's alone
            (sweep / "trials" / "b128_s1" / "metrics.csv").unlink()
        results.append(analyze(sweep, wandb_mode="disabled", make_report=False)["entries"][0]["b_simple_variants"]["combined"].get("pooled"))
    assert results[0]["b_simple"] == pytest.approx(2 * ((30 + 50) / (2 + 4) + (40 + 80) / (10 + 30)) / 2)
    assert results[1] == results[0] and results[2] is None


def test_pooled_b_simple_has_no_interval_from_one_seed_per_batch_size(tmp_path):
    sweep = tmp_path / "sweep"
    (sweep / "trials").mkdir(parents=True)
    (sweep / "sweep.json").write_text(json.dumps({"name": "pooled", "targets": {"X": [1.0]}}))
    _noise_trial(sweep, 64, 1, 2, g=[2.0, 4.0], t=[30.0, 50.0])
    _noise_trial(sweep, 128, 1, 1, g=[5.0], t=[25.0])
    pooled = analyze(sweep, wandb_mode="disabled", make_report=False)["entries"][0]["b_simple_variants"]["combined"]["pooled"]
    assert pooled["b_simple"] == pytest.approx((2 * 40 / 3 + 2 * 25 / 5) / 2) and pooled["b_simple_ci"] is None


def test_figure_labels_a_target_by_its_fraction_of_the_way_to_the_reference():
    from rlscale.report import _target_label

    refs = {"references": {"A": {"reference_score": -100.0, "random_score": -500.0}}}
    assert _target_label(refs, {"env_id": "A", "target": -400.0}) == "25%"  # negative scores too
    assert _target_label(refs, {"env_id": "A", "target": -140.0}) == "90%"
    assert _target_label(refs, {"env_id": "B", "target": 141.35}) == "141"  # no reference: the target itself
