# Two entry points a newcomer needs: `make run` and `make test`.
# pip's "Location ... is ignored" lines come from this machine's local mirrors: filtered, not hidden errors.
QUIET := 2>&1 | { grep -v -e "is ignored: it is neither" -e "BuildBackendWarning" -e "return '\\n'.join" || true; }
SHELL := bash
.SHELLFLAGS := -o pipefail -c
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test venv dev clean ui gpu-check gpu-check-data

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip $(QUIET)

venv: $(BIN)/python
	$(BIN)/pip install -q -e . $(QUIET)

dev: $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]' $(QUIET)

run: venv
	$(BIN)/difflab pipeline

test: dev
	$(BIN)/python -m pytest -q

ui:  # through difflab, which sets the telemetry switches (difflab/__init__.py) before MLflow starts
	$(BIN)/python -c "import difflab, os; os.execv('$(BIN)/mlflow', ['mlflow', 'ui', '--backend-store-uri', 'sqlite:///mlflow.db'])"

clean:
	rm -rf $(VENV) mlflow.db .difflab

# The one GPU check (bench/gpu_check.py): needs only python3 with torch; pydantic and diffusers travel as
# wheels in .whl/ (see the README). `make gpu-check-data` (with the venv) writes the digits it trains on.
gpu-check:
	PYTHONPATH=$${PYTHONPATH:+$$PYTHONPATH:}src:.:bench $(PY) bench/gpu_check.py

gpu-check-data:
	$(BIN)/python bench/gpu_check.py --export
