# Two commands: `make reports` (main job) and `make test`; `make lab` opens the notebooks in JupyterLab.
# All create .venv and install what is missing (a stamp file makes reruns instant).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROFILE ?= quick
export TF_CPP_MIN_LOG_LEVEL := 2
export PYTHONHASHSEED := 0

.PHONY: reports test install kernel lab clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (osteo_tf needs Python 3.11); run: make PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -c "from osteo_tf._kernel import install_kernel; install_kernel()" >/dev/null
	@touch $(STAMP)

install: $(STAMP)

# (Re)registers the Jupyter kernel "Python (osteo-tf)" in .venv (python -m osteo_tf._kernel: TensorFlow's
# native start-up log lines kept out of the terminal and the notebooks).
kernel: $(STAMP)
	$(BIN)/python -c "from osteo_tf._kernel import install_kernel; print(install_kernel())"

# JupyterLab on notebooks/ (kernel "Python (osteo-tf)"). `make lab LAB_ARGS="--no-browser --port 8899"`.
# Jupyter refuses to run as root without --allow-root (containers, CI machines): passed only then.
lab: $(STAMP)
	$(BIN)/jupyter lab --ServerApp.root_dir=notebooks --MappingKernelManager.default_kernel_name=osteo-tf$(if $(filter 0,$(shell id -u)), --allow-root) $(LAB_ARGS)

# Runs every study notebook (papermill) in the quick profile and writes reports/index.html.
# `make reports PROFILE=smoke` for a fast check, `PROFILE=full` on a GPU machine.
reports: $(STAMP)
	$(BIN)/osteo-tf run all --profile $(PROFILE) --out reports

test: $(STAMP)
	$(BIN)/python -m pytest tests

clean:
	rm -rf $(VENV) cache reports/*/ reports/index.html
