"""The study's sweep configs follow the protocol of docs/results/study.md, trial by trial.

Each protocol point is checked on the train configs the sweep would run (`expand_grid` and
`load_train_config`, as `rlscale sweep` builds them), so a config that drifts from the protocol
fails here before anything runs.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from rlscale.config import load_train_config
from rlscale.sweep import expand_grid, load_sweep_config

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL_SWEEPS = ["configs/sweeps/study.yaml", "configs/sweeps/study_a2c.yaml", "configs/sweeps/atari.yaml"]


@pytest.mark.parametrize("path", PROTOCOL_SWEEPS)
def test_a_study_sweep_follows_the_protocol(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the configs name their base configs relative to the repository
    cfg = load_sweep_config(path)
    assert len(cfg.seeds) >= 5 and not cfg.lr_rules  # point 5; point 2: a constant-lr grid only
    trials = expand_grid(cfg)
    for env in cfg.envs:
        # point 4: targets fixed in advance as fractions of a referenced score, with its source
        assert env.target_fractions and env.reference_score is not None and env.reference_source.strip(), env.id
        # point 2: a geometric lr grid, x2 apart, at least 4 values
        grid = env.lr_grid or cfg.lr_grid
        assert len(grid) >= 4 and all(math.isclose(b / a, 2.0) for a, b in zip(grid, grid[1:])), (env.id, grid)
        fragment = env.fragment_length or cfg.fragment_length
        assert fragment > 0, env.id
        seen = {}
        for t in (t for t in trials if t.env_id == env.id and t.lr_rule == "grid"):
            key = (t.env_steps_per_iteration, t.lr)
            if key in seen:  # the seeds of a cell differ only in their seed
                continue
            c = seen[key] = load_train_config(t.base_config, t.overrides)
            # point 2: no lr or clip annealing tied to the budget
            assert not c.ppo.anneal_lr and not c.ppo.anneal_clip, t.trial_id
            # point 1: B varies through the envs at a fixed fragment length T
            assert c.workers.fragment_length == fragment, t.trial_id
            assert fragment * c.workers.num_envs_per_worker * c.workers.num_workers == c.ppo.env_steps_per_iteration, t.trial_id
            # point 3: targets read from periodic evaluations on separate envs
            assert c.eval.interval >= 1 and c.eval.episodes >= 1, t.trial_id
        assert {b for b, _ in seen} == set(env.env_steps_per_iteration or cfg.env_steps_per_iteration), env.id
        assert {lr for _, lr in seen} == set(grid), env.id
