# The two commands of the README: `make demo` (main job) and `make test`. Both create or reuse a
# virtualenv in .venv and install everything into it; nothing else needs to be set up by hand.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
# torch is pinned: an unpinned torch can pull a multi-GB CUDA build. On this project's machines
# pip's configured index serves 2.13.0 as a CPU wheel; plain PyPI's Linux wheel bundles CUDA, so
# elsewhere run e.g. `make test TORCH_INDEX=https://download.pytorch.org/whl/cpu` for the CPU build.
TORCH   ?= torch==2.13.0
TORCH_INDEX ?=
# The data set: $XNORNET_DATA if set, else the shared JPEG copy if present, else downloaded.
SHARED_DATA := $(wildcard ../shared/data/cifar10-jpeg)
export XNORNET_DATA ?= $(SHARED_DATA)
STAMP   := $(VENV)/.xnornet-installed
SOURCES := pyproject.toml CMakeLists.txt $(shell find csrc -type f 2>/dev/null)

ASAN_BUILD := build/asan
CYCLES_BUILD := build/cycles

.PHONY: install test test-asan demo clean cycles

$(PY):
	python3 -m venv $(VENV)

# Reinstall only when the build inputs change (Python sources are an editable install).
$(STAMP): $(PY) $(SOURCES)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"
	$(PIP) install -q "scikit-build-core>=0.10" "nanobind>=2.0" cmake ninja
	$(PIP) install -q --no-build-isolation -e ".[train,test,bench]"
	touch $(STAMP)

install: $(STAMP)

# All tests, then the engine's tests again against an ASan + UBSan build of the native module.
test: $(STAMP)
	$(PY) -m pytest -q tests
	$(MAKE) --no-print-directory test-asan

# The sanitizer build is loaded through $$XNORNET_NATIVE_LIB; Python itself is not instrumented,
# so the ASan runtime is preloaded. Leak checks are off (CPython keeps memory until exit).
test-asan: $(STAMP)
	$(VENV)/bin/cmake -S . -B $(ASAN_BUILD) -G Ninja -DCMAKE_MAKE_PROGRAM=$(abspath $(VENV))/bin/ninja \
		-DCMAKE_BUILD_TYPE=RelWithDebInfo -DXNORNET_SANITIZE=ON -DPython_EXECUTABLE=$(abspath $(PY)) > /dev/null
	$(VENV)/bin/cmake --build $(ASAN_BUILD)
	LD_PRELOAD="$$(g++ -print-file-name=libasan.so) $$(g++ -print-file-name=libubsan.so)" \
	ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	XNORNET_NATIVE_LIB="$$(ls $(ASAN_BUILD)/_engine*.so)" \
		$(PY) -m pytest -q -p no:cacheprovider tests/test_engine.py $(wildcard tests/test_engine_robustness.py)

# A diagnostic, not a test: per-layer cycle counters in the tile kernel (benchmarks/cycles.py).
cycles: $(STAMP)
	$(VENV)/bin/cmake -S . -B $(CYCLES_BUILD) -G Ninja -DCMAKE_MAKE_PROGRAM=$(abspath $(VENV))/bin/ninja \
		-DCMAKE_BUILD_TYPE=Release -DXNORNET_CYCLES=ON -DPython_EXECUTABLE=$(abspath $(PY)) > /dev/null
	$(VENV)/bin/cmake --build $(CYCLES_BUILD)
	XNORNET_NATIVE_LIB="$$(ls $(CYCLES_BUILD)/_engine*.so)" $(PY) benchmarks/cycles.py

# The demo uses the trained models shipped in the package (src/xnornet/assets: the Bi-Real + KD
# BNN as a packed file, its FP32 teacher as safetensors), so nothing is trained first: model
# summary, accuracy of the packed BNN with the native engine on the whole test set, agreement with
# its PyTorch rebuild, top-3 predictions for two test images (folder data only), each binary conv
# timed against PyTorch FP32, and the end-to-end comparison (quick mode) against PyTorch, ONNX
# Runtime and OpenVINO.
DEMO := runs/demo
DEMO_IMAGES := $(wildcard $(XNORNET_DATA)/test/cat/0000.jpg $(XNORNET_DATA)/test/ship/0001.jpg)
demo: $(STAMP)
	mkdir -p $(DEMO)
	$(VENV)/bin/xnornet summary --model bireal
	$(VENV)/bin/xnornet eval --engine native --json $(DEMO)/eval-native.json --plot $(DEMO)/confusion.png
	$(VENV)/bin/xnornet eval --engine both --subset 2000 --json $(DEMO)/eval-both.json
	$(if $(DEMO_IMAGES),$(VENV)/bin/xnornet predict $(DEMO_IMAGES))
	$(VENV)/bin/xnornet bench kernels --batch 64 --repeats 3 --plot $(DEMO)/kernels.png
	$(VENV)/bin/xnornet bench --quick --json $(DEMO)/bench.json --plot $(DEMO)/bench.png

clean:
	rm -rf build runs/demo
