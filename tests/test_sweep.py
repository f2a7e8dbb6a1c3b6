"""The reduced CartPole study of CI: sweep on a real local Ray, analysis, report, resumption."""

import dataclasses
import json
import math
import shutil
from html.parser import HTMLParser

import numpy as np
import pytest

from rlscale.analysis import analyze
from rlscale.config import to_yaml
from rlscale.errors import ConfigError
from rlscale.sweep import expand_grid, load_sweep_config, run_sweep
from tests.helpers import ROOT

CI_SWEEP = ROOT / "configs" / "sweeps" / "cartpole_ci.yaml"


def test_grid_expansion_and_lr_rules():
    cfg = load_sweep_config(CI_SWEEP, ["lr_rules=[fixed,linear,sqrt,noise]", "lr_grid=[0.001]"])
    trials = expand_grid(cfg)
    assert len(trials) == 4 * (4 + 1) * 2
    assert len({t.trial_id for t in trials}) == len(trials)
    t = next(t for t in trials if t.env_steps_per_iteration == 64 and t.lr_rule == "linear")
    assert "ppo.lr_rule=linear" in t.overrides and "ppo.lr_reference_env_steps=256" in t.overrides
    assert "ppo.microbatch_size=32" in t.overrides  # 64 env steps / 1 minibatch / 2 micro-batches


class _Html(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.imgs.append(dict(attrs).get("src", ""))


@pytest.mark.slow
def test_ci_study_end_to_end(ray_local, tmp_path):
    """The reduced study with the whole protocol: populations, B through envs at T = 16,
    a constant-lr grid, targets from a reference, evaluation every 512 env steps."""
    import pandas as pd
    import yaml

    out = tmp_path / "sweep"
    r = run_sweep(CI_SWEEP, [], out, quiet=True)
    assert r["trials"] == r["ran"] == r["completed"] == 16 and r["failed"] == 0
    meta = json.loads((out / "sweep.json").read_text())
    targets = [round(21.8 + f * (500 - 21.8), 6) for f in (0.2, 0.4, 0.6)]
    assert meta["targets"] == {"CartPole-v1": targets} and "episode cap" in meta["references"]["CartPole-v1"]["source"]
    tdir = out / "trials" / "CartPole-v1_B128_lr0.001_s1"
    cfg = yaml.safe_load((tdir / "config.yaml").read_text())
    assert (cfg["workers"]["fragment_length"], cfg["workers"]["num_envs_per_worker"], cfg["eval"]["interval"]) == (16, 8, 4)
    assert not cfg["ppo"]["anneal_lr"] and not cfg["ppo"]["anneal_clip"]
    rec = json.loads((tdir / "trial.json").read_text())
    t = rec["targets"][str(targets[0])]
    assert rec["status"] == "completed" and t["reached"]
    # a target is dated by an evaluation: every 4th iteration at B = 128
    assert t["env_steps"] == 128 * t["iterations"] and t["iterations"] % 4 == 0 and t["optimizer_steps"] == 10 * t["iterations"]
    assert t["b_simple"] > 0 and t["b_simple_ci"][0] <= t["b_simple"]
    m = pd.read_csv(tdir / "metrics.csv")
    assert m["eval/return_mean"].notna().tolist() == [i % 4 == 0 for i in m["iteration"]]
    assert (out / "wandb_sweep_CartPole-v1.yaml").is_file()

    result = analyze(out, wandb_mode="offline")
    good = [e for e in result["entries"] if e["b_crit"] and e["b_simple"]]
    assert good, result["entries"]
    for e in good:
        assert math.isfinite(e["b_crit"]) and e["b_crit"] > 0 and e["b_simple"] > 0
        assert e["optimizer_steps_per_iteration"] == 10 and math.isclose(e["b_crit_per_optimizer_step"], e["b_crit"] / 10)
    # a two-value grid: every best lr (a B where some lr's median seed reached) lies at an edge, and the report says so
    assert len(result["lr_at_grid_edge"]) == sum(c["median_iterations"] is not None for e in result["entries"]
                                                 for c in e["best_configs"]) > 0
    html = (out / "report.html").read_text()
    p = _Html()
    p.feed(html)
    assert len(p.imgs) >= 4 and all(s.startswith("data:image/png;base64,") for s in p.imgs)
    for png in (out / "figures").glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Rerunning the same command keeps the finished trials.
    again = run_sweep(CI_SWEEP, [], out, quiet=True)
    assert again["ran"] == 0 and again["skipped_completed"] == 16

    # An interrupted trial (pending with a checkpoint) is resumed, not restarted.
    tdir = out / "trials" / "CartPole-v1_B512_lr0.002_s2"
    rec = json.loads((tdir / "trial.json").read_text())
    rec["status"] = "pending"
    (tdir / "trial.json").write_text(json.dumps(rec))
    rows = len(pd.read_csv(tdir / "metrics.csv"))
    again = run_sweep(CI_SWEEP, [], out, quiet=True)
    assert again["ran"] == 1 and again["completed"] == 1
    assert len(pd.read_csv(tdir / "metrics.csv")) == rows  # continued from its final checkpoint


@pytest.mark.slow
def test_trial_with_ray_rollout_actors_places_them_in_its_placement_group(ray_local, tmp_path):
    # The trial's group reserves 1 CPU for the learner and 1 per actor: the whole 2-CPU cluster.
    # Actors placed outside the group would find no CPU and the trial would time out.
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"""name: ray_actors
base_config: {ROOT / "configs" / "cartpole.yaml"}
overrides: {{workers.backend: ray, workers.num_workers: 1, workers.start_timeout_s: 60, tracking.progress_bar: false,
             tracking.wandb_mode: disabled}}
envs: [{{id: CartPole-v1, targets: [1000], total_env_steps: 512}}]
env_steps_per_iteration: [256]
seeds: [1]
""")
    r = run_sweep(sweep, [], tmp_path / "out", quiet=True)
    rec = json.loads((tmp_path / "out" / "trials" / "CartPole-v1_B256_fixed_s1" / "trial.json").read_text())
    assert r["completed"] == 1, rec["error"]
    assert rec["env_steps"] == 512


