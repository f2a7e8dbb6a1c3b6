#!/usr/bin/env bash
# Reference runs of the family default configs (configs/minatar.yaml on the five MinAtar games for
# 2M env steps, configs/box2d.yaml as it is), evaluated every 65536 env steps, then their curves
# against the study's random and reference scores (docs/results/reference_runs.md).
#   bash scripts/reference_runs.sh [OUT_DIR]        # default runs/reference
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/reference}
common=(torch_threads=1 tracking.wandb_mode=disabled tracking.progress_bar=false eval.env_steps=65536)
for game in Asterix Breakout Freeway Seaquest SpaceInvaders; do
  rlscale train configs/minatar.yaml env.id=MinAtar/$game-v1 total_env_steps=2000000 "${common[@]}" --out "$out/MinAtar-$game-v1"
done
rlscale train configs/box2d.yaml "${common[@]}" --out "$out/LunarLander-v3"
python scripts/reference_curves.py "$out"/MinAtar-{Asterix,Breakout,Freeway,Seaquest,SpaceInvaders}-v1 "$out/LunarLander-v3" \
  --sweep configs/sweeps/study.yaml --out "$out/curves.png"
