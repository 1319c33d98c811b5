# Two entry points a newcomer needs: `make run` and `make test`.
# pip's "Location ... is ignored" lines come from this machine's local mirrors, and setuptools' boxed notice that
# an editable install of src/ and ./ packages uses a meta path finder is information only: both filtered, no
# error is (pip's ERROR lines and a failing exit status pass through).
QUIET := 2>&1 | { grep -v -e "is ignored: it is neither" -e "BuildBackendWarning" -e "return '\\n'.join" \
	-e "Please be careful with folders in your working" -e "name as your package as they may take precedence" \
	-e "with strategy, WheelFile" -e '^ *\*\{20,\}$$' -e '^ *!!$$' -e '^ *$$' || true; }
SHELL := bash
.SHELLFLAGS := -o pipefail -c
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test venv dev clean ui gpu-check gpu-check-data gpu-check-wheels

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

# The wheels the GPU check installs besides torch (README, "The GPU check"): this venv's versions, built for the
# GPU image's CPython 3.12 on manylinux x86-64, into .whl/ (git-ignored, about 9 MB).
GPU_PY ?= 3.12
GPU_WHEELS := pydantic pydantic-core annotated-types typing-inspection diffusers importlib_metadata zipp
gpu-check-wheels: venv
	$(BIN)/python -c "import importlib.metadata as m, sys; print(*(f'{n}=={m.version(n)}' for n in sys.argv[1:]))" \
		$(GPU_WHEELS) | xargs $(BIN)/pip download -q --no-deps --only-binary=:all: --python-version $(GPU_PY) \
		--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d .whl $(QUIET)
