# The two README commands. Each creates or reuses .venv and installs the project first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint setup clean

setup: $(STAMP)

$(STAMP): setup.py pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	@echo "installing mmfusion and its dependencies into $(VENV) (first time: several minutes)"
	$(BIN)/python -m pip install --quiet -e '.[dev]' > $(VENV)/pip.log 2>&1 || (grep -v '^WARNING: Location' $(VENV)/pip.log | tail -30; exit 1)
	@$(BIN)/python -c "import mmfusion, torch; print('mmfusion', mmfusion.__version__, 'torch', torch.__version__)"
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/mmfusion demo

test: $(STAMP) lint
	$(BIN)/python -m pytest -q --durations=15

lint: $(STAMP)
	$(BIN)/ruff check mmfusion tests benchmarks
	$(BIN)/ruff format --check mmfusion tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
