"""The benchmark scripts run (in their --quick mode) and print the figures they promise.

They are measured by hand (README "Throughput"); this only keeps them from rotting: one JSON
object on stdout with the documented keys, positive rates, consistent ratios.
"""

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str) -> dict:
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / name), "--quick", *args],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


@pytest.mark.slow
def test_bench_rollout_quick_has_limit_trivial_and_cnn_figures():
    d = run_script("bench_rollout.py", "--skip-local")
    for key in ("limit_env_steps_per_s", "trivial_policy_env_steps_per_s", "cnn_policy_env_steps_per_s"):
        assert d[key] > 0, key
    pong = d["per_game"]["Pong"]
    r = d["rounds"][0]["Pong"]
    assert pong["trivial_to_limit_ratio"] == r["trivial_policy_env_steps_per_s"] / r["limit_env_steps_per_s"]
    assert r["ray_trivial"]["env_steps_per_round"] == 2 * 4 * 16  # 2 workers x 4 envs x T = 16
    for policy in ("trivial", "cnn"):  # pipelined rounds and limit-paired rounds (2 pairs in --quick)
        x = r[f"ray_{policy}"]
        assert x["pipelined_env_steps_per_s"] > 0
        assert len(x["paired_to_limit_ratio_pairs"]) == 2 and all(q > 0 for q in x["paired_to_limit_ratio_pairs"])
        assert pong[f"{policy}_paired_to_limit_ratio"] == x["paired_to_limit_ratio"]


@pytest.mark.slow
def test_bench_learner_quick_reports_working_memory_per_batch_size():
    d = run_script("bench_learner.py")
    sizes = [s for s in d["sizes"] if "skipped" not in s]
    assert [s["log2"] for s in sizes] == [10, 11, 12]
    for s in sizes:
        assert s["samples_per_s"] > 0 and s["working_bytes"] > 0
        # frame stacks: about one 84x84 frame per env step, not four
        assert s["obs_bytes"] < 1.1 * s["env_steps_per_iteration"] * 84 * 84
    assert "working_growth_pct" in d


@pytest.mark.slow
def test_bench_learner_page_faults_reports_faults_per_update_per_heap_setting():
    # Moved here from tests/test_ppo.py (test_cpu_learner_reuses_freed_heap_memory). Measured
    # on a 2-core glibc machine, fewest faults of a settled update: learner's heap settings 0-1,
    # glibc's defaults 7,000-17,300, a user's MALLOC_TRIM_THRESHOLD_=131072 about 49,000.
    d = run_script("bench_learner.py", "--page-faults")
    modes = ("heap_settings", "glibc_default", "user_trim_threshold")
    for mode in modes:
        n = d[f"page_faults_per_update_{mode}"]
        assert isinstance(n, int) and not isinstance(n, bool) and n >= 0, (mode, n)
        assert n == min(d["children"][mode]["page_faults_per_update"])
    if platform.libc_ver()[0] == "glibc":
        ch = d["children"]
        assert ch["heap_settings"]["heap_settings_applied"]
        assert not ch["glibc_default"]["heap_settings_applied"]
        assert not ch["user_trim_threshold"]["heap_settings_applied"]  # the user's setting wins
        assert ch["user_trim_threshold"]["malloc_env"] == {"MALLOC_TRIM_THRESHOLD_": "131072"}
        assert d["page_faults_per_update_heap_settings"] < d["page_faults_per_update_glibc_default"]


@pytest.mark.slow
def test_bench_population_quick_reports_both_ways_per_population_size():
    d = run_script("bench_population.py")
    assert [r["members"] for r in d["records"]] == [1, 2]
    for r in d["records"]:
        assert r["env_id"] == "CartPole-v1" and r["population_trials_per_hour"] > 0 and r["separate_trials_per_hour"] > 0
        assert r["speedup"] == pytest.approx(r["separate_wall_s"] / r["population_wall_s"])
        assert r["population_trials_per_hour"] == pytest.approx(3600 * r["members"] / r["population_wall_s"])
        assert r["population_update_s"] > 0 and r["population_peak_rss_mb"] > 0
    assert "population_rss_mb_per_added_member" in d["records"][1]
