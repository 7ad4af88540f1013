# Set-up and the two everyday commands. Everything installs into .venv, from scratch, on first use.
#   make demo    personalize the bundled tiny models to the demo concept (a few minutes on a CPU)
#   make test    run the test suite (pytest, and peft for diffusers' load_lora_weights in the export test)
# TORCH picks the PyTorch build; the default is the CPU build used by CI and the tests.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1

.PHONY: demo test bench

$(VENV)/installed: requirements.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -c "import torch; print(torch.__version__)" > $(VENV)/torch-version
	echo "torch==$$(cat $(VENV)/torch-version)" > $(VENV)/torch-constraint.txt
	$(PY) -m pip install --quiet -c $(VENV)/torch-constraint.txt -r requirements.txt pytest peft
	$(PY) -c "import torch, sys; v = open('$(VENV)/torch-version').read().strip(); \
	  sys.exit(0 if torch.__version__ == v else f'a dependency replaced torch {v} with {torch.__version__}')"
	touch $@

demo: $(VENV)/installed
	$(PY) -m echodistill_core demo --out out/demo

test: $(VENV)/installed
	$(PY) -m pytest

bench: $(VENV)/installed
	$(PY) bench/speed.py
