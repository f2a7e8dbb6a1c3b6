"""The study's report scripts on small, hand-made sweep records."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rec(tid, B, lr_rule="grid", status="completed", wall=0.0, pruned=None, population="legacy", env_steps=100):
    r = {"trial_id": tid, "env_id": "E", "env_steps_per_iteration": B, "lr_rule": lr_rule, "status": status,
         "wall_time_s": wall, "pruned": pruned, "env_steps": env_steps}
    return r if population == "legacy" else {**r, "population": population}  # records before the field had none


def test_study_cost_sums_each_populations_slowest_member(tmp_path):
    cost = _script("study_cost")
    p1, p2 = {"first": "a", "members": 2}, {"first": "c", "members": 1}
    recs = [_rec("a", 256, wall=3600, population=p1), _rec("b", 256, wall=1800, pruned={"iteration": 3}, population=p1),
            _rec("c", 256, wall=900, population=p2),  # an lr added later at the same B: its own population
            _rec("d", 512, wall=600), _rec("e", 512, wall=1200),  # records without the field: one (env, B) group
            _rec("f", 512, status="pending", wall=99999),
            _rec("g", 256, lr_rule="adaptive", wall=60, population=None), _rec("h", 256, lr_rule="adaptive", wall=30, population=None),
            _rec("i", 1024, wall=10, population=None), _rec("j", 1024, wall=20, population=None)]  # trained alone
    cells = cost.population_times(recs)
    assert {k: (v["seconds"], v["members"], v["pruned"]) for k, v in cells.items()} == {
        ("E", 256, "a"): (3600, 2, 1), ("E", 256, "c"): (900, 1, 0), ("E", 512, None): (1200, 2, 0),
        ("E", "adaptive", "g"): (60, 1, 0), ("E", "adaptive", "h"): (30, 1, 0), ("E", 1024, "i"): (10, 1, 0), ("E", 1024, "j"): (20, 1, 0)}
    for r in recs:
        d = tmp_path / "trials" / r["trial_id"]
        d.mkdir(parents=True)
        (d / "trial.json").write_text(json.dumps(r))
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "study_cost.py"), str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    # 3600 + 900 + 1200 + 60 + 30 + 10 + 20 s; the (env, B) grouping of the old records makes it a lower bound
    assert "| E | 7 | 9 (1) | 900 | 1.62 (at least) |" in out.stdout, out.stdout
    bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "study_cost.py"), str(tmp_path / "nowhere")], capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_study_table_recomputes_the_claim_over_the_chosen_envs(tmp_path):
    def entry(env, b_crit, b_simple, status="ok"):
        return {"env_id": env, "target": 1.0, "status": status, "s_min": 2.0, "e_min": 2.0 * b_crit, "b_crit": b_crit,
                "b_crit_ci": [1, 2], "b_simple": b_simple, "b_simple_ci": [1, 2], "ratio": b_crit / b_simple, "n_batch_sizes": 3,
                "batch_sizes_swept": [1, 2, 3], "best_configs": [], "b_crit_lower_bound": 3.0}
    entries = [entry("A", 100, 50), entry("A", 200, 100), entry("A", 400, 200), entry("B", 1000, 10), entry("B", 5, 1, "b_crit_above_range"),
               entry("D", 1, 1, "too_few_batch_sizes"), {**entry("F", 1, 1, "too_few_batch_sizes"), "batch_sizes_swept": []}]
    entries[1].update(b_crit_ci=[150, 3.5e16], b_crit_ci_unbounded=True)  # resamples beyond the batches swept
    from rlscale.analysis import noise_scale_claim

    path = tmp_path / "analysis.json"
    pending = [{"env_id": "B", "B": 512.0, "n_pending": 5}, {"env_id": "B", "B": 1024.0, "n_pending": 30}]
    path.write_text(json.dumps({"entries": entries, "noise_scale_claim": noise_scale_claim(entries), "pending_batch_sizes": pending}))
    run = lambda *a: subprocess.run([sys.executable, str(ROOT / "scripts" / "study_table.py"), str(path), *a],  # noqa: E731
                                    capture_output=True, text=True)
    every, only_a = run(), run("--envs", "A")
    assert "4 points over 2 envs" in every.stdout and "fraction within x3: 0.75" in every.stdout and "1 lower bounds" in every.stdout
    # A alone: every ratio 2, B_crit = 2 B_simple exactly: all within x3, r2 1, slope 1
    assert "3 points over 1 envs" in only_a.stdout and "fraction within x3: 1;" in only_a.stdout and "median ratio 2;" in only_a.stdout
    assert "r2 of log B_crit on log B_simple 1 (slope 1)" in only_a.stdout
    assert "| B |" not in only_a.stdout and "0 lower bounds" in only_a.stdout
    # the batch sizes the analysis left out (trials pending) are named, for the envs shown only
    assert "B: B = 512, 1024 left out, 35 trials still pending." in every.stdout and "pending" not in only_a.stdout
    assert "| A | 1 | 3 of 3 | 2 | 400 | 200 [150, unbounded] |" in only_a.stdout and "| A | 1 | 3 of 3 | 2 | 200 | 100 [1, 2] |" in only_a.stdout
    bad = run("--envs", "C")
    assert bad.returncode == 2 and "C" in bad.stderr
    # --by-env: a line per env (ranges, ratios within x3, open-ended intervals, lower bounds apart),
    # then the claim; with --envs over those envs only
    by_env = run("--by-env").stdout.splitlines()
    assert "| A | 3 | 100-400 | 50-200 | 2 | 3 of 3 | 1 of 3 | - | 0 of 3 |" in by_env
    assert "| B | 1 | 1000 | 10 | 100 | 0 of 1 | 0 of 1 | > 3 | 0 of 2 |" in by_env
    # an env without any point or bound is listed too, with its targets that too few B reached
    assert "| D | 0 | - | - | - | 0 of 0 | 0 of 0 | - | 1 of 1 |" in by_env
    assert "| F | 0 | - | - | - | 0 of 0 | 0 of 0 | - | - |" in by_env  # nothing finished yet
    assert by_env[-1].startswith("Claim (B_crit ~ B_simple, combined): 4 points over 2 envs") and "fraction within x3: 0.75;" in by_env[-1]
    only_b = run("--by-env", "--envs", "B").stdout.splitlines()
    assert not any(line.startswith("| A |") for line in only_b) and "fraction within x3: 0;" in only_b[-1]
    assert "B: B = 512, 1024 left out, 35 trials still pending." in only_b
    # a variant no entry recorded has no points: its claim is empty, not the combined one's
    policy = run("--by-env", "--variant", "policy").stdout.splitlines()
    assert policy[-1].startswith("Claim (B_crit ~ B_simple, policy): 0 points over 0 envs"), policy
    bad = run("--by-env", "--variant", "critic")
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "study_table: --variant critic is not a noise-scale variant; use one of combined, adam, policy, value")


def test_study_table_sets_b_crit_beside_every_variant(tmp_path):
    """With Adam-preconditioned and policy B_simple in the entries: a column per variant (a lower
    bound's ratio as a bound) and one claim line per variant, recomputed under --envs."""
    def entry(env, b_crit, b_simple, adam, policy=None, status="ok"):
        variants = {"combined": {"b_simple": b_simple, "ratio": b_crit / b_simple},
                    "adam": {"b_simple": adam, "b_simple_ci": [adam / 2, adam * 2], "ratio": b_crit / adam}}
        if policy:
            variants["policy"] = {"b_simple": policy, "ratio": b_crit / policy}
        return {"env_id": env, "target": 1.0, "status": status, "s_min": 2.0, "e_min": 2.0 * b_crit, "b_crit": b_crit,
                "b_crit_ci": [1, 2], "b_simple": b_simple, "b_simple_ci": None, "ratio": b_crit / b_simple, "n_batch_sizes": 3,
                "batch_sizes_swept": [1, 2, 3], "best_configs": [], "b_crit_lower_bound": 64.0, "b_simple_variants": variants}
    from rlscale.analysis import claims_by_variant, noise_scale_claim

    entries = [entry("A", 100, 10, 50, policy=400), entry("A", 300, 30, 100), entry("B", 1000, 10, 2000, policy=1000),
               entry("B", 999, 4, 16, status="b_crit_above_range")]
    path = tmp_path / "analysis.json"
    path.write_text(json.dumps({"entries": entries, "noise_scale_claim": noise_scale_claim(entries),
                                "noise_scale_claim_by_variant": claims_by_variant(entries)}))
    run = lambda *a: subprocess.run([sys.executable, str(ROOT / "scripts" / "study_table.py"), str(path), *a],  # noqa: E731
                                    capture_output=True, text=True)
    out = run().stdout
    assert "| B_simple combined [95% CI] (ratio) | B_simple adam [95% CI] (ratio) | B_simple policy [95% CI] (ratio) |" in out
    assert "| A | 1 | 100 [1, 2] | 10 (10) | 50 [25, 100] (2) | 400 (0.25) |" in out
    assert "| B | 1 | > 64 (lower bound) | 4 (> 16) | 16 [8, 32] (> 4) | - |" in out
    # adam: ratios 2, 3, 0.5, all within x3; policy: 0.25 and 1
    assert "B_simple, adam): 3 points over 2 envs with a fitted B_crit; fraction within x3: 1;" in out
    assert "B_simple, policy): 2 points over 2 envs with a fitted B_crit; fraction within x3: 0.5;" in out
    only_a = run("--envs", "A").stdout
    assert "B_simple, policy): 1 points over 1 envs" in only_a and "B_simple, adam): 2 points over 1 envs" in only_a


def test_reference_curves_tabulates_each_run_against_its_reference_score(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"env_steps_used": 100 * i, "charts/episode_return_smoothed": float(i), "eval/return_mean": None} for i in range(1, 7)]
    for i, ret in ((2, 2.0), (4, 6.0), (5, 8.0), (6, 10.0)):  # evaluations at 4 of the 6 iterations
        rows[i - 1]["eval/return_mean"] = ret
    import pandas as pd

    pd.DataFrame(rows).to_csv(run / "metrics.csv", index=False)
    (run / "summary.json").write_text(json.dumps({"env_id": "E", "env_steps_used": 600, "iterations": 6, "wall_time_s": 120.0,
                                                  "env_steps_per_s": 5.0, "episode_return_mean_last20": 7.5}))
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("seeds: [1]\nenv_steps_per_iteration: [64]\nlr_grid: [0.001]\n"
                     "envs:\n  - {id: E, reference_score: 12, random_score: 2, reference_source: a test, target_fractions: [0.5]}\n  - {id: F, targets: [1.0]}\n")
    out_png = tmp_path / "fig" / "curves.png"
    cmd = [sys.executable, str(ROOT / "scripts" / "reference_curves.py"), str(run), "--out", str(out_png), "--sweep", str(sweep)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    # the last 3 evaluations average 8; (8 - 2) / (12 - 2) of the way from random to reference
    assert "| E | 600 | 6 | 2 | 5 | 7.5 | 8 | 10 | 60% |" in out.stdout, out.stdout
    assert out_png.stat().st_size > 10_000
    no_eval = tmp_path / "no_eval"  # a run that never evaluated: curves and table without the evaluation columns
    no_eval.mkdir()
    pd.DataFrame(rows).drop(columns="eval/return_mean").to_csv(no_eval / "metrics.csv", index=False)
    (no_eval / "summary.json").write_text((run / "summary.json").read_text())
    out = subprocess.run([*cmd[:2], str(no_eval), "--out", str(out_png)], capture_output=True, text=True)
    assert out.returncode == 0 and "| E | 600 | 6 | 2 | 5 | 7.5 | - | - | - |" in out.stdout, out.stdout + out.stderr
    empty = tmp_path / "empty"  # a run killed before its first iteration
    empty.mkdir()
    (empty / "metrics.csv").write_text("")
    (empty / "summary.json").write_text((run / "summary.json").read_text())
    for bad_args in ([str(tmp_path / "nowhere")], [str(empty)], [str(run), "--sweep", str(tmp_path / "none.yaml")]):
        bad = subprocess.run([*cmd[:2], *bad_args, "--out", str(out_png)], capture_output=True, text=True)
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and not bad.stdout, bad_args


def _b_simple_trial(sweep: Path, b: int, lr: float, seed: int, combined: float | None, policy: float) -> None:
    """A completed grid trial that reached target 1.0 with these B_simple values (None: unresolved)."""
    tid = f"E_B{b}_lr{lr:g}_s{seed}"
    d = sweep / "trials" / tid
    d.mkdir(parents=True)
    parts = {"combined": {"b_simple": combined, "updates": 5, "finite_updates": 5},
             "policy": {"b_simple": policy, "updates": 5, "finite_updates": 5}}
    (d / "trial.json").write_text(json.dumps({
        "trial_id": tid, "env_id": "E", "seed": seed, "env_steps_per_iteration": b, "num_minibatches": 1,
        "lr_rule": "grid", "lr": lr, "status": "completed",
        "targets": {"1.0": {"reached": True, "iterations": 5, "env_steps": 5 * b, "b_simple": combined, "b_simple_parts": parts}}}))


def _noise_vs_lr(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "noise_vs_lr.py"), *args], capture_output=True, text=True)


