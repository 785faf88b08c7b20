# action-images: every entry point installs what it needs into .venv first.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export MUJOCO_GL ?= egl
export PYTHONUNBUFFERED := 1

.PHONY: install test test-all demo bench checkpoint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ''

demo: $(STAMP)
	$(BIN)/action-images demo

bench: $(STAMP)
	$(BIN)/action-images bench codec --json bench/results/codec.json
	$(BIN)/action-images bench sim --json bench/results/sim.json
	$(BIN)/action-images bench train --json bench/results/train.json
	$(BIN)/action-images bench policy --steps 4,10 --json bench/results/policy.json

# The shipped checkpoint's recipe (docs/results.md): 4 tasks x 150 expert demos recorded 10 steps past success, then
# cpu-small on the left + right cameras for CKPT_STEPS steps (the step count its 60-minute run reached; a fixed step
# count makes the run reproducible bit-for-bit).
CKPT_TASKS ?= reach_target,press_button,open_drawer,close_drawer
CKPT_STEPS ?= 7787
checkpoint: $(STAMP)
	test -f data/core4h/meta/info.json || $(BIN)/action-images collect --task $(CKPT_TASKS) --episodes 150 \
		--out data/core4h --seed 1000 --hold-steps 10
	$(BIN)/action-images train --data data/core4h --out runs/cpu-small --preset cpu-small --steps $(CKPT_STEPS) \
		--seed 0 --lr 1e-3 --threads 1 --camera-names left,right --loss-target x0 --t-mean 1.5
	mkdir -p checkpoints/cpu-small
	cp runs/cpu-small/config.json runs/cpu-small/model.safetensors runs/cpu-small/log.jsonl \
		runs/cpu-small/loss.png runs/cpu-small/train_args.json checkpoints/cpu-small/

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
