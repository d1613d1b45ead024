# The two commands in the README: `make demo` and `make test`. Each sets up .venv on first use (or when the
# package metadata or pinned versions change) and skips the install otherwise.
VENV := .venv
BIN := $(VENV)/bin
PYTHON ?= python3
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1

.PHONY: install demo test lint bench

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=23.2"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,nlp,vision,ray,llm]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/mpq-rl search --output runs/demo

lint: $(STAMP)
	$(BIN)/ruff check mpq_rl tests benchmarks experiments
	$(BIN)/ruff format --check mpq_rl tests benchmarks experiments

test: lint
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py
