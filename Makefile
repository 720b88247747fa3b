# Two commands set everything up on a machine with Python 3 and make: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CORE   := $(VENV)/.installed-core

.PHONY: run test lint format data browser clean docs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# reinstalls when the project's dependencies change: `make run` needs the package alone, `make test` its test
# extras too (timm, Keras, scikit-learn, datasets, ... for the independent references: a longer install)
$(CORE): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $(CORE)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP) $(CORE)

# the documentation site (docs/, mkdocs.yml) into site/, every warning an error: a broken link fails it
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict

# Fashion-MNIST: found locally, else Debian's dataset-fashion-mnist (as root with apt), else the official download
data: $(CORE)
	@$(BIN)/resnets data fashion-mnist >/dev/null 2>&1 || \
	{ if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	     (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null)) || true; fi; \
	  $(BIN)/resnets data fashion-mnist >/dev/null 2>&1 || $(BIN)/resnets data fashion-mnist --download; }
	@echo "Fashion-MNIST: $$($(BIN)/resnets data fashion-mnist)"

# the main job: resnet14 on Fashion-MNIST (a few minutes on 2 CPU cores), evaluated on the 10,000 test images
run: data
	$(BIN)/resnets train --recipe fashion-mnist

# Debian's chromium, for the test that drives `resnets serve`'s page in a real browser (Playwright, pointed at the
# system chromium: no browser download); where it cannot be installed that test is skipped, saying why
browser:
	@command -v chromium >/dev/null 2>&1 || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get install -y -qq chromium >/dev/null 2>&1 || \
	     (apt-get update -qq && apt-get install -y -qq chromium >/dev/null 2>&1)) || true; fi; }
	@echo "chromium: $$(command -v chromium || echo 'not available: the browser test will be skipped')"

# the suite on every core (pytest-xdist, a worker per core, each on its share of the threads: tests/conftest.py);
# `.venv/bin/python -m pytest` alone runs it in one process
test: $(STAMP) data browser
	$(BIN)/python -m pytest -q -n auto

# pyflakes and pycodestyle's errors, and the formatter's layout, over the code, the tests and the benchmarks
# (the suite runs the same checks); `make format` lays the lines out
lint: $(STAMP)
	$(BIN)/python -m ruff check src tests benchmarks hubconf.py
	$(BIN)/python -m ruff format --check src tests benchmarks hubconf.py

format: $(STAMP)
	$(BIN)/python -m ruff format src tests benchmarks hubconf.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
