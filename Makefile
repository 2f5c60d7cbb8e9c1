# rswb: `make demo` and `make test` are all a new user types; both create the environment first when needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.rswb-installed
# JupyterLab refuses to run as root without --allow-root (containers, lab servers).
LAB_FLAGS ?= --no-browser --ip=127.0.0.1 $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: setup demo test test-fast real lint lab bench clean-data clean

setup: $(STAMP)  ## create .venv and install rswb with every extra (idempotent: seconds when up to date)

# Re-installs only when the package metadata or the pins change. torch is pinned in constraints.txt so that pip
# never pulls a newer torch (GBs of CUDA wheels) through another package's requirement.
# clip-benchmark is the reference of the "clip_benchmark" tie rule (tests/metrics/test_topk.py). It is not in the
# bench extra because its metadata requires torchvision and open_clip, which break this torch (docs/DESIGN.md, rule
# 15); the module the tests use needs only torch and tqdm, so it is installed without its dependencies.
$(STAMP): pyproject.toml constraints.txt Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt -e '.[all,dev,bench]'
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps clip-benchmark==1.6.2
	@touch $(STAMP)

demo: $(STAMP)  ## the notebook suite, quick profile, on the embedded data: reports/<timestamp>/index.html
	$(BIN)/rswb data synth
	$(BIN)/rswb notebooks run --profile quick

test: $(STAMP) lint  ## lint, then the whole test suite (real-data tests skip with a reason without ../shared/data)
	$(BIN)/python -m pytest

test-fast: $(STAMP)  ## the suite without slow tests
	$(BIN)/python -m pytest -m "not slow"

real: $(STAMP)  ## the suite on ../shared/data (or $$RSWB_SHARED_DATA), failing on drift from notebooks/baselines/real.yaml
	$(BIN)/rswb notebooks run --profile real --check

lint: $(STAMP)
	$(BIN)/ruff check rswb tests benchmarks notebooks

lab: $(STAMP)  ## JupyterLab on notebooks/ (headless: open the printed 127.0.0.1 URL with its token)
	$(BIN)/jupyter lab --notebook-dir=notebooks $(LAB_FLAGS)

bench: $(STAMP)  ## speed benchmarks; JSON results next to their reference, see benchmarks/README.md
	$(BIN)/rswb bench

clean-data:
	rm -rf data/embedded

clean: clean-data
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
