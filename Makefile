# segops: `make run` (the main job) and `make test` (lint + tests) set everything up first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.segops-installed
PARAMS ?= params.yaml
# make test runs the suite on this many pytest-xdist workers, one test file each at a time
# (--dist loadfile: a module's fixtures, such as its Prefect harness or S3 server, stay in one
# worker; the team-stack modules go together, tests/conftest.py); 1 runs it in one process.
TEST_WORKERS ?= 2
export PYTHONUNBUFFERED := 1
# Local, quiet defaults; PREFECT_API_URL / MLFLOW_TRACKING_URI set by you still win.
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DVC_NO_ANALYTICS ?= 1
export MLFLOW_ALLOW_PICKLE_DESERIALIZATION ?= false
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR ?= false

.PHONY: setup run test lint format bench clean help mlflow-ui prefect-ui stack-up stack-down stack-status

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install segops with pinned dependencies

run: setup  ## build the shapes dataset if missing, then the retrain flow (embedded defaults)
	test -f data/shapes/classes.txt || $(VENV)/bin/segops data shapes --params $(PARAMS)
	$(VENV)/bin/segops run --params $(PARAMS)

lint: setup  ## ruff lint and format check, and the layers contract (import-linter)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: setup  ## apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint  ## lint, then the whole test suite (slow tests included) on TEST_WORKERS workers
	$(PY) -m pytest $(if $(filter-out 0 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile)

bench: setup  ## benchmarks; results go in bench/RESULTS.md
	$(PY) bench/train_overhead.py
	$(PY) bench/threads.py
	$(PY) bench/pipeline.py
	$(PY) bench/import_floor.py
	$(PY) bench/serving.py
	$(PY) bench/quality.py
	$(PY) bench/batch_predict.py

mlflow-ui: setup  ## MLflow UI on the local store: http://127.0.0.1:5000
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow/mlflow.db --host 127.0.0.1 --port 5000

prefect-ui: setup  ## a local Prefect server and UI: http://127.0.0.1:4200
	$(VENV)/bin/prefect server start --host 127.0.0.1 --port 4200

stack-up: setup  ## the local production stack (PostgreSQL, S3, MLflow, Prefect, 2 workers) under .stack/; prints exports
	$(VENV)/bin/segops stack up

stack-down:  ## stop the local stack (its data stays in .stack/)
	$(VENV)/bin/segops stack down

stack-status:  ## health of each service of the local stack
	$(VENV)/bin/segops stack status

clean:  ## remove outputs and local stores (keeps .venv)
	rm -rf runs data/shapes .pytest_cache mlflow/mlflow.db mlflow/artifacts dvc-store
