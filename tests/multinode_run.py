"""Run by tests/test_multinode.py in its own process: a 3-node Ray test cluster on this machine.

Prints one JSON line: the nodes the rollout actors landed on before and after a worker node is
removed mid-run, and the run's summary.
"""

import json
import os
import sys
import threading
import time
from pathlib import Path

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # every node on loopback

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from rlscale.config import load_train_config  # noqa: E402
from rlscale.train import train  # noqa: E402


def main(out: Path) -> None:
    import socket

    with socket.socket() as sock:  # a free loopback port for this cluster's dashboard (state API)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": port})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    try:
        ray.init(address=cluster.address)
        cfg = load_train_config(Path(__file__).resolve().parents[1] / "configs" / "cartpole.yaml", [
            "workers.backend=ray", "workers.num_workers=2", "workers.num_envs_per_worker=2",
            "ppo.env_steps_per_iteration=128", "ppo.epochs=2", "ppo.microbatch_size=64",
            "total_env_steps=3840", "workers.max_restarts=4",
            "tracking.wandb_mode=disabled", "tracking.progress_bar=false",
        ])
        seen = {}

        def watch():
            # Once training is under way, note where the actors are, then remove a node they use.
            import pandas as pd

            while not (out / "metrics.csv").exists() or len(pd.read_csv(out / "metrics.csv")) < 5:
                time.sleep(0.2)
            from ray.util.state import list_actors

            alive = [a for a in list_actors(filters=[("class_name", "=", "RolloutWorker"), ("state", "=", "ALIVE")])]
            seen["before"] = sorted(a.node_id for a in alive)
            victim = next(n for n in nodes if n.node_id in seen["before"])
            seen["removed"] = victim.node_id
            cluster.remove_node(victim)
            deadline = time.time() + 120
            while time.time() < deadline:  # the pool re-creates the lost actor on a live node
                alive = [a for a in list_actors(filters=[("class_name", "=", "RolloutWorker"), ("state", "=", "ALIVE")])]
                if len(alive) == 2 and victim.node_id not in [a.node_id for a in alive]:
                    seen["after"] = sorted(a.node_id for a in alive)
                    return
                time.sleep(0.2)

        def guarded():
            try:
                watch()
            except Exception as e:  # reported in the JSON rather than lost in the thread
                seen["error"] = repr(e)

        t = threading.Thread(target=guarded, daemon=True)
        t.start()
        summary = train(cfg, out, init_ray=False, quiet=True)
        t.join(timeout=60)
        print(json.dumps({"nodes": seen, "summary": summary}))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
