#!/usr/bin/env bash
# Regenerates leaderboard/LEADERBOARD.md and docs/results.md's results block exactly as committed, by running the sweep
# file leaderboard/sweep.toml (every predictor on kang2018, kang2018_counts, mcfaline23 and norman19, seeds 0,1,2,
# PCA panels; see that file), then the leaderboard once (`bench leaderboard --output leaderboard/LEADERBOARD.md
# --readme docs/results.md`, the only writer of the committed board). Usage: bash scripts/reproduce_leaderboard.sh
# The scgen block needs the `scgen` extra (pertpy): `make leaderboard` installs it.
# Env: EXECUTOR (serial, default, or ray), RAY_ADDRESS (a Ray cluster to join; default a local instance),
#      STORE (MLflow URI, default sqlite:///leaderboard.db), LEADERBOARD=0 to only add runs to the store,
#      PREDICTORS, DATASETS, SEEDS (default 0,1,2) to run part of the grid (e.g. one dataset at a time).
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=${BENCH:-.venv/bin/bench}
export PERTBENCH_CACHE_DIR=${PERTBENCH_CACHE_DIR:-.pertbench/models}
SWEEP=leaderboard/sweep.toml
if [ -n "${PREDICTORS:-}${DATASETS:-}${SEEDS:-}" ]; then  # part of the grid: the same settings, a smaller grid
  DEFAULT_PREDICTORS="no_change mean_shift linear linear_cv cvae_modeB cvae_modeA cvae_mlp_modeB cvae_mlp_modeA"
  PREDICTORS=${PREDICTORS:-$DEFAULT_PREDICTORS}
  DATASETS=${DATASETS:-"kang2018 kang2018_counts mcfaline23 norman19"}
  quoted() { printf '"%s", ' $1 | sed 's/, $//'; }
  SWEEP=$(mktemp -t leaderboard-sweep-XXXXXX.toml)
  trap 'rm -f "$SWEEP"' EXIT
  {
    sed -n '/^\[settings\]/,/^$/p' leaderboard/sweep.toml | sed "s/^seeds = .*/seeds = [${SEEDS:-0,1,2}]/"
    printf '[[grid]]\npredictors = [%s]\ndatasets = [%s]\n' "$(quoted "$PREDICTORS")" "$(quoted "$DATASETS")"
    # the combination baseline, with the default predictor list, where norman19 is run
    if [ "$PREDICTORS" = "$DEFAULT_PREDICTORS" ] && [[ " $DATASETS " == *" norman19 "* ]]; then
      printf '\n[[grid]]\npredictors = ["additive"]\ndatasets = ["norman19"]\n'
    fi
  } >"$SWEEP"
fi
args=(sweep "$SWEEP" --executor "${EXECUTOR:-serial}" --tracking-uri "${STORE:-sqlite:///leaderboard.db}")
[ -n "${RAY_ADDRESS:-}" ] && args+=(--address "$RAY_ADDRESS")
[ "${LEADERBOARD:-1}" = 0 ] && args+=(--no-leaderboard)
"$BENCH" "${args[@]}"