TINY_SWEEP = """
name: tiny
base_config: {base}
overrides:
  workers.backend: local
  workers.num_workers: 1
  workers.num_envs_per_worker: 8
  ppo.epochs: 4
  torch_threads: 1
  tracking.progress_bar: false
  checkpoint_interval: 100
envs:
  - id: CartPole-v1
    targets: [25, 40]
    total_env_steps: 3072
env_steps_per_iteration: [64, 128]
lr_rules: [sqrt, linear]
reference_env_steps: 128
seeds: [1, 2]
microbatches_per_minibatch: 2
"""


@pytest.mark.slow
def test_population_sweep_writes_the_records_and_analysis_of_separate_trials(ray_local, tmp_path):
    from rlscale.sweep import population_groups

    sweep = tmp_path / "tiny.yaml"
    sweep.write_text(TINY_SWEEP.format(base=ROOT / "configs" / "cartpole.yaml"))
    cfg = load_sweep_config(sweep, ["population=true"])
    trials = expand_grid(cfg)
    from rlscale.config import load_train_config

    groups = population_groups(trials, {t.trial_id: load_train_config(cfg.base_config, t.overrides) for t in trials}, tmp_path)
    assert sorted(len(g) for g in groups) == [4, 4]  # one population per batch size: 2 lr rules x 2 seeds
    assert all(len({t.env_steps_per_iteration for t in g}) == 1 for g in groups)

    out = {mode: tmp_path / mode for mode in ("separate", "population")}
    for mode, d in out.items():
        r = run_sweep(sweep, [f"population={mode == 'population'}"], d, quiet=True)
        assert r["trials"] == r["ran"] == r["completed"] == 8 and r["failed"] == 0, r
    recs = {mode: {p.parent.name: json.loads(p.read_text()) for p in (d / "trials").glob("*/trial.json")} for mode, d in out.items()}
    assert sorted(recs["population"]) == sorted(recs["separate"]) and len(recs["separate"]) == 8
    for tid, sep in recs["separate"].items():
        pop = recs["population"][tid]
        assert list(pop) == list(sep) and pop["status"] == "completed"
        assert sep["population"] is None and pop["population"]["members"] == 4
        assert recs["population"][pop["population"]["first"]]["population"] == pop["population"]  # its first member's record
        assert sorted(pop["targets"]) == sorted(sep["targets"]) and pop["num_minibatches"] == sep["num_minibatches"]
        assert pop["overrides"] == [*sep["overrides"][:-2], "tracking.wandb_mode=disabled", *sep["overrides"][-2:]]
        files = lambda d: sorted(p.name for p in d.iterdir() if p.name != "wandb")  # noqa: E731
        assert files(out["population"] / "trials" / tid) == files(out["separate"] / "trials" / tid)
    results = {mode: analyze(d, wandb_mode="disabled") for mode, d in out.items()}
    keys = {mode: sorted((e["env_id"], e["target"]) for e in r["entries"]) for mode, r in results.items()}
    assert keys["population"] == keys["separate"] and keys["separate"]
    # a rerun skips what the populations completed
    again = run_sweep(sweep, ["population=true"], out["population"], quiet=True)
    assert again["ran"] == 0 and again["skipped_completed"] == 8


