# Two commands: `make reports` (main job) and `make test`; `make lab` opens the notebooks in JupyterLab.
# All create .venv and install what is missing (a stamp file makes reruns instant).
# GPU=1 installs TensorFlow's CUDA libraries too (requirements-gpu.txt), e.g. `make reports GPU=1 PROFILE=full`;
# `make gpu-check GPU=1` prints the GPUs TensorFlow sees.
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
GPU ?= 0
STAMP := $(VENV)/.installed$(if $(filter 1,$(GPU)),-gpu)
PROFILE ?= quick
# studies run at once (osteo-tf run --jobs): 2 for the CPU profiles (a study keeps about one core busy),
# 1 for full (a GPU's memory is not shared between studies)
JOBS ?= $(if $(filter full,$(PROFILE)),1,2)
OUT ?= reports
export TF_CPP_MIN_LOG_LEVEL := 2
export PYTHONHASHSEED := 0

.PHONY: reports test install kernel lab gpu-check clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (osteo_tf needs Python 3.11 or 3.12); run: make PYTHON=/path/to/python3.12"; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): requirements.txt requirements-dev.txt requirements-gpu.txt pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(if $(filter 1,$(GPU)),$(BIN)/python -m pip install --quiet -r requirements-gpu.txt)
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
# `make reports PROFILE=smoke` for a fast check, `PROFILE=full-smoke` for the paper protocol's code path on a
# CPU, `GPU=1 PROFILE=full` on a GPU machine; OUT=DIR writes elsewhere.
reports: $(STAMP)
	$(BIN)/osteo-tf run all --profile $(PROFILE) --out $(OUT) --jobs $(JOBS)

gpu-check: $(STAMP)
	$(BIN)/python -c "import tensorflow as tf; g = tf.config.list_physical_devices('GPU'); print(f'TensorFlow {tf.__version__} sees {len(g)} GPU(s): {g}')"

test: $(STAMP)
	$(BIN)/python -m pytest tests

clean:
	rm -rf $(VENV) cache reports/*/ reports/index.html
