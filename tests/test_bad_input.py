"""Bad input: each case gives one clear line on stderr, exit code 2, and nothing half-written."""

import os

import pytest

from rlscale.cli import main
from tests.helpers import ROOT

CP = str(ROOT / "configs" / "cartpole.yaml")
FAST = ["tracking.wandb_mode=disabled", "tracking.progress_bar=false", "workers.backend=local", "total_env_steps=256"]


def run_cli(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


CASES = [
    # (id, argv after 'train', expected fragment of the message)
    ("unknown key with suggestion", [CP, "ppo.lrr=0.1"], "unknown config key 'ppo.lrr'; did you mean 'ppo.lr'?"),
    ("unknown top-level key", [CP, "sed=3"], "did you mean 'seed'?"),
    ("unknown section", [CP, "enviroment.id=CartPole-v1"], "unknown config key"),
    ("wrong type", [CP, "ppo.epochs=many"], "invalid value for 'ppo.epochs'"),
    ("wrong type bool", [CP, "ppo.anneal_lr=perhaps"], "invalid value for 'ppo.anneal_lr'"),
    ("zero batch", [CP, "ppo.env_steps_per_iteration=0"], "ppo.env_steps_per_iteration must be positive"),
    ("negative total", [CP, "total_env_steps=-5"], "total_env_steps must be positive"),
    ("zero microbatch", [CP, "ppo.microbatch_size=0"], "ppo.microbatch_size must be positive"),
    ("negative workers", [CP, "workers.num_workers=-1"], "workers.num_workers must be >= 0"),
    ("zero envs", [CP, "workers.num_envs_per_worker=0"], "workers.num_envs_per_worker must be positive"),
    ("minibatch does not divide", [CP, "ppo.env_steps_per_iteration=100", "ppo.num_minibatches=3"], "does not divide"),
    ("unknown env with suggestion", [CP, "env.id=CartPol-v1"], "did you mean CartPole-v1"),
    ("unknown atari game", [CP, "env.id=ALE/Breakot-v5"], "did you mean ALE/Breakout-v5"),
    ("continuous actions", [CP, "env.id=Pendulum-v1"], "continuous actions"),
    ("cuda absent", [CP, "device=cuda"], "CUDA is not available"),
    ("bad device", [CP, "device=tpu"], "device must be"),
    ("bad backend", [CP, "workers.backend=spark"], "workers.backend must be one of 'ray', 'local', got 'spark'"),
    ("bad lr rule", [CP, "ppo.lr_rule=cubic"], "ppo.lr_rule must be"),
    ("bad precision", [CP, "model.precision=fp16"], "model.precision must be one of 'fp32', 'bf16', got 'fp16'"),
    ("bad encoder", [CP, "model.encoder=resnet"], "model.encoder must be 'auto' or one of mlp, nature_cnn"),
    ("nan learning rate", [CP, "ppo.lr=nan"], "ppo.lr must be a finite number, got nan"),
    ("inf target", [CP, "targets=[100, .inf]"], "targets must be a finite number, got inf"),
    ("nan in a nested float", [CP, "noise.ema_beta=nan"], "noise.ema_beta must be a finite number"),
    ("negative entropy coef", [CP, "ppo.ent_coef=-0.1"], "ppo.ent_coef must be >= 0"),
    ("zero clip", [CP, "ppo.clip_coef=0"], "ppo.clip_coef must be positive"),
    ("sticky actions out of range", [CP, "env.repeat_action_probability=1.5"], "env.repeat_action_probability must lie in [0.0, 1.0]"),
    ("negative seed", [CP, "seed=-1"], "seed must be >= 0"),
    ("negative evaluation cut", [CP, "eval.max_episode_steps=-5"], "eval.max_episode_steps must be >= 0 (0 = no cut)"),
    ("zero target_kl", [CP, "ppo.target_kl=0"], "ppo.target_kl must be positive"),
    ("bad batch schedule", [CP, "ppo.batch_schedule=adaptive"], "ppo.batch_schedule must be one of 'fixed'"),
    ("bad noise epochs", [CP, "noise.epochs=last"], "noise.epochs must be"),
    ("bad microbatch mode", [CP, "noise.microbatch_mode=time"], "noise.microbatch_mode must be"),
    ("bad wandb mode", [CP, "tracking.wandb_mode=cloud"], "tracking.wandb_mode must be"),
    ("gamma out of range", [CP, "ppo.gamma=1.5"], "ppo.gamma and ppo.gae_lambda must lie in [0, 1]"),
    ("override without equals", [CP, "seed"], "is not KEY=VALUE"),
    ("missing config file", ["configs/nope.yaml"], "config file 'configs/nope.yaml' not found"),
    ("no config", [], "no config given"),
]


@pytest.mark.parametrize("argv,fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_train_input(capsys, tmp_path, argv, fragment):
    out = tmp_path / "run"
    args = [argv[0], *FAST, *argv[1:]] if argv else []  # the case's own overrides come last and win
    code, err = run_cli(capsys, "train", *args, "--out", str(out))
    assert code == 2
    assert len(err) == 1 and err[0].startswith("rlscale: error: ") and fragment in err[0], err
    assert not out.exists()  # nothing half-written


def test_invalid_yaml(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ppo: [unclosed\n")
    code, err = run_cli(capsys, "train", str(bad), "--out", str(tmp_path / "run"))
    assert code == 2 and "is not valid YAML" in err[0] and len(err) == 1


def test_yaml_not_a_mapping(capsys, tmp_path):
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    code, err = run_cli(capsys, "train", str(bad))
    assert code == 2 and "must hold a mapping" in err[0]


def test_existing_run_dir_needs_resume_or_overwrite(capsys, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    code, err = run_cli(capsys, "train", CP, *FAST, "--out", str(out))
    assert code == 2 and "pass --resume to continue it or --overwrite" in err[0]
    assert (out / "keep.txt").read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_out_dir(capsys, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    code, err = run_cli(capsys, "train", CP, *FAST, "--out", str(ro / "run"))
    assert code == 2 and "choose a writable --out" in err[0]


def test_out_dir_under_a_file(capsys, tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    code, err = run_cli(capsys, "train", CP, *FAST, "--out", str(f / "run"))
    assert code == 2 and "choose a writable --out" in err[0]


def test_resume_of_a_non_run(capsys, tmp_path):
    code, err = run_cli(capsys, "train", "--resume", str(tmp_path))
    assert code == 2 and "holds no rlscale run" in err[0]


def _short_run(tmp_path, *extra):
    out = tmp_path / "run"
    assert main(["train", CP, *FAST, "total_env_steps=1024", "checkpoint_interval=2", *extra, "--out", str(out)]) == 0
    return out


def test_corrupt_checkpoint_falls_back_and_all_corrupt_is_an_error(capsys, tmp_path):
    out = _short_run(tmp_path)
    ckpts = sorted((out / "checkpoints").glob("ckpt_*.pt"))
    assert len(ckpts) == 2  # iterations 2 and 4 (keep 3)
    data = ckpts[-1].read_bytes()
    ckpts[-1].write_bytes(data[: len(data) // 2])  # truncated
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "total_env_steps=1280"]) == 0
    err = capsys.readouterr().err
    assert f"checkpoint '{ckpts[-1]}' is corrupt or truncated" in err and "resumed from" in err
    for p in (out / "checkpoints").glob("ckpt_*.pt"):
        p.write_bytes(b"garbage")
    code, err = run_cli(capsys, "train", "--resume", str(out))
    assert code == 2 and "no valid checkpoint" in err[-1]


def test_checkpoint_of_another_model(capsys, tmp_path):
    out = _short_run(tmp_path)
    capsys.readouterr()
    code, err = run_cli(capsys, "train", "--resume", str(out), "model.hidden_sizes=[32]")
    assert code == 2 and "cannot change model.hidden_sizes on resume (the run has [64, 64], asked [32])" in err[-1]


def test_checkpoint_of_another_env(capsys, tmp_path):
    out = _short_run(tmp_path)
    capsys.readouterr()
    before = (out / "config.yaml").read_text()
    code, err = run_cli(capsys, "train", "--resume", str(out), "env.id=Acrobot-v1")
    assert code == 2 and "cannot change env.id on resume (the run has 'CartPole-v1', asked 'Acrobot-v1')" in err[-1]
    assert (out / "config.yaml").read_text() == before  # refused before anything was written


def test_resume_honours_overrides_and_records_them(capsys, tmp_path):
    # An override given with --resume is used (here a new batch size) and written to config.yaml;
    # the config the run had before is kept beside it.
    import pandas as pd
    import yaml

    out = _short_run(tmp_path)
    before = (out / "config.yaml").read_text()
    assert main(["train", "--resume", str(out), "total_env_steps=1536", "ppo.env_steps_per_iteration=128"]) == 0
    m = pd.read_csv(out / "metrics.csv")
    assert m["env_steps_per_iteration"].tolist() == [256] * 4 + [128] * 4
    assert m["env_steps_used"].iloc[-1] == 1536
    now = yaml.safe_load((out / "config.yaml").read_text())
    assert now["ppo"]["env_steps_per_iteration"] == 128 and now["total_env_steps"] == 1536
    assert (out / "config.before_resume_00000004.yaml").read_text() == before


SWEEP_CASES = [
    # (id, sweep file text, expected fragment of the message)
    ("malformed", "name: x\nenvs: 3\n", "invalid value"),
    ("unknown key", "name: x\nseedz: [1]\nenvs: [{id: CartPole-v1, targets: [100]}]\n", "did you mean 'seeds'?"),
    ("empty grid", f"name: x\nbase_config: {CP}\nenvs: [{{id: CartPole-v1, targets: [100]}}]\nseeds: []\n", "empty grid"),
    ("env without targets", f"name: x\nbase_config: {CP}\nenvs: [{{id: CartPole-v1}}]\n", "has no targets"),
    ("bad trial override", f"name: x\nbase_config: {CP}\nenvs: [{{id: CartPol-v1, targets: [100]}}]\n", "did you mean CartPole-v1"),
    ("bad lr rule", f"name: x\nbase_config: {CP}\nenvs: [{{id: CartPole-v1, targets: [100]}}]\nlr_rules: [cubic]\n", "lr_rules[0] must be one of 'fixed', 'linear', 'sqrt', 'noise', got 'cubic'"),
    ("missing base config", "name: x\nbase_config: nope.yaml\nenvs: [{id: CartPole-v1, targets: [100]}]\n", "config file 'nope.yaml' not found"),
]


@pytest.mark.parametrize("text,fragment", [c[1:] for c in SWEEP_CASES], ids=[c[0] for c in SWEEP_CASES])
def test_bad_sweep_input(capsys, tmp_path, text, fragment):
    bad = tmp_path / "sweep.yaml"
    bad.write_text(text)
    code, err = run_cli(capsys, "sweep", str(bad), "--out", str(tmp_path / "sw"))
    assert code == 2 and len(err) == 1 and fragment in err[0], err
    assert not (tmp_path / "sw").exists()  # nothing half-written


@pytest.mark.slow
def test_unreachable_ray_address(tmp_path):
    # A fresh process: this test session's own local Ray must not answer for the address.
    import subprocess
    import sys
    import time

    t = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "rlscale", "train", CP, "tracking.wandb_mode=disabled", "workers.backend=ray",
                        "workers.address=127.0.0.1:1", "--out", str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "RAY_ADDRESS": ""})
    assert p.returncode == 2, p.stderr[-2000:]
    last = p.stderr.strip().splitlines()[-1]
    assert "cannot reach a Ray cluster at '127.0.0.1:1'" in last
    assert time.monotonic() - t < 120
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_more_rollout_workers_than_the_cluster_has_cpus_is_refused(ray_local, capsys, tmp_path):
    out = tmp_path / "run"
    code, err = run_cli(capsys, "train", CP, "tracking.wandb_mode=disabled", "tracking.progress_bar=false",
                        "workers.backend=ray", "workers.num_workers=500", "--out", str(out))
    assert code == 2 and len(err) == 1
    assert "500 rollout workers x 1 CPUs need 500 CPUs but the Ray cluster has 2" in err[0]
    assert not out.exists()


@pytest.mark.slow
def test_rollout_workers_that_cannot_start_in_time_fail_with_the_numbers(ray_local, capsys, tmp_path):
    # The cluster has the CPUs, but another job holds them: the wait is bounded.
    from ray.util.placement_group import placement_group, remove_placement_group

    pg = placement_group([{"CPU": 2}])
    ray_local.get(pg.ready(), timeout=60)
    try:
        out = tmp_path / "run"
        code, err = run_cli(capsys, "train", CP, "tracking.wandb_mode=disabled", "tracking.progress_bar=false",
                            "workers.backend=ray", "workers.num_workers=1", "workers.start_timeout_s=3", "--out", str(out))
    finally:
        remove_placement_group(pg)
    assert code == 2 and "only 0 of 1 rollout workers started within workers.start_timeout_s=3 s" in err[-1]
    assert not out.exists()
