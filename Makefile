# `make run` and `make test` set up .venv from requirements.lock when it is missing or out of date.
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
UV_VERSION := 0.13.9
STAMP := $(VENV)/.installed
# Quiet TensorFlow's C++ info and warning lines (end-of-sequence notices every epoch); errors still show.
export TF_CPP_MIN_LOG_LEVEL ?= 2
# Test processes (pytest-xdist): a test file runs whole on one of them, so a module's fixture is made once, and files
# go out in their order (containers and e2e, the long ones, first; not xdist's most-tests-first). Two keep CI's
# 2 cores busy while a test waits on a subprocess (27 minutes to 14 here); 0 runs every test in one process.
TEST_WORKERS ?= 2
PYTEST_XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

.PHONY: run test test-fast lint-imports lock venv compile images clean help

help:
	@echo "make run        set up .venv if needed, then run the whole pipeline locally on the demo data"
	@echo "make test       set up .venv if needed, then run every test (unit, integration, e2e) on TEST_WORKERS=2"
	@echo "make test-fast  the same without the slow tests"
	@echo "make lint-imports  check the import rules of docs/architecture.md (make test runs it first)"
	@echo "make compile    write pipeline.yaml (the KFP / Vertex AI pipeline spec)"
	@echo "make images     build the CPU and GPU images (docker/); then make run ARGS='--runner docker'"
	@echo "make lock       re-resolve requirements.in into the exact requirements.lock"

$(VPY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 is required (TFDV 1.16 has no wheels for other versions); set PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)

$(VENV)/bin/uv: | $(VPY)
	$(VPY) -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# Installing from the exact lock resolves nothing: uv only downloads and unpacks.
$(STAMP): requirements.lock setup.py | $(VENV)/bin/uv
	$(VENV)/bin/uv pip sync --python $(VPY) requirements.lock
	$(VENV)/bin/uv pip install --python $(VPY) --no-deps -e .
	@touch $@

venv: $(STAMP)

run: $(STAMP)
	$(VPY) pipeline.py run $(ARGS)

# The layers (docs/architecture.md): a step imports only itself and components/common, components/ never pipeline/.
lint-imports: $(STAMP)
	$(VENV)/bin/lint-imports --config .importlinter

test: lint-imports
	$(VPY) -m pytest $(PYTEST_XDIST) $(PYTEST_ARGS)

test-fast: lint-imports
	$(VPY) -m pytest $(PYTEST_XDIST) -m "not slow" $(PYTEST_ARGS)

compile: $(STAMP)
	$(VPY) compile.py --output pipeline.yaml

# Needs a running Docker daemon; where the public bases can't be pulled it builds on a stand-in made with mmdebstrap.
images: $(STAMP)
	$(VPY) pipeline.py images $(ARGS)

lock: | $(VENV)/bin/uv
	$(VENV)/bin/uv pip compile requirements.in -o requirements.lock --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --no-header --annotation-style line

clean:
	rm -rf $(VENV) runs .pytest_cache
