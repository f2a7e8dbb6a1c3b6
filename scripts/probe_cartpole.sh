#!/usr/bin/env bash
# The noise-scale reference on CartPole: 3 seeds of configs/cartpole.yaml (local backend, every
# 50th checkpoint kept), each probed at 4 checkpoints along the learning curve with 100
# independent batches. Output: OUT/s<seed>/noise_probe.json and .png (OUT defaults to runs/probe_cartpole).
set -euo pipefail
OUT=${1:-runs/probe_cartpole}
for s in 1 2 3; do
  if [ ! -f "$OUT/s$s/summary.json" ]; then
    python3 -m rlscale train configs/cartpole.yaml seed=$s workers.backend=local tracking.wandb_mode=disabled \
      tracking.progress_bar=false checkpoint_interval=50 checkpoint_keep=0 --out "$OUT/s$s" --overwrite
  fi
  [ -f "$OUT/s$s/noise_probe.json" ] || python3 -m rlscale noise-probe "$OUT/s$s" --checkpoints 50 100 200 350 --batches 100
done
