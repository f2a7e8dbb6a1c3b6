"""The study's sweep configs follow the protocol of docs/results/study.md, trial by trial.

The protocol points that loading a sweep does not already enforce are checked on the train
configs the sweep would run (`expand_grid` and `load_train_config`, as `rlscale sweep` builds
them), so a config that drifts from the protocol fails here before anything runs.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from rlscale.config import load_train_config, load_yaml
from rlscale.sweep import expand_grid, load_sweep_config

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL_SWEEPS = ["configs/sweeps/study.yaml", "configs/sweeps/study_a2c.yaml", "configs/sweeps/atari.yaml"]


@pytest.mark.parametrize("path", PROTOCOL_SWEEPS)
def test_a_study_sweep_follows_the_protocol(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the configs name their base configs relative to the repository
    cfg = load_sweep_config(path)
    assert len(cfg.seeds) >= 5 and not cfg.lr_rules  # point 5; point 2: a constant-lr grid only
    raw = {e["id"]: e for e in load_yaml(path)["envs"]}
    trials = expand_grid(cfg)
    for env in cfg.envs:
        # point 4: targets are fractions of the way from a measured random score (written out,
        # not the default 0) to a referenced one
        assert env.target_fractions and "random_score" in raw[env.id], env.id
        # point 2: a geometric lr grid, x2 apart, at least 4 values
        grid = env.lr_grid or cfg.lr_grid
        assert len(grid) >= 4 and all(math.isclose(b / a, 2.0) for a, b in zip(grid, grid[1:])), (env.id, grid)
        # point 1: B varies through the envs at a fixed fragment length (0 would make T = B / envs)
        assert (env.fragment_length or cfg.fragment_length) > 0, env.id
        eval_steps = env.eval_env_steps or cfg.eval_env_steps
        seen = {}
        for t in (t for t in trials if t.env_id == env.id and t.lr_rule == "grid"):
            key = (t.env_steps_per_iteration, t.lr)
            if key in seen:  # the seeds of a cell differ only in their seed
                continue
            c = seen[key] = load_train_config(t.base_config, t.overrides)
            # point 2: no lr or clip annealing tied to the budget
            assert not c.ppo.anneal_lr and not c.ppo.anneal_clip, t.trial_id
            # point 3: targets read from evaluations on separate envs, at the same env-step spacing at every B
            assert eval_steps > 0 and c.eval.interval == max(1, eval_steps // t.env_steps_per_iteration), t.trial_id
        assert {b for b, _ in seen} == set(env.env_steps_per_iteration or cfg.env_steps_per_iteration), env.id
        assert {lr for _, lr in seen} == set(grid), env.id
