"""Faults: dying rollout actors, the failure tolerance, SIGKILLed learner and resume."""

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from rlscale.actors import WorkerFailure
from rlscale.train import train
from tests.helpers import ROOT, cfg_for

CP = str(ROOT / "configs" / "cartpole.yaml")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["exit", "raise"])
def test_dead_actors_are_replaced_and_lost_steps_accounted(ray_local, tmp_path, monkeypatch, mode):
    monkeypatch.setenv("RLSCALE_FAIL_AFTER_SAMPLES", "3")
    monkeypatch.setenv("RLSCALE_FAIL_MODE", mode)
    cfg = cfg_for("workers.backend=ray", "workers.num_workers=2", "workers.num_envs_per_worker=2",
                  "ppo.env_steps_per_iteration=128", "ppo.epochs=1", "ppo.microbatch_size=64",
                  "total_env_steps=1280", "workers.max_restarts=20")
    s = train(cfg, tmp_path / "run", init_ray=False, quiet=True)
    assert s["iterations"] == 10 and s["env_steps_used"] == 1280
    assert s["worker_failures"] >= 2 and s["env_steps_discarded"] > 0
    # Nothing unaccounted: collected = used + discarded + still buffered.
    assert s["env_steps_collected"] == s["env_steps_used"] + s["env_steps_discarded"] + (s["env_steps"] - s["env_steps_used"])
    m = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert m["env_steps_discarded"].iloc[-1] == s["env_steps_discarded"]


@pytest.mark.slow
def test_too_many_failures_stop_with_error_and_checkpoint(ray_local, tmp_path, monkeypatch):
    monkeypatch.setenv("RLSCALE_FAIL_AFTER_SAMPLES", "2")
    cfg = cfg_for("workers.backend=ray", "workers.num_workers=2", "workers.num_envs_per_worker=2",
                  "ppo.env_steps_per_iteration=128", "ppo.epochs=1", "ppo.microbatch_size=64",
                  "total_env_steps=5120", "workers.max_restarts=1")
    with pytest.raises(WorkerFailure, match="more than workers.max_restarts=1"):
        train(cfg, tmp_path / "run", init_ray=False, quiet=True)
    assert list((tmp_path / "run" / "checkpoints").glob("ckpt_*.pt"))


def _metrics(run):
    m = pd.read_csv(run / "metrics.csv")
    return m[[c for c in m.columns if not c.startswith("time/") and c not in ("wall_time_s", "charts/SPS")]]


@pytest.mark.slow
def test_sigkilled_learner_resumes_with_same_counters(tmp_path):
    run = tmp_path / "run"
    args = [CP, "workers.backend=local", "tracking.wandb_mode=disabled", "tracking.progress_bar=false",
            "total_env_steps=12800", "checkpoint_interval=5"]
    p = subprocess.Popen([sys.executable, "-m", "rlscale", "train", *args, "--out", str(run)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ck = run / "checkpoints"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list(ck.glob("ckpt_*.pt"))) < 2:
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not (run / "summary.json").exists()
    r = subprocess.run([sys.executable, "-m", "rlscale", "train", "--resume", str(run)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed from" in r.stderr
    m = _metrics(run)
    assert m["iteration"].tolist() == list(range(1, 51))  # none missing, none duplicated
    assert m["env_steps_used"].tolist() == [256 * i for i in range(1, 51)]
    assert m["optimizer_steps"].is_monotonic_increasing
    # In local mode on CPU the resumed run equals an uninterrupted one, number for number.
    ref = tmp_path / "ref"
    assert subprocess.run([sys.executable, "-m", "rlscale", "train", *args, "--out", str(ref)], capture_output=True).returncode == 0
    pd.testing.assert_frame_equal(m, _metrics(ref))