def _noise_vs_lr_lines(*args: str) -> list[str]:
    """noise_vs_lr's output lines, after checking that it succeeded."""
    out = _noise_vs_lr(*args)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_noise_vs_lr_separates_the_batch_size_and_learning_rate_slopes(tmp_path):
    # B_simple = 5 B^-0.5 lr^-2 exactly (combined) and 7 B^0.25 (policy, no lr effect), over a
    # grid where the lr grows with B as a tuned grid's best lr does; 3 seeds a cell. One cell's
    # seeds are mostly unresolved (it drops out), one cell has 2 seeds (too few with the default 3).
    sweep = tmp_path / "sweep"
    (sweep / "trials").mkdir(parents=True)
    (sweep / "sweep.json").write_text(json.dumps({"name": "s", "targets": {"E": [1.0]}}))
    for b in (64, 128, 256, 512):
        for lr in (b * 1e-5, b * 2e-5, b * 4e-5):
            seeds = 2 if (b, lr) == (64, 64e-5) else 3
            for s in range(seeds):
                unresolved = (b, lr) == (512, 512 * 4e-5) and s > 0
                _b_simple_trial(sweep, b, lr, s, None if unresolved else 5 * b ** -0.5 * lr ** -2 * (1 + 0.1 * (s - 1)), 7 * b ** 0.25)
    lines = _noise_vs_lr_lines(str(sweep), "--variants", "combined", "policy")
    # 12 cells less the 2-seed one and the unresolved one; the seeds' spread is symmetric, so the median is exact
    assert "| E | 1 | combined | 10 | -0.50 [-0.50, -0.50] | -2.00 [-2.00, -2.00] | 1.00 |" in lines
    assert "| E | 1 | policy | 11 | +0.25 [+0.25, +0.25] | +0.00 [+0.00, +0.00] | 1.00 |" in lines
    # --parts: each trial's metrics.csv gives |G|^2 = 1e-3 B lr^2 and tr(Sigma) = 9 lr^-1 at every update
    # (B_simple's own factors need not match its record here)
    for d in (sweep / "trials").iterdir():
        rec = json.loads((d / "trial.json").read_text())
        b, lr = rec["env_steps_per_iteration"], rec["lr"]
        pd.DataFrame({"iteration": [1, 2, 3, 4, 5, 6], "noise/grad_sq": [1e-3 * b * lr ** 2] * 6,
                      "noise/trace_cov": [9 / lr] * 5 + [1e9]}).to_csv(d / "metrics.csv", index=False)
    lines = _noise_vs_lr_lines(str(sweep), "--variants", "combined", "--parts")
    assert "| E | 1 | combined | grad_sq | 35 | +1.00 [+1.00, +1.00] | +2.00 [+2.00, +2.00] | 1.00 |" in lines
    assert "| E | 1 | combined | trace_cov | 35 | +0.00 [+0.00, +0.00] | -1.00 [-1.00, -1.00] | 1.00 |" in lines
    # a transient: at every trial's first update |G|^2 is 1e9; with --skip-updates 1 the slopes are
    # those of the later updates exactly (B_simple = 9 lr^-1 / (1e-3 B lr^2) = 9000 B^-1 lr^-3)
    for d in (sweep / "trials").iterdir():
        m = pd.read_csv(d / "metrics.csv")
        m.loc[0, "noise/grad_sq"] = 1e9
        m.to_csv(d / "metrics.csv", index=False)
    lines = _noise_vs_lr(str(sweep), "--variants", "combined", "--parts", "--skip-updates", "1").stdout.splitlines()
    assert "| E | 1 | combined | 11 | -1.00 [-1.00, -1.00] | -3.00 [-3.00, -3.00] | 1.00 |" in lines  # 12 cells less the 2-seed one
    assert "| E | 1 | combined | grad_sq | 35 | +1.00 [+1.00, +1.00] | +2.00 [+2.00, +2.00] | 1.00 |" in lines
    assert "| E | 1 | combined | grad_sq | 35 | +1.00 [+1.00, +1.00] | +2.00 [+2.00, +2.00] | 1.00 |" not in \
        _noise_vs_lr(str(sweep), "--variants", "combined", "--parts").stdout.splitlines()  # the transient sets it
    # --claim: a point's B_simple as the analysis takes it (mean over its best-lr trials that
    # reached), from the updates after the first: at B = 128, lr 2.56e-3, 9 lr^-1 / (1e-3 B lr^2)
    noise_vs_lr = _script("noise_vs_lr")
    from rlscale.analysis import NoiseHistories, steps_to_target_table

    table = steps_to_target_table(sweep)
    lr = 128 * 2e-5
    entry = {"env_id": "E", "target": 1.0, "status": "ok", "b_crit": 100.0, "b_simple": 1.0, "ratio": 100.0,
             "best_configs": [{"B": 128.0, "lr_rule": "grid", "lr": lr, "median_iterations": 5.0}],
             "b_simple_variants": {"combined": {"b_simple": 1.0, "ratio": 100.0}}}
    after = noise_vs_lr.entries_after(NoiseHistories(sweep), [entry], table, 1)[0]
    expect = 9 / lr / (1e-3 * 128 * lr ** 2)
    assert after["b_simple"] == pytest.approx(expect) and after["ratio"] == pytest.approx(100 / expect)
    assert entry["b_simple"] == 1.0  # the analysis' own entry is left as it was
    bad = _noise_vs_lr(str(sweep), "--claim")
    assert bad.returncode == 2 and "run `rlscale analyze" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert bad.stdout == ""  # refused before any table
    png = tmp_path / "fig" / "noise_vs_lr.png"
    out = _noise_vs_lr(str(sweep), "--plot", str(png))
    assert out.returncode == 0, out.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert noise_vs_lr.fit(pd.DataFrame({"B": [64, 128, 256, 512], "lr": [1, 2, 4, 8], "b_simple": [1, 2, 3, 4]})) is None
    bad = _noise_vs_lr(str(tmp_path / "nowhere"))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    bad = _noise_vs_lr(str(sweep), "--skip-updates", "-1")
    assert bad.returncode == 2 and bad.stderr.strip() == "noise_vs_lr: --skip-updates must be 0 or more"
    bad = _noise_vs_lr(str(sweep), "--envs", "F")
    assert bad.returncode == 2 and "--envs names F" in bad.stderr
    # a sweep where nothing reached: no figure to draw, one line and exit 2
    for d in (sweep / "trials").iterdir():
        rec = json.loads((d / "trial.json").read_text())
        rec["targets"]["1.0"]["reached"] = False
        (d / "trial.json").write_text(json.dumps(rec))
    bad = _noise_vs_lr(str(sweep), "--plot", str(tmp_path / "x.png"))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "nothing to plot" in bad.stderr
    assert not (tmp_path / "x.png").exists()


