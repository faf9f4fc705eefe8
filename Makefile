# Two commands: `make reports` (main job) and `make test`.
# Both create .venv and install what is missing (a stamp file makes reruns instant).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
KERNEL := osteo-tf
PROFILE ?= quick
export TF_CPP_MIN_LOG_LEVEL := 2
export PYTHONHASHSEED := 0

.PHONY: reports test install kernel clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (osteo_tf needs Python 3.11); run: make PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (osteo-tf)" >/dev/null
	@touch $(STAMP)

install: $(STAMP)

kernel: $(STAMP)
	$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (osteo-tf)"

# Runs every study notebook (papermill) in the quick profile and writes reports/index.html.
# `make reports PROFILE=smoke` for a fast check, `PROFILE=full` on a GPU machine.
reports: $(STAMP)
	$(BIN)/osteo-tf run all --profile $(PROFILE) --out reports

test: $(STAMP)
	$(BIN)/python -m pytest tests

clean:
	rm -rf $(VENV) cache reports/*/ reports/index.html
