"""Several Ray nodes on this machine (ray.cluster_utils.Cluster): actors spread, a node dies."""

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_actors_spread_and_survive_node_removal(tmp_path):
    script = Path(__file__).with_name("multinode_run.py")
    p = subprocess.run([sys.executable, str(script), str(tmp_path / "run")], capture_output=True, text=True, timeout=600,
                       cwd=Path(__file__).resolve().parents[1])
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    nodes, s = out["nodes"], out["summary"]
    assert len(set(nodes["before"])) == 2  # two actors on two different nodes
    assert s["iterations"] == 30 and s["env_steps_used"] == 3840  # the run finished
    assert s["worker_failures"] >= 1 and s["env_steps_discarded"] > 0
    assert nodes["removed"] not in nodes["after"] and len(nodes["after"]) == 2  # re-created elsewhere