def test_population_sweep_refuses_trials_no_population_can_train(tmp_path):
    from rlscale.errors import ConfigError

    sweep = tmp_path / "ray.yaml"
    sweep.write_text(TINY_SWEEP.format(base=ROOT / "configs" / "cartpole.yaml").replace("backend: local", "backend: ray"))
    with pytest.raises(ConfigError, match="workers.backend=local"):
        run_sweep(sweep, ["population=true"], tmp_path / "s", quiet=True)
    assert not (tmp_path / "s").exists()


PROTOCOL_SWEEP = """
name: protocol
base_config: {base}
overrides:
  workers.backend: local
  workers.num_workers: 2
  ppo.num_minibatches: 2
fragment_length: 16
eval_env_steps: 256
envs:
  - id: CartPole-v1
    reference_score: 500
    random_score: 20
    reference_source: "the env's episode cap"
    target_fractions: [0.25, 0.5]
    adaptive:
      ppo.batch_min: 64
      ppo.batch_max: 1024
      ppo.microbatch_size: 16
  - id: Acrobot-v1
    targets: [-400]
    fragment_length: 32
    base_config: {acrobot}
env_steps_per_iteration: [64, 128, 256]
lr_rules: []
lr_grid: [0.001, 0.002]
seeds: [1]
"""


def _protocol_sweep(tmp_path, text=PROTOCOL_SWEEP):
    acrobot = tmp_path / "acrobot.yaml"
    acrobot.write_text((ROOT / "configs" / "cartpole.yaml").read_text().replace("CartPole-v1", "Acrobot-v1"))
    p = tmp_path / "protocol.yaml"
    p.write_text(text.format(base=ROOT / "configs" / "cartpole.yaml", acrobot=acrobot))
    return p


