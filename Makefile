# Two commands for a newcomer: `make demo` and `make test`. Both create .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; set TORCH= to keep whatever torch the venv already has.
TORCH ?= torch==2.13.0

.PHONY: venv dev demo app test test-fast lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

venv: $(BIN)/python
	$(if $(TORCH),$(BIN)/pip install -q "$(TORCH)")
	$(BIN)/pip install -q -e ".[onnx,plot,app]"

dev: $(BIN)/python
	$(if $(TORCH),$(BIN)/pip install -q "$(TORCH)")
	# torch pinned in the same command: timm (the pretrain extra) pulls torchvision, whose newest release would replace it
	$(BIN)/pip install -q -e ".[dev]" $(if $(TORCH),"$(TORCH)")
	# The reference of the Dice/Focal/Lovasz tests, pinned (its Focal changed between 0.5 and 0.6). --no-deps: its
	# encoders need timm and torchvision, whose newest builds would replace the CPU torch; the losses need neither.
	$(BIN)/pip install -q --no-deps segmentation-models-pytorch==0.6.0

demo: venv
	$(BIN)/segformer demo

app: venv  # the page for the demo model (after `make demo`) on http://127.0.0.1:7860
	$(BIN)/segformer app runs/demo/model

test: dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

# The fast lane while working: lint, then every test but the `slow` ones (multi-process DDP, kill/resume, full-size
# variants), which include the timing-sensitive torchrun kill/restart tests (`elastic`). CI runs `make test`.
test-fast: dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -m "not slow and not elastic"

lint: dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports

format:
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) runs build dist src/*.egg-info .pytest_cache .ruff_cache
