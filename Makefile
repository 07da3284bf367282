# intrada_pl: everything a user or CI runs goes through these targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DATA ?= data/toy
DEMO_RUNS ?= runs/demo
DEMO_SEEDS_RUNS ?= runs/demo_seeds
export NO_ALBUMENTATIONS_UPDATE := 1

# $(call quote,VALUE): VALUE as one single-quoted shell word, ' written as '\'', so that the shell
# passes a path with spaces, quotes, backticks or ; as one argument and runs nothing in it.
# Every variable a recipe passes on goes through it. (A $ in a value is make's: write $$.)
quote = '$(subst ','\'',$(1))'
# DEMO_DATA also names a make target, and make splits target names at spaces.
$(if $(word 2,$(DEMO_DATA)),$(error DEMO_DATA must not contain spaces (it names a make target): '$(DEMO_DATA)'))

.PHONY: install test test-all demo demo-seeds clean-demo rank pipeline

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(call quote,$(PYTHON)) -m venv $(call quote,$(VENV))
	$(call quote,$(BIN)/pip) install -q -e ".[dev]"
	touch $(call quote,$@)

# The fast tier (unit and fast integration tests, a few minutes on 2 cores); test-all adds the system
# tests (processes started and killed, DDP, whole pipelines, other versions' code): what CI runs.
test: install
	$(call quote,$(BIN)/python) -m pytest -q -m "not system"

test-all: install
	$(call quote,$(BIN)/python) -m pytest -q

$(DEMO_DATA)/toy_meta.json: | install
	$(call quote,$(BIN)/intrada) toy-data $(call quote,$(DEMO_DATA))

demo: install $(DEMO_DATA)/toy_meta.json
	$(call quote,$(BIN)/intrada) pipeline --config configs/demo/pipeline.yaml
	$(call quote,$(BIN)/intrada) toy-data $(call quote,$(DEMO_DATA)) --check-ranking $(call quote,$(DEMO_RUNS))/rank/ranking
	@printf 'demo data: %s; runs, checkpoints, rankings and metrics: %s/<stage>/\n' $(call quote,$(DEMO_DATA)) $(call quote,$(DEMO_RUNS))

# The demo once per seed (configs/demo/pipeline_seeds.yaml, about 3x as long): mean +- std over seeds
# and whether the stages' differences exceed the seed spread, in $(DEMO_SEEDS_RUNS)/summary.md.
demo-seeds: install $(DEMO_DATA)/toy_meta.json
	$(call quote,$(BIN)/intrada) pipeline --config configs/demo/pipeline_seeds.yaml
	for ranking in $(call quote,$(DEMO_SEEDS_RUNS))/seed_*/rank/ranking; do $(call quote,$(BIN)/intrada) toy-data $(call quote,$(DEMO_DATA)) --check-ranking "$$ranking" || exit 1; done
	@printf 'demo data: %s; runs per seed: %s/seed_<s>/<stage>/; summary: %s/summary.md\n' $(call quote,$(DEMO_DATA)) $(call quote,$(DEMO_SEEDS_RUNS)) $(call quote,$(DEMO_SEEDS_RUNS))

# The whole method on real data (edit the dataset roots in the config first).
pipeline: install
	$(call quote,$(BIN)/intrada) pipeline --config $(call quote,$(or $(CONFIG),configs/pipeline_gta5.yaml))

clean-demo:
	rm -rf $(call quote,$(DEMO_RUNS))

# Stage 2, entropy ranking (configs/rank_gta5.yaml): writes runs/rank_gta5/ranking/ (or OUT/ranking/),
# where the intra-domain stage reads it.
rank: install
	@test -n $(call quote,$(CKPT)) || { echo "usage: make rank CKPT=INTER_CKPT (a .ckpt of ours or a released ADVENT .pth) [LAMBDA=0.67] [DATA=data/Cityscapes] [CONFIG=configs/rank_gta5.yaml] [OUT=runs/rank_gta5]"; exit 2; }
	$(call quote,$(BIN)/intrada) predict --config $(call quote,$(or $(CONFIG),configs/rank_gta5.yaml)) --ckpt_path $(call quote,$(CKPT)) \
		$(if $(LAMBDA),--trainer.callbacks.init_args.lambda_ $(call quote,$(LAMBDA))) \
		$(if $(DATA),--data.init_args.root $(call quote,$(DATA))) \
		$(if $(OUT),--trainer.callbacks.init_args.output_dir $(call quote,$(OUT)) --trainer.default_root_dir $(call quote,$(OUT)))
