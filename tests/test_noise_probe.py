"""`rlscale noise-probe` on a short CartPole run: rows, figure, bad input."""

import json

import pytest

from rlscale.cli import main
from tests.helpers import CARTPOLE

KEYS = {"iteration", "env_steps", "part", "reference_b_simple", "reference_b_simple_ci", "inloop_b_simple",
        "inloop_b_simple_random", "inloop_b_simple_env", "successive_batch_cosine"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("probe") / "run"
    assert main(["train", str(CARTPOLE), "workers.backend=local", "tracking.wandb_mode=disabled", "tracking.progress_bar=false",
                 "total_env_steps=2048", "checkpoint_interval=2", "checkpoint_keep=0", "--out", str(out)]) == 0
    return out


def test_probe_writes_rows_per_checkpoint_and_part_and_a_figure(run_dir, capsys):
    assert main(["noise-probe", str(run_dir), "--checkpoints", "2", "8", "--batches", "4", "--burn-in", "50"]) == 0
    rows = json.loads((run_dir / "noise_probe.json").read_text())
    assert [(r["iteration"], r["part"]) for r in rows] == [(i, p) for i in (2, 8) for p in ("policy", "value", "combined", "adam")]
    for r in rows:
        assert KEYS <= r.keys() and r["batches"] == 4 and r["env_steps_per_batch"] == 256
        assert r["inloop_b_simple"] == r["inloop_b_simple_env"]  # the run's own (default) mode is its headline
        assert r["envs_from_run"]  # a local run saves its envs: the probe continues them
        assert r["reference_trace_cov"] > 0
    assert (run_dir / "noise_probe.png").stat().st_size > 10_000
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(printed) == 8


@pytest.mark.parametrize("argv,fragment", [
    (["--checkpoints", "3"], "no checkpoint at iteration(s) [3]"),
    (["--batches", "2"], "--batches must be at least 3"),
    (["--env-steps", "0"], "must be a positive multiple"),
])
def test_probe_bad_input(run_dir, capsys, argv, fragment):
    assert main(["noise-probe", str(run_dir), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0]


def test_probe_of_a_non_run(tmp_path, capsys):
    assert main(["noise-probe", str(tmp_path)]) == 2
    assert "holds no rlscale run" in capsys.readouterr().err


def test_adam_part_is_the_combined_gradient_in_the_checkpoints_preconditioner(run_dir):
    """The reference's 'adam' gradient is the combined one times sqrt(P) for the checkpoint's
    Adam state, and the in-loop estimate measures every minibatch in that same P, although the
    lr-0 steps it takes move Adam's second moment (two minibatches here)."""
    import torch

    from rlscale import checkpoint
    from rlscale.actors import make_pool
    from rlscale.config import load_train_config
    from rlscale.noise_probe import batch_gradients, inloop_estimates, inloop_learner
    from rlscale.ppo import Learner
    from rlscale.rollout import FragmentBuffer
    from rlscale.train import fragment_lengths

    cfg = load_train_config(run_dir / "config.yaml", ["tracking.wandb_mode=disabled", "ppo.num_minibatches=2", "ppo.microbatch_size=32"])
    state = checkpoint.load(checkpoint.list_checkpoints(run_dir)[-1])["learner"]
    pool = make_pool(cfg)
    try:
        spec = pool.spec()
        learner = Learner(cfg, spec, torch.device("cpu"))
        learner.model.load_state_dict(state["model"])
        learner.optimizer.load_state_dict(state["optimizer"])
        buf = FragmentBuffer(cfg.ppo.gamma, cfg.ppo.gae_lambda)
        while len(buf) < 256:
            for frag in pool.sample(fragment_lengths(cfg, pool.envs_per_worker, 256), learner.get_weights(), state["version"]).fragments:
                buf.add(frag)
        batch = buf.take(256)
    finally:
        pool.close()
    p = learner._adam_preconditioner()
    flat = torch.cat([x.flatten() for x in p])
    g = batch_gradients(learner, batch, cfg.ppo.clip_coef, flat)
    assert torch.allclose(g["adam"], g["combined"] * flat.sqrt()) and not torch.allclose(g["adam"], g["combined"])

    inloop = inloop_learner(cfg, spec, state, "env", p)
    seen = []
    start = inloop.probe.start_minibatch

    def spy(*args):  # the P each minibatch is given (every one is measured here)
        seen.append(torch.cat([x.flatten() for x in args[4]()]))
        return start(*args)

    inloop.probe.start_minibatch = spy
    first = inloop_estimates(inloop, batch, state["version"])
    inloop_estimates(inloop, batch, state["version"])
    assert len(seen) == 4 and all(torch.equal(x, flat) for x in seen)  # 2 minibatches x 2 updates, all in the checkpoint's P
    assert all(x > 0 for x in first["adam"]) and first["adam"] != first["combined"]
    # the same learner without the fixed P: Adam's state (fresh, then moved by the lr-0 steps) sets it
    free = inloop_learner(cfg, spec, state, "env")
    inloop_estimates(free, batch, state["version"])
    moved = torch.cat([x.flatten() for x in free._adam_preconditioner()])
    assert not torch.allclose(moved, flat)