def test_protocol_batch_through_envs_targets_from_a_reference_and_evaluation_per_batch_size(tmp_path):
    from rlscale.config import load_train_config

    cfg = load_sweep_config(_protocol_sweep(tmp_path))
    trials = {t.trial_id: t for t in expand_grid(cfg)}
    adaptive = trials.pop("CartPole-v1_adaptive_s1")  # one adaptive-batch trial per seed
    c = load_train_config(adaptive.base_config, adaptive.overrides)
    assert adaptive.lr_rule == "adaptive" and c.ppo.batch_schedule == "noise" and (c.ppo.batch_min, c.ppo.batch_max) == (64, 1024)
    assert (c.eval.interval, c.eval.env_steps) == (0, 256) and c.targets == [140.0, 260.0]
    # its B varies as the grid's: through the envs taking part at T = 16, in workers of B_min / T envs
    assert (c.workers.fragment_length, c.workers.collect, c.workers.num_envs_per_worker, c.workers.num_workers) == (16, "needed", 4, 16)
    assert len(trials) == 2 * 3 * 2  # envs x B x lrs
    for t in trials.values():
        c = load_train_config(t.base_config, t.overrides)
        T = 16 if t.env_id == "CartPole-v1" else 32
        B = t.env_steps_per_iteration
        # B varies through the number of envs; every fragment is T steps long
        assert c.workers.fragment_length == T and c.workers.num_workers * c.workers.num_envs_per_worker * T == B
        assert c.eval.interval == max(1, 256 // B)  # an evaluation at least every 256 env steps
        assert c.ppo.lr == t.lr and c.ppo.lr_rule == "fixed" and c.env.id == t.env_id
    # targets fixed in advance: 20 + f * (500 - 20)
    c = load_train_config(trials["CartPole-v1_B64_lr0.001_s1"].base_config, trials["CartPole-v1_B64_lr0.001_s1"].overrides)
    assert c.targets == [140.0, 260.0] and c.stop_return == 260.0
    assert trials["Acrobot-v1_B64_lr0.001_s1"].base_config.endswith("acrobot.yaml")


@pytest.mark.parametrize("edit, match", [
    (("fragment_length: 16", "fragment_length: 24"), "not a multiple of fragment_length 24 x workers.num_workers 2"),
    (("    reference_source: \"the env's episode cap\"\n", ""), "no reference_score and reference_source"),
    (("    targets: [-400]\n", "    targets: [-400]\n    target_fractions: [0.5]\n"), "both targets and target_fractions"),
    (("target_fractions: [0.25, 0.5]", "target_fractions: [0.25, 1.5]"), r"must lie in \(0, 1\]"),
    (("eval_env_steps: 256", "eval_env_steps: -1"), "eval_env_steps must be >= 0"),
    (("  workers.num_workers: 2\n", "  workers.num_workers: 0\n"), "needs workers.num_workers >= 1"),
    (("reference_score: 500", "reference_score: 10"), "must exceed random_score"),
    (("ppo.batch_min: 64", "ppo.batch_min: 72"), "adaptive ppo.batch_min=72 must be a multiple of fragment_length 16"),
    (("lr_rules: []", "lr_rules: []\nprune: true"), "sets prune: true, which stops members of a population"),
    (("lr_rules: []", "lr_rules: []\nprune_settled: true"), "sets prune_settled: true, which refines pruning; set prune: true"),
])
def test_protocol_sweep_refuses_bad_settings_in_one_line(tmp_path, edit, match):
    from rlscale.errors import ConfigError

    text = PROTOCOL_SWEEP.replace(*edit)
    assert text != PROTOCOL_SWEEP
    with pytest.raises(ConfigError, match=match) as err:
        expand_grid(load_sweep_config(_protocol_sweep(tmp_path, text)))  # as `rlscale sweep` does before it starts
    assert len(str(err.value).splitlines()) == 1


def test_sweep_refuses_an_env_it_does_not_list_in_one_line(tmp_path, capsys):
    from rlscale.cli import main

    code = main(["sweep", str(_protocol_sweep(tmp_path)), "--out", str(tmp_path / "s"), "--envs", "CartPole-v1", "Pong"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Pong" in err and "Acrobot-v1" in err, err
    assert not (tmp_path / "s").exists()


def test_envs_filter_and_adaptive_trials_run_alone_beside_populations(tmp_path, monkeypatch):
    """What run_sweep hands to Ray: with --envs only those envs' trials; with population: true
    the grid as one population per B, each adaptive trial alone, in the config's order."""
    import rlscale.sweep as sweep_mod

    seen = {}

    def fake_run(cfg, groups, trial_cfgs, sweep_dir, quiet):
        seen["groups"] = [[t.trial_id for t in g] for g in groups]
        return []

    monkeypatch.setattr(sweep_mod, "_run_on_ray", fake_run)
    monkeypatch.setattr(sweep_mod, "_connect", lambda *a: None)
    path = _protocol_sweep(tmp_path, PROTOCOL_SWEEP.replace("seeds: [1]", "seeds: [1, 2]\npopulation: true"))
    r = run_sweep(path, [], tmp_path / "s", quiet=True, only_envs=["CartPole-v1"])
    assert r["trials"] == 2 * (2 * 3 * 2 + 1)  # both envs listed in sweep.json ...
    groups = seen["groups"]  # ... but only CartPole's trials run
    assert [len(g) for g in groups] == [4, 4, 4, 1, 1]  # 2 lrs x 2 seeds per B, then the adaptive runs
    assert groups[-2:] == [["CartPole-v1_adaptive_s1"], ["CartPole-v1_adaptive_s2"]]
    assert all(t.startswith("CartPole-v1_B64_") for t in groups[0])
    assert not any((tmp_path / "s" / "trials").glob("Acrobot*"))
    # --only splits the same trials between two sweeps that may run side by side
    run_sweep(path, [], tmp_path / "g", quiet=True, only_envs=["CartPole-v1"], only="grid")
    assert [len(g) for g in seen["groups"]] == [4, 4, 4]
    run_sweep(path, [], tmp_path / "a", quiet=True, only="adaptive")
    assert seen["groups"] == [["CartPole-v1_adaptive_s1"], ["CartPole-v1_adaptive_s2"]]
    assert sorted(p.name for p in (tmp_path / "a" / "trials").iterdir()) == ["CartPole-v1_adaptive_s1", "CartPole-v1_adaptive_s2"]
    with pytest.raises(ConfigError, match="grid' or 'adaptive"):
        run_sweep(path, [], tmp_path / "x", quiet=True, only="fixed")


def test_a_resumed_sweep_runs_the_populations_a_stop_interrupted_before_those_not_started(tmp_path, monkeypatch):
    """A grid that grew (a new lr) after a stop: the interrupted populations resume first, then
    the new members, in the config's order."""
    import rlscale.sweep as sweep_mod

    seen = {}

    def fake_run(cfg, groups, *args):
        seen["groups"] = [[t.trial_id for t in g] for g in groups]
        return []

    monkeypatch.setattr(sweep_mod, "_run_on_ray", fake_run)
    monkeypatch.setattr(sweep_mod, "_connect", lambda *a: None)
    path = _protocol_sweep(tmp_path, PROTOCOL_SWEEP.replace("seeds: [1]", "seeds: [1, 2]\npopulation: true"))
    trials = [t for t in expand_grid(load_sweep_config(path)) if t.env_id == "CartPole-v1" and t.lr_rule != "adaptive"]
    bs = sorted({t.env_steps_per_iteration for t in trials})
    for t in trials:  # a stop in the largest B's population: its members hold checkpoints
        if t.env_steps_per_iteration == bs[-1]:
            (tmp_path / "s" / "trials" / t.trial_id / "checkpoints").mkdir(parents=True)
            (tmp_path / "s" / "trials" / t.trial_id / "checkpoints" / "ckpt_00000002.pt").write_bytes(b"")
    run_sweep(path, [], tmp_path / "s", quiet=True, only_envs=["CartPole-v1"], only="grid")
    firsts = [{int(i.split("_B")[1].split("_")[0]) for i in g} for g in seen["groups"]]
    assert firsts == [{bs[-1]}, *[{b} for b in bs[:-1]]]
    for g in seen["groups"]:  # each pending record names its population, as a completed one does
        for tid in g:
            rec = json.loads((tmp_path / "s" / "trials" / tid / "trial.json").read_text())
            assert rec["status"] == "pending" and rec["population"] == {"first": g[0], "members": len(g)}


def test_a_member_that_left_without_a_checkpoint_resumes_with_its_interrupted_population(tmp_path, monkeypatch):
    """A stop interrupted a population after one member left before its first checkpoint
    (summary.json, trial still pending): that member is grouped with the members holding
    checkpoints, and the population resumes (its records are kept as written), rather than
    starting it again in a population of its own."""
    from omegaconf import OmegaConf

    import rlscale.population as population_mod
    import rlscale.sweep as sweep_mod

    path = _protocol_sweep(tmp_path, PROTOCOL_SWEEP.replace("seeds: [1]", "seeds: [1, 2]\npopulation: true"))
    trials = [t for t in expand_grid(load_sweep_config(path)) if t.trial_id.startswith("CartPole-v1_B64_")]
    sweep_dir = tmp_path / "s"
    dirs = [sweep_dir / "trials" / t.trial_id for t in trials]
    for d in dirs:
        d.mkdir(parents=True)
    (dirs[0] / "summary.json").write_text("{}")  # left before its first checkpoint
    for d in dirs[1:]:
        (d / "checkpoints").mkdir()
        (d / "checkpoints" / "ckpt_00000002.pt").write_bytes(b"")
    base = OmegaConf.to_container(sweep_mod.load_yaml(trials[0].base_config))  # as _run_on_ray sends it
    cfgs = {t.trial_id: sweep_mod.load_train_config(t.base_config, t.overrides) for t in trials}  # as run_sweep builds them
    assert [[t.trial_id for t in g] for g in sweep_mod.population_groups(trials, cfgs, sweep_dir)] == [[t.trial_id for t in trials]]
    seen = {}

    def fake_train_population(cfgs, dirs, **kw):
        seen.update(kw)
        return [{"targets": {}} for _ in cfgs]

    monkeypatch.setattr(population_mod, "train_population", fake_train_population)
    for d in dirs:  # a resumed population reads each member's config.yaml
        (d / "config.yaml").write_text(to_yaml(cfgs[d.name]))
    sweep_mod.run_population(trials, base, [str(d) for d in dirs])
    assert seen["resume"] is True and seen["overwrite"] is False
    # a stop before the first round of checkpoints: no member holds one, and all start again together
    for d in dirs[1:]:
        shutil.rmtree(d / "checkpoints")
    assert [[t.trial_id for t in g] for g in sweep_mod.population_groups(trials, cfgs, sweep_dir)] == [[t.trial_id for t in trials]]
    sweep_mod.run_population(trials, base, [str(d) for d in dirs])
    assert seen["resume"] is False and seen["overwrite"] is True


def test_a_population_task_hands_the_sweeps_prune_setting_to_its_population(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    import rlscale.population as population_mod
    import rlscale.sweep as sweep_mod

    seen = {}

    def fake_train_population(cfgs, dirs, **kw):
        seen.update(kw)
        return [{"targets": {}} for _ in cfgs]

    monkeypatch.setattr(population_mod, "train_population", fake_train_population)
    trials = [t for t in expand_grid(load_sweep_config(_protocol_sweep(tmp_path))) if t.trial_id.startswith("CartPole-v1_B64_")]
    base = OmegaConf.to_container(sweep_mod.load_yaml(trials[0].base_config))  # as _run_on_ray sends it
    finished = [population_mod.Finished(("grid", 1.0), {}, 3)]
    recs = sweep_mod.run_population(trials, base, [str(tmp_path / t.trial_id) for t in trials], True, finished)
    assert seen["prune"] is True and seen["finished"] == finished and {r["status"] for r in recs} == {"completed"}


def test_a_population_prunes_against_the_sweeps_finished_trials_of_its_env_and_b(tmp_path):
    """finished_trials: completed records of the group's env, B and lr rule, other trials only."""

    import rlscale.sweep as sweep_mod
    from rlscale.population import Finished

    trials = expand_grid(load_sweep_config(_protocol_sweep(tmp_path)))
    group = [t for t in trials if t.trial_id.startswith("CartPole-v1_B64_") and t.lr == trials[0].lr]
    others = [t for t in trials if t not in group]
    same_b = next(t for t in others if t.env_id == group[0].env_id and t.env_steps_per_iteration == 64)
    other_b = next(t for t in others if t.env_id == group[0].env_id and t.env_steps_per_iteration != 64 and t.lr_rule == "grid")
    other_env = next(t for t in others if t.env_id == "Acrobot-v1" and t.env_steps_per_iteration == 64)
    other_rule = dataclasses.replace(same_b, trial_id="CartPole-v1_B64_noise", lr_rule="noise")
    pruned = dataclasses.replace(same_b, trial_id="CartPole-v1_B64_pruned", seed=9)
    summary = {"targets": {"100.0": {"reached": True, "iterations": 7}, "200.0": {"reached": False, "iterations": None}},
               "iterations": 9}
    sweep = tmp_path / "s"

    def write(t, status, s=summary):
        sweep_mod.atomic_write_json(sweep / "trials" / t.trial_id / "trial.json", sweep_mod._trial_record(t, status, summary=s))

    for t in (same_b, other_b, other_env, other_rule, group[0]):
        write(t, "completed")
    write(pruned, "completed", {**summary, "pruned": {"iteration": 9}})
    (sweep / "trials" / "broken").mkdir()
    (sweep / "trials" / "broken" / "trial.json").write_text("{")  # a half-written record is skipped
    odd = dataclasses.replace(same_b, trial_id="CartPole-v1_B64_odd")
    write(odd, "completed", {"targets": {"100.0": None, "200.0": {"reached": True, "iterations": None}}})  # unreadable: skipped
    assert sweep_mod.finished_trials(sweep, group) == [Finished((same_b.lr_rule, same_b.lr), {"100.0": 7}, 9),
                                                       Finished((same_b.lr_rule, same_b.lr), {"100.0": 7}, 9, pruned=True)]
    write(same_b, "pending")
    assert [f.pruned for f in sweep_mod.finished_trials(sweep, group)] == [True]


def test_evaluation_due_every_interval_or_every_env_steps():
    from rlscale.config import EvalConfig

    by_iter, by_steps = EvalConfig(interval=4), EvalConfig(env_steps=256)
    assert [i for i in range(1, 13) if by_iter.due(i, 64 * i, 64)] == [4, 8, 12]
    # B changing every iteration: an evaluation whenever 256, 512, ... env steps are crossed
    batches = [64, 64, 128, 64, 512, 64, 1024]
    used = np.cumsum(batches)
    assert [int(u) for u, b in zip(used, batches) if by_steps.due(0, int(u), b)] == [256, 832, 1920]
    assert not EvalConfig().enabled and by_steps.enabled and by_iter.enabled


def test_a_resumed_run_carries_its_latest_evaluation(tmp_path):
    from rlscale.tracking import MetricsTable

    t = MetricsTable(tmp_path / "metrics.csv")
    for i, ev in enumerate([float("nan"), 120.0, float("nan"), 230.0, float("nan")], start=1):
        t.append({"iteration": i, "eval/return_mean": ev})
    assert MetricsTable(tmp_path / "metrics.csv").last_value("eval/return_mean") == 230.0
    t.truncate_after(3)
    assert t.last_value("eval/return_mean") == 120.0
    assert math.isnan(t.last_value("no/such_column")) and math.isnan(MetricsTable(tmp_path / "none.csv").last_value("x"))


def test_a_metrics_table_is_rewritten_on_resume_only_when_it_must_be(tmp_path):
    import os

    from rlscale.tracking import MetricsTable

    path = tmp_path / "metrics.csv"
    t = MetricsTable(path)
    for i in (1, 2, 3):
        t.append({"iteration": i, "x": i / 2})
    os.utime(path, ns=(0, 0))
    MetricsTable(path).truncate_after(3)  # nothing past iteration 3: the file is left as it is
    assert path.stat().st_mtime_ns == 0
    path.write_text(path.read_text() + "4,2.")  # a row a stop cut short (no line end): not a row
    t = MetricsTable(path)
    t.truncate_after(4)
    t.append({"iteration": 4, "x": 2.25})
    assert path.read_text() == "iteration,x\n1,0.5\n2,1.0\n3,1.5\n4,2.25\n"


def test_a_trial_started_afresh_keeps_its_pending_record_while_it_runs(tmp_path, monkeypatch):
    """A fresh start clears a trial's directory (stale files of an earlier attempt) but keeps the
    sweep's pending trial.json until the trial's own record replaces it, so that an analysis run
    meanwhile sees the trial running, not absent (rlscale.analysis.pending_batch_sizes)."""
    from omegaconf import OmegaConf

    import rlscale.sweep as sweep_mod
    from rlscale.train import Run

    trials = [t for t in expand_grid(load_sweep_config(_protocol_sweep(tmp_path))) if t.trial_id.startswith("CartPole-v1_B64_")]
    trials = [dataclasses.replace(t, overrides=[*t.overrides, "total_env_steps=128", "tracking.wandb_mode=disabled"]) for t in trials]
    dirs = [tmp_path / "trials" / t.trial_id for t in trials]
    for t, d in zip(trials, dirs):
        d.mkdir(parents=True)
        (d / "stale.txt").write_text("an earlier attempt")
        (d / "trial.json").write_text(json.dumps(sweep_mod._trial_record(t, "pending")))
    seen = []
    record = Run.record

    def checking_record(self, *a, **kw):
        seen.append({json.loads((d / "trial.json").read_text())["status"] for d in dirs})
        assert not any((d / "stale.txt").exists() for d in dirs)
        return record(self, *a, **kw)

    monkeypatch.setattr(Run, "record", checking_record)
    base = OmegaConf.to_container(sweep_mod.load_yaml(trials[0].base_config))
    recs = sweep_mod.run_population(trials, base, [str(d) for d in dirs])
    assert seen and all(s == {"pending"} for s in seen)
    assert [r["status"] for r in recs] == ["completed"] * len(trials)
    assert {json.loads((d / "trial.json").read_text())["status"] for d in dirs} == {"completed"}
    # only the sweep asks for that: `rlscale train --overwrite` replaces the whole directory
    from rlscale.train import create_run_dir

    create_run_dir(dirs[0], overwrite=True)
    assert not any(dirs[0].iterdir())


def test_a_sweep_too_large_for_its_cluster_is_refused_before_any_trial_says_pending(ray_local, tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"""name: too_large
base_config: {ROOT / "configs" / "cartpole.yaml"}
overrides: {{workers.backend: ray, workers.num_workers: 8}}
envs: [{{id: CartPole-v1, targets: [100]}}]
env_steps_per_iteration: [256]
seeds: [1]
""")
    with pytest.raises(ConfigError, match="one trial needs 9 CPUs .* the cluster has 2"):
        run_sweep(sweep, [], tmp_path / "out", quiet=True)
    assert not list((tmp_path / "out").glob("trials/*/trial.json"))  # no cell left pending in an analysis