def test_study_cost_says_what_the_pending_trials_still_have_to_run(tmp_path):
    cost = _script("study_cost")

    def trial(tid, B, status="pending", lr_rule="grid", walls=None, population=None, budget=1000, extra=""):
        d = tmp_path / "trials" / tid
        d.mkdir(parents=True)
        rec = {**_rec(tid, B, lr_rule=lr_rule, status=status), "overrides": ["seed=1", *([f"total_env_steps={budget}"] if budget else [])],
               "iterations": len(walls or [])}
        if population:
            rec["population"] = population
        (d / "trial.json").write_text(json.dumps(rec))
        if walls is not None:  # iterations 1.. with these cumulative wall times
            rows = [f"{i + 1},{i + 1},{w}" for i, w in enumerate(walls)]
            (d / "metrics.csv").write_text("\n".join(["iteration,env_steps,wall_time_s", *rows]) + "\n" + extra)
        return rec

    two = {"first": "p", "members": 2}
    recs = [trial("a", 100, walls=[1, 3, 5, 7, 9]),  # 5 of 10 iterations
            trial("b", 100, walls=[10, 12, 14, 16]),
            # the furthest member sets the cell's iteration and pace: 7, and (16 - 1) s over its 6
            # iterations, the last one's checkpoint included: 2.5 s; a half-written line is left out
            trial("c", 100, walls=[1, 3, 5, 7, 9, 11, 16], extra="8,8"),
            # not started: budget ceil(1000 / 300) = 4 iterations, the pace of the finished
            # populations of this env family, B = 300 and 2 members, each its longest member's
            # (4 and 6 s; p's shorter member p1 is not read), none for B = 500
            trial("d", 300), trial("d2", 300), trial("x", 500),
            trial("p", 300, status="completed", walls=[4, 8, 12], population=two),
            trial("p1", 300, status="completed", walls=[1, 100], population=two),
            trial("p2", 300, status="completed", walls=[6, 12, 18], population={"first": "p2", "members": 2}),
            trial("q", 300, status="completed", walls=[1, 2, 3], population={"first": "q", "members": 3}),  # another size
            # no budget in its overrides: its config.yaml's, 1400 env steps = 2 iterations at 700
            trial("g", 700, budget=None, walls=[1, 2, 4]),
            trial("e", 100, status="completed", walls=[1, 2]), trial("f", 100, lr_rule="adaptive", walls=[1])]
    (tmp_path / "trials" / "g" / "config.yaml").write_text("seed: 1\ntotal_env_steps: 1400\n")
    left = cost.remaining(tmp_path, recs)
    # c's training is the median of its iterations (2 s), its hours its whole pace's
    assert left[("E", 100, True, None)] == {"trials": 3, "iteration": 7, "budget": 10, "seconds_per_iteration": (2.0, 2.0),
                                "seconds_per_evaluation": None, "evaluations_left": 0,
                                "pace_from": "its own iterations", "hours_left": (3 * 2.5 / 3600, 3 * 2.5 / 3600)}
    assert left[("E", 300, False, None)] == {"trials": 2, "iteration": 0, "budget": 4, "seconds_per_iteration": (4.0, 6.0),
                                "seconds_per_evaluation": None, "evaluations_left": 0,
                                "pace_from": "finished populations of this family, B and size",
                                "hours_left": (4 * 4.0 / 3600, 4 * 6.0 / 3600)}
    assert left[("E", 500, False, None)]["seconds_per_iteration"] is None and left[("E", 500, False, None)]["hours_left"] is None
    assert left[("E", 700, True, None)]["budget"] == 2 and left[("E", 700, True, None)]["seconds_per_iteration"] == (1.5, 1.5)
    from rlscale.tracking import pack_metrics

    for tid in ("p", "p1", "p2", "q"):  # a clone of the records: the finished trials' metrics.csv.gz only
        pack_metrics(tmp_path / "trials" / tid)
        (tmp_path / "trials" / tid / "metrics.csv").unlink()
    assert cost.remaining(tmp_path, recs)[("E", 300, False, None)] == left[("E", 300, False, None)]
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "study_cost.py"), str(tmp_path), "--remaining"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "| E | 100 | running | 3 | 7 | 10 | 2.00 | 0 | - | its own iterations | 0.00 |" in out.stdout
    assert "| E | 300 | not started | 2 | 0 | 4 | 4.00-6.00 | 0 | - | finished populations of this family, B and size | 0.00-0.01 |" in out.stdout
    assert "| E | 500 | not started | 1 | 0 | 2 | - | 0 | - | - | - |" in out.stdout and "| E | 700 | running | 1 | 3 | 2 | 1.50 |" in out.stdout
    assert "left: 0.01 population hours if no member is pruned, over 3 cells; 1 cells without a pace or budget" in out.stdout, out.stdout


