"""The reduced CartPole study of CI: sweep on a real local Ray, analysis, report, resumption."""

import json
import math
from html.parser import HTMLParser

import pytest

from rlscale.analysis import analyze
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
    out = tmp_path / "sweep"
    r = run_sweep(CI_SWEEP, [], out, quiet=True)
    assert r["trials"] == r["ran"] == r["completed"] == 8 and r["failed"] == 0
    rec = json.loads((out / "trials" / "CartPole-v1_B128_sqrt_s1" / "trial.json").read_text())
    assert rec["status"] == "completed" and rec["targets"]["100.0"]["reached"]
    t100 = rec["targets"]["100.0"]
    assert t100["env_steps"] == 128 * t100["iterations"] and t100["b_simple"] > 0 and t100["b_simple_ci"][0] <= t100["b_simple"]
    assert (out / "wandb_sweep_CartPole-v1.yaml").is_file()

    result = analyze(out, wandb_mode="offline")
    good = [e for e in result["entries"] if e["b_crit"] and e["b_simple"]]
    assert good, result["entries"]
    assert all(math.isfinite(e["b_crit"]) and e["b_crit"] > 0 and e["b_simple"] > 0 for e in good)
    html = (out / "report.html").read_text()
    p = _Html()
    p.feed(html)
    assert len(p.imgs) >= 4 and all(s.startswith("data:image/png;base64,") for s in p.imgs)
    for png in (out / "figures").glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Rerunning the same command keeps the finished trials.
    again = run_sweep(CI_SWEEP, [], out, quiet=True)
    assert again["ran"] == 0 and again["skipped_completed"] == 8

    # An interrupted trial (pending with a checkpoint) is resumed, not restarted.
    tdir = out / "trials" / "CartPole-v1_B512_sqrt_s2"
    rec = json.loads((tdir / "trial.json").read_text())
    rec["status"] = "pending"
    (tdir / "trial.json").write_text(json.dumps(rec))
    again = run_sweep(CI_SWEEP, [], out, quiet=True)
    assert again["ran"] == 1 and again["completed"] == 1


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
