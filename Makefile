# intrada_pl: everything a user or CI runs goes through these targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DATA ?= data/toy
DEMO_RUNS ?= runs/demo
DEMO_SEEDS_RUNS ?= runs/demo_seeds
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: install test demo demo-seeds clean-demo rank pipeline

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

test: install
	$(BIN)/python -m pytest -q

$(DEMO_DATA)/toy_meta.json: | install
	$(BIN)/intrada toy-data $(DEMO_DATA)

demo: install $(DEMO_DATA)/toy_meta.json
	$(BIN)/intrada pipeline --config configs/demo/pipeline.yaml
	$(BIN)/intrada toy-data $(DEMO_DATA) --check-ranking $(DEMO_RUNS)/rank/ranking
	@echo "demo data: $(DEMO_DATA); runs, checkpoints, rankings and metrics: $(DEMO_RUNS)/<stage>/"

# The demo once per seed (configs/demo/pipeline_seeds.yaml, about 3x as long): mean +- std over seeds
# and whether the stages' differences exceed the seed spread, in $(DEMO_SEEDS_RUNS)/summary.md.
demo-seeds: install $(DEMO_DATA)/toy_meta.json
	$(BIN)/intrada pipeline --config configs/demo/pipeline_seeds.yaml
	for ranking in $(DEMO_SEEDS_RUNS)/seed_*/rank/ranking; do $(BIN)/intrada toy-data $(DEMO_DATA) --check-ranking $$ranking || exit 1; done
	@echo "demo data: $(DEMO_DATA); runs per seed: $(DEMO_SEEDS_RUNS)/seed_<s>/<stage>/; summary: $(DEMO_SEEDS_RUNS)/summary.md"

# The whole method on real data (edit the dataset roots in the config first).
pipeline: install
	$(BIN)/intrada pipeline --config $(or $(CONFIG),configs/pipeline_gta5.yaml)

clean-demo:
	rm -rf $(DEMO_RUNS)

# Stage 2, entropy ranking (configs/rank_gta5.yaml): writes runs/rank_gta5/ranking/ (or OUT/ranking/),
# where the intra-domain stage reads it.
rank: install
	@test -n "$(CKPT)" || { echo "usage: make rank CKPT=INTER_CKPT (a .ckpt of ours or a released ADVENT .pth) [LAMBDA=0.67] [DATA=data/Cityscapes] [CONFIG=configs/rank_gta5.yaml] [OUT=runs/rank_gta5]"; exit 2; }
	$(BIN)/intrada predict --config $(or $(CONFIG),configs/rank_gta5.yaml) --ckpt_path $(CKPT) \
		$(if $(LAMBDA),--trainer.callbacks.init_args.lambda_ $(LAMBDA)) \
		$(if $(DATA),--data.init_args.root $(DATA)) \
		$(if $(OUT),--trainer.callbacks.init_args.output_dir $(OUT) --trainer.default_root_dir $(OUT))