def test_study_cost_falls_back_on_finished_populations_records_where_their_tables_are_gone(tmp_path):
    """A cell not started whose family, B and size have finished populations without metrics
    tables: their longest members' wall_time_s over iterations (whole iterations, evaluations
    included), as a range, times the cell's iterations left."""
    cost = _script("study_cost")
    (tmp_path / "trials" / "y").mkdir(parents=True)
    one = {"first": "r", "members": 1}
    recs = [{**_rec("y", 800, status="pending"), "overrides": ["total_env_steps=4000"]},  # 5 iterations
            {**_rec("r", 800, wall=10.0, population=one), "iterations": 4},  # 2.5 s a whole iteration
            {**_rec("s", 800, wall=9.0, population={"first": "s", "members": 1}), "iterations": 2},  # 4.5 s
            {**_rec("s1", 800, wall=1.0, population={"first": "s", "members": 1}), "iterations": 1}]  # s's shorter member
    cell = cost.remaining(tmp_path, recs)[("E", 800, False, None)]
    assert cell["seconds_per_iteration"] == (2.5, 4.5) and cell["seconds_per_evaluation"] is None
    assert cell["pace_from"].startswith("records of finished populations of this family, B and size: whole iterations")
    assert cell["hours_left"] == (5 * 2.5 / 3600, 5 * 4.5 / 3600)


