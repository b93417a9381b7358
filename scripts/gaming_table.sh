#!/usr/bin/env bash
# The README's gaming-suite table: the three adversarial predictors beside mean_shift and no_change on kang2018
# holdout_context (seed 0), in a store of their own so they never reach the committed leaderboard; prints the
# kang2018 table of that store's leaderboard (every score, the mean oracle and the noise ceiling).
# Usage: bash scripts/gaming_table.sh     Env: STORE (default sqlite:///gaming.db)
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=${BENCH:-.venv/bin/bench}
export MLFLOW_TRACKING_URI=${STORE:-sqlite:///gaming.db}
for predictor in mean_shift no_change collapsed_mean inflated_variance wrong_context; do
  "$BENCH" run --predictor "$predictor" --dataset kang2018 --seed 0 --no-figures --no-leaderboard > /dev/null
done
"$BENCH" leaderboard --output .pertbench/GAMING.md --no-figures > /dev/null
sed -n '/^## kang2018 · holdout_context/,/^Normalized/p' .pertbench/GAMING.md
