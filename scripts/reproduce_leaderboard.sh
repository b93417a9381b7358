#!/usr/bin/env bash
# Regenerates leaderboard/LEADERBOARD.md exactly as committed: every predictor on kang2018, mcfaline23 and
# norman19 (each dataset's default split kind), in a fresh MLflow store, then `bench leaderboard`.
# Usage: bash scripts/reproduce_leaderboard.sh   (env: SEEDS, PREDICTORS, STORE to override)
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=${BENCH:-.venv/bin/bench}
SEEDS=${SEEDS:-0,1,2}
PREDICTORS=${PREDICTORS:-"no_change mean_shift linear cvae_modeB cvae_modeA"}
export MLFLOW_TRACKING_URI=${STORE:-sqlite:///leaderboard.db}
export PERTBENCH_CACHE_DIR=${PERTBENCH_CACHE_DIR:-.pertbench/models}
for dataset in kang2018 mcfaline23 norman19; do
  extra=""
  [ "$dataset" = norman19 ] && extra="additive"
  for predictor in $PREDICTORS $extra; do
    echo "== $predictor on $dataset (seeds $SEEDS)"
    "$BENCH" run --predictor "$predictor" --dataset "$dataset" --seeds "$SEEDS" --no-leaderboard
  done
done
"$BENCH" leaderboard --readme README.md