def test_study_cost_counts_an_lr_added_later_as_a_population_of_its_own_with_the_nearest_sizes_pace(tmp_path):
    """At one B, a running population and the members of an lr added later (not started) are two
    cells. A cell not started takes the pace of its own size where any finished population has
    it (records alone too), else the nearest sizes' (both on a tie), scaled by members."""
    cost = _script("study_cost")

    def trial(tid, B, status="pending", rows=0, population=None, wall=None, iterations=None):
        d = tmp_path / "trials" / tid
        d.mkdir(parents=True)
        rec = {**_rec(tid, B, status=status, population=population or "legacy"), "overrides": [f"total_env_steps={B * 10}"]}
        if wall is not None:
            rec.update(wall_time_s=wall, iterations=iterations)
        if rows:  # iterations 1.. at 2 s each
            (d / "metrics.csv").write_text("iteration,wall_time_s\n" + "".join(f"{i},{2 * i}\n" for i in range(1, rows + 1)))
        (d / "trial.json").write_text(json.dumps(rec))
        return rec

    recs = [trial("r1", 100, rows=4), trial("r2", 100, rows=4), trial("new", 100),  # running at 4 of 10; a new lr's member
            # finished, records only: B = 100's 1-member population at 3 s a whole iteration
            trial("f1", 100, "completed", population={"first": "f1", "members": 1}, wall=30.0, iterations=10),
            # B = 200: 3 members not started; finished populations of 2 (4 s) and 4 members (8 s), no 3
            trial("n1", 200), trial("n2", 200), trial("n3", 200),
            trial("g", 200, "completed", population={"first": "g", "members": 2}, wall=40.0, iterations=10),
            trial("g1", 200, "completed", population={"first": "g", "members": 2}, wall=1.0, iterations=1),
            trial("h", 200, "completed", population={"first": "h", "members": 4}, wall=100.0, iterations=10),
            *(trial(f"h{i}", 200, "completed", population={"first": "h", "members": 4}, wall=1.0, iterations=1) for i in (1, 2, 3))]
    left = cost.remaining(tmp_path, recs)
    assert sorted(left, key=str) == [("E", 100, False, None), ("E", 100, True, None), ("E", 200, False, None)]
    assert left[("E", 100, True, None)]["trials"] == 2 and left[("E", 100, True, None)]["iteration"] == 4
    assert left[("E", 100, True, None)]["pace_from"] == "its own iterations"
    new = left[("E", 100, False, None)]
    assert new["trials"] == 1 and new["iteration"] == 0 and new["seconds_per_iteration"] == (3.0, 3.0)
    assert new["hours_left"] == (10 * 3.0 / 3600,) * 2 and "B and size" in new["pace_from"]
    three = left[("E", 200, False, None)]  # 4 s x 3 / 2 = 6 s and 10 s x 3 / 4 = 7.5 s
    assert three["seconds_per_iteration"] == (6.0, 7.5) and "2 and 4 members, scaled" in three["pace_from"]
    assert three["hours_left"] == (10 * 6.0 / 3600, 10 * 7.5 / 3600)
    # a nearer size wins over a same-distance tie elsewhere: 2 members borrow from 1 (records, 3 s x 2)
    # rather than from tables of 4; two running populations at one B, named by their pending
    # records, are two cells, each at its own iteration
    recs += [trial("m1", 100, population={"first": "m1", "members": 2}), trial("m2", 100, population={"first": "m1", "members": 2}),
             trial("t4", 100, "completed", rows=10, population={"first": "t4", "members": 4}, wall=20.0, iterations=10)]
    recs += [trial("w1", 300, rows=2, population={"first": "w1", "members": 1}), trial("v1", 300, rows=6, population={"first": "v1", "members": 1})]
    left = cost.remaining(tmp_path, recs)
    pair = left[("E", 100, False, "m1")]
    assert pair["seconds_per_iteration"] == (6.0, 6.0) and "B and 1 members, scaled" in pair["pace_from"]
    assert left[("E", 300, True, "w1")]["iteration"] == 2 and left[("E", 300, True, "v1")]["iteration"] == 6
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "study_cost.py"), str(tmp_path), "--remaining"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("| E | 100 |")]
    assert [r.split(" | ")[2:4] for r in rows] == [["running", "2"], ["not started", "1"], ["not started", "2"]], rows


