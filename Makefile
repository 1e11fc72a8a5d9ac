# The two commands of the README: `make demo` (main job) and `make test`. Both create or reuse a
# virtualenv in .venv and install everything into it; nothing else needs to be set up by hand.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
# torch is pinned: an unpinned torch pulls a multi-GB CUDA build here, 2.13.0 is a CPU wheel.
TORCH   ?= torch==2.13.0
# The data set: $XNORNET_DATA if set, else the shared JPEG copy if present, else downloaded.
SHARED_DATA := $(wildcard ../shared/data/cifar10-jpeg)
export XNORNET_DATA ?= $(SHARED_DATA)
STAMP   := $(VENV)/.xnornet-installed
SOURCES := pyproject.toml CMakeLists.txt $(shell find csrc -type f 2>/dev/null)

.PHONY: install test demo clean

$(PY):
	python3 -m venv $(VENV)

# Reinstall only when the build inputs change (Python sources are an editable install).
$(STAMP): $(PY) $(SOURCES)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q "scikit-build-core>=0.10" "nanobind>=2.0"
	$(PIP) install -q --no-build-isolation -e ".[train,test]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

# Until the native engine and a shipped model exist, the demo is a short training run of the
# optimized BNN on 5,000 images, its evaluation, and the model summary.
demo: $(STAMP)
	$(VENV)/bin/xnornet summary --model bireal
	$(VENV)/bin/xnornet train --model bireal --epochs 2 --subset 5000 --out runs/demo
	$(VENV)/bin/xnornet eval --checkpoint runs/demo/model.safetensors --subset 5000 --json runs/demo/eval.json

clean:
	rm -rf build runs/demo
