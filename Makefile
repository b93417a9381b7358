# Set-up and the two entry points the README documents: `make run` and `make test`.
VENV ?= .venv
PYTHON ?= python3
PREDICTOR ?= cvae_modeB
DATASET ?= kang2018
# `make leaderboard` runs leaderboard/sweep.toml serially; EXECUTOR=ray runs its tasks on a local Ray instance.
EXECUTOR ?= serial
# `make run` (like any `bench run` or plain `bench leaderboard`) writes the local store's leaderboard to
# .pertbench/LEADERBOARD.md, out of git; only `make leaderboard` writes the committed leaderboard/LEADERBOARD.md.
BIN := $(VENV)/bin
# Real data sit beside the project in ../shared/data when present; otherwise the loader's own default applies.
SHARED_DATA := $(abspath ../shared/data)
ifneq ($(wildcard $(SHARED_DATA)),)
export PERTBENCH_DATA_DIR ?= $(SHARED_DATA)
endif

.PHONY: setup run test test-peers peers lint docs bench bench-scale leaderboard cvae-defaults

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	scripts/install_torch.sh $(BIN) constraints.txt
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,ray]'
	touch $@

# bench's default data folder (the per-user cache), where a fresh shell without PERTBENCH_DATA_DIR looks: the shared
# data files are linked into it, never over a file already there (the checksum is verified on every load anyway).
DATA_CACHE := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/pertbench/data

setup: $(BIN)/.installed
	@if [ -d "$(SHARED_DATA)" ]; then \
	  mkdir -p "$(DATA_CACHE)"; \
	  for f in "$(SHARED_DATA)"/*.h5ad; do \
	    [ -e "$$f" ] && [ ! -e "$(DATA_CACHE)/$$(basename "$$f")" ] && ln -s "$$f" "$(DATA_CACHE)/" || true; \
	  done; \
	fi

run: setup
	@$(BIN)/python -c "import torch; print('torch', torch.__version__, '(CUDA ' + torch.version.cuda + ')' if torch.version.cuda else '(CPU build)')"
	$(BIN)/bench run --predictor $(PREDICTOR) --dataset $(DATASET)

test: setup
	$(BIN)/python -m pytest -m 'not integration'
	$(BIN)/python -m pytest -m integration

# The published models in their own pinned environments (envs/): build them, then run their tests (minutes each).
PEERS ?= biolord
peers: setup
	for env in $(PEERS); do $(BIN)/bench env build $$env || exit 1; done

test-peers: peers
	$(BIN)/python -m pytest -m peers

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The documentation site (docs/, mkdocs-material) into site/; --strict turns every warning (a broken link) into an error.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

bench: setup
	$(BIN)/python -m pytest benchmarks --benchmark-only --benchmark-json=.benchmarks/latest.json
	$(BIN)/python -m benchmark.reports.speed_report .benchmarks/latest.json docs/results.md

# Whole bench runs on large synthetic screens (minutes to tens of minutes; SCALE_MAX_CELLS=1000000 adds the 310k x
# 8,000 screen and the 1M grid), recorded in git under benchmarks/records/, then docs/scale.md's growth curve and table
# from every record there (the newest run of each case wins).
SCALE_MAX_CELLS ?= 200000
bench-scale: setup
	PERTBENCH_SCALE_MAX_CELLS=$(SCALE_MAX_CELLS) $(BIN)/python -m pytest benchmarks/test_bench_scale.py --benchmark-only \
		--benchmark-json=benchmarks/records/scale-$(SCALE_MAX_CELLS).json
	$(BIN)/python -m benchmark.reports.scale_report benchmarks/records/scale-*.json --png docs/figures/scale.png \
		--readme docs/scale.md

leaderboard: setup
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,ray,scgen]'  # scgen rows: pertpy
	EXECUTOR=$(EXECUTOR) bash scripts/reproduce_leaderboard.sh

# The registered CVAE defaults (predictors/cvae/defaults.json), chosen by benchmark.selection.choose_defaults on validation
# splits of the visible datasets' training cells (about 80 min on 2 cores; results resume from .pertbench/).
# max_steps and the n_hidden range are fixed on cost (one 50k-cell split within 2 minutes), never on a score.
CVAE_CANDIDATES ?= 10
cvae-defaults: setup
	$(BIN)/python -m benchmark.selection.choose_defaults --predictors cvae_modeB cvae_mlp_modeB \
		--candidates $(CVAE_CANDIDATES) --validation-splits 3 --fixed '{"max_steps": 1500}' \
		--space '{"n_hidden": ["categorical", [64, 128, 256]]}' --output predictors/cvae/defaults.json