def test_study_cost_counts_evaluations_apart_from_training(tmp_path):
    """A row's evaluation falls in the time to the next row; evaluations count once per
    (iteration, seconds) over every member of a population, whose members may evaluate at
    different iterations with offset wall clocks, spread per eval.interval; a member that has
    finished is not read; a cell not started takes its env's running cells' evaluation pace."""
    cost = _script("study_cost")
    header = "iteration,wall_time_s,time/eval_s"

    def trial(tid, B, rows, status="pending", population=None, overrides=("total_env_steps=2000", "eval.interval=4"), env="E"):
        d = tmp_path / "trials" / tid
        d.mkdir(parents=True)
        rec = {**_rec(tid, B, status=status), "env_id": env, "overrides": list(overrides), "iterations": len(rows)}
        if population:
            rec["population"] = population
        (d / "trial.json").write_text(json.dumps(rec))
        (d / "metrics.csv").write_text("\n".join([header, *(",".join(map(str, r)) for r in rows)]) + "\n")
        return rec

    # a running population at B = 100 (20 iterations of budget), members 4 iterations apart:
    # a evaluates at 4 and 8 (30 s, 10 s), b (its clock 100 s behind) at 4 (20 s); training 1 s;
    # c finished at iteration 4 (its 1 s evaluation is not read)
    a = [(1, 1, ""), (2, 2, ""), (3, 3, ""), (4, 4, 30), (5, 35, ""), (6, 36, ""), (7, 37, ""), (8, 38, 10), (9, 49, "")]
    b = [(1, -99, ""), (2, -98, ""), (3, -97, ""), (4, -96, 20), (5, -75, "")]
    recs = [trial("a", 100, a), trial("b", 100, b), trial("c", 100, [(1, 1, ""), (2, 2, ""), (3, 3, ""), (4, 4, 1)]),
            # not started at B = 200: 10 iterations, 2 evaluations; a finished population's training pace
            trial("n", 200, []),
            trial("p", 200, [(1, 5, ""), (2, 10, ""), (3, 15, 100), (4, 120, "")], status="completed",
                  population={"first": "p", "members": 1}, overrides=("total_env_steps=800",)),
            trial("n2", 400, [], overrides=("total_env_steps=2000",)),  # no eval.interval, not started, no pace
            # another env: a training pace, evaluations to make, and no evaluation pace anywhere
            trial("m", 200, [], env="F"),
            trial("q", 200, [(1, 5, ""), (2, 10, ""), (3, 15, "")], status="completed", env="F",
                  population={"first": "q", "members": 1})]
    (tmp_path / "trials" / "c" / "summary.json").write_text("{}")
    left = cost.remaining(tmp_path, recs)
    assert left[("E", 100, True, None)] == {"trials": 3, "iteration": 9, "budget": 20, "seconds_per_iteration": (1.0, 1.0),
                                "seconds_per_evaluation": (30.0, 30.0), "evaluations_left": 5 - 2,
                                "pace_from": "its own iterations", "hours_left": (11 * 48 / 8 / 3600,) * 2}
    # n: p's training (median 5 s: its evaluation left out), and E at B = 100's evaluations (30 s), not p's
    assert left[("E", 200, False, None)]["seconds_per_iteration"] == (5.0, 5.0)
    assert left[("E", 200, False, None)]["seconds_per_evaluation"] == (30.0, 30.0)
    assert left[("E", 200, False, None)]["evaluations_left"] == 2 and left[("E", 200, False, None)]["hours_left"] == ((10 * 5 + 2 * 30) / 3600,) * 2
    assert left[("E", 400, False, None)]["evaluations_left"] == 0 and left[("E", 400, False, None)]["hours_left"] is None
    assert left[("F", 200, False, None)]["seconds_per_iteration"] == (5.0, 5.0) and left[("F", 200, False, None)]["evaluations_left"] == 2
    assert left[("F", 200, False, None)]["seconds_per_evaluation"] is None and left[("F", 200, False, None)]["hours_left"] is None


