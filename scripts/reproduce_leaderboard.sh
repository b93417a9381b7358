#!/usr/bin/env bash
# Regenerates leaderboard/LEADERBOARD.md and the README's results block exactly as committed: every predictor on
# kang2018, kang2018_counts, mcfaline23 and norman19 (each dataset's default split kind), in one MLflow store, then
# `bench leaderboard --output leaderboard/LEADERBOARD.md --readme README.md` (the only writer of the committed board).
# Composite figures use the PCA panel (--embedding pca): a UMAP panel costs ~13 s per target, which would make
# the UMAP share most of the hours this script takes. Usage: bash scripts/reproduce_leaderboard.sh
# Env: PREDICTORS, DATASETS, SEEDS (default 0,1,2), STORE (MLflow URI, default sqlite:///leaderboard.db),
#      LEADERBOARD=0 to only add runs to the store (e.g. one dataset at a time) without regenerating.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=${BENCH:-.venv/bin/bench}
SEEDS=${SEEDS:-0,1,2}
DEFAULT_PREDICTORS="no_change mean_shift linear linear_cv cvae_modeB cvae_modeA"
PREDICTORS=${PREDICTORS:-$DEFAULT_PREDICTORS}
DATASETS=${DATASETS:-"kang2018 kang2018_counts mcfaline23 norman19"}
export MLFLOW_TRACKING_URI=${STORE:-sqlite:///leaderboard.db}
export PERTBENCH_CACHE_DIR=${PERTBENCH_CACHE_DIR:-.pertbench/models}
for dataset in $DATASETS; do
  extra=""
  # the combination baseline (it declines single perturbations), with the default predictor list
  [ "$dataset" = norman19 ] && [ "$PREDICTORS" = "$DEFAULT_PREDICTORS" ] && extra="additive"
  for predictor in $PREDICTORS $extra; do
    echo "== $predictor on $dataset (seeds $SEEDS)"
    "$BENCH" run --predictor "$predictor" --dataset "$dataset" --seeds "$SEEDS" --embedding pca --no-leaderboard
  done
done
if [ "${LEADERBOARD:-1}" != 0 ]; then
  "$BENCH" leaderboard --output leaderboard/LEADERBOARD.md --readme README.md
fi