def test_claim_sensitivity_refits_without_each_envs_largest_or_smallest_batch(tmp_path):
    from tests.test_analysis import B_CRIT, NUM_MINIBATCHES, make_fake_sweep

    sweep = make_fake_sweep(tmp_path)
    # the fake frontier is exact (B_crit 256, B_simple 61 x 4 per iteration at the good lrs) but
    # at its largest B, where every run now takes twice its steps to the lower target
    for path in (sweep / "trials").glob("b1024_*/trial.json"):
        rec = json.loads(path.read_text())
        rec["targets"]["100.0"]["iterations"] *= 2
        path.write_text(json.dumps(rec))
    claims = dict(_script("claim_sensitivity").claims(sweep, "combined"))
    exact = B_CRIT / (61.0 * NUM_MINIBATCHES)
    assert claims["without each env's largest B"]["n_points"] == 1
    assert claims["without each env's largest B"]["median_ratio"] == pytest.approx(exact, rel=1e-3)
    for name in ("as run", "without each env's smallest B"):  # both still fit the bent point
        assert claims[name]["n_points"] == 1 and abs(claims[name]["median_ratio"] / exact - 1) > 0.05, name
    # ... but not the same fit: the smallest B (64) is left out of the second
    assert abs(claims["without each env's smallest B"]["median_ratio"] / claims["as run"]["median_ratio"] - 1) > 0.01
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "claim_sensitivity.py"), str(sweep)], capture_output=True, text=True)
    assert out.returncode == 0 and "| without each env's largest B | 1 | 1 | 1 of 1 | 1.05 |" in out.stdout, out.stdout + out.stderr
    bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "claim_sensitivity.py"), str(tmp_path / "nowhere")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_study_curves_draws_no_best_lr_where_no_lrs_median_seed_reached_the_target(tmp_path):
    """The learning curves of an env are those of each B's best lr at its highest target; a B where
    no lr's median seed reached it has no best lr, and is left out rather than drawn as one."""
    mod = _script("study_curves")
    best = [{"B": 256.0, "lr_rule": "grid", "lr": 2.5e-4, "median_iterations": None, "n_seeds": 5, "n_reached": 1},
            {"B": 4096.0, "lr_rule": "grid", "lr": 4e-3, "median_iterations": 186.0, "n_seeds": 5, "n_reached": 3}]
    assert mod.drawn_configs({"best_configs": best}) == best[1:]
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "analysis.json").write_text(json.dumps({"entries": [{"env_id": "E", "target": 6.0, "best_configs": best}]}))
    rows = []
    for c in best:
        tid = f"E_B{int(c['B'])}_s1"
        (sweep / "trials" / tid).mkdir(parents=True)
        pd.DataFrame({"env_steps_used": [c["B"], 2 * c["B"]], "eval/return_mean": [1.0, 6.5]}).to_csv(
            sweep / "trials" / tid / "metrics.csv", index=False)
        rows.append({"trial_id": tid, "env_id": "E", "B": c["B"], "lr": c["lr"], "lr_rule": "grid", "status": "completed"})
    pd.DataFrame(rows).to_csv(sweep / "steps_to_target.csv", index=False)
    assert mod.main([str(sweep), "--out", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_eval_lengths_replays_a_runs_evaluation_at_its_newest_checkpoint(tmp_path):
    """A run trained alone: the replay's returns are those its own evaluation logged at that iteration."""
    from rlscale.cli import main as rlscale_main
    from tests.helpers import CARTPOLE

    run = tmp_path / "run"
    assert rlscale_main(["train", str(CARTPOLE), "workers.backend=local", "tracking.wandb_mode=disabled", "tracking.progress_bar=false",
                         "total_env_steps=2048", "checkpoint_interval=3", "eval.interval=2", "eval.episodes=4", "--out", str(run)]) == 0
    metrics = pd.read_csv(run / "metrics.csv")
    last = int(metrics["iteration"].iloc[-1])  # 8 iterations: the final checkpoint, and an evaluation
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "eval_lengths.py"), str(run)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    row = out.stdout.splitlines()[2].split(" | ")
    logged = metrics.loc[metrics["iteration"] == last, "eval/return_mean"].item()
    returns = [float(x) for x in row[7].rstrip(" |").split()]
    assert row[1] == str(last) and row[2] == "yes" and len(returns) == 4 and sum(returns) / 4 == pytest.approx(logged, rel=1e-9)
    assert float(row[6]) == pytest.approx(logged, rel=5e-3) and int(row[3]) >= max(returns) and row[4] == "0"  # CartPole scores 1 a step
    bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "eval_lengths.py"), str(tmp_path / "empty")], capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "holds no checkpoint" in bad.stderr
