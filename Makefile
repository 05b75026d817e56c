# bids_brainage: two commands on a fresh machine.
#   make demo   set up .venv, run participant + group level on the embedded example
#   make test   set up .venv with the test extras, run the whole test suite
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= demo_output
# pip takes torch 2.13.0 from PyPI (or a local CPU wheel where one lies); elsewhere set
# TORCH_INDEX=https://download.pytorch.org/whl/cpu to avoid the multi-GB CUDA build.
TORCH_INDEX ?=
TORCH_ARGS := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)

.PHONY: demo test test-fast container-test system-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch first, so that nothing that depends on it pulls a CUDA build
$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install --quiet $(TORCH_ARGS) torch==2.13.0
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

# the validator's bundle compiled once into the venv (a new work dir's deno cache starts
# as a copy: 0.35 s instead of 0.9 s); without deno nothing is made and nothing fails
$(VENV)/.compiled-validator: $(VENV)/.installed
	$(BIN)/python -c "from bids_brainage.bids.validate import compile_validator as c; c()"
	touch $@

demo: $(VENV)/.installed $(VENV)/.compiled-validator
	$(BIN)/bids_brainage examples/ds-ixi3 $(DEMO_OUT)/derivatives participant \
	    -w $(DEMO_OUT)/work --nprocs 2
	$(BIN)/bids_brainage examples/ds-ixi3 $(DEMO_OUT)/derivatives group
	@echo "Open $(DEMO_OUT)/derivatives/group_report.html and sub-*.html in a browser."

# system packages some tests use (a headless browser for the report tests); needs root
system-deps:
	@if [ -f tests/system-deps.txt ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    missing=$$(for p in $$(grep -v '^#' tests/system-deps.txt); do \
	        dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	    if [ -n "$$missing" ]; then \
	        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	    fi; \
	fi

# the suite, then the Docker image built for real and run on the example (needs root and
# podman, which container-check installs; skipped with a message elsewhere). -rs lists every
# skipped test and why, e.g. tests/test_slurm.py (a real SLURM via slurm-up) without root.
test: $(VENV)/.installed-test $(VENV)/.compiled-validator system-deps
	$(BIN)/python -m pytest -p no:cacheprovider -rs
	@if [ "$$(id -u)" = 0 ] && [ -x ../shared/tools/container-check ]; then \
	    $(MAKE) container-test; \
	elif [ -n "$$CI" ] && [ "$$CI" != 0 ] && [ "$$CI" != false ]; then \
	    echo "container test cannot run in CI: needs root and ../shared/tools/container-check"; \
	    exit 1; \
	else echo "container test skipped: needs root and ../shared/tools/container-check"; fi

test-fast: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m "not slow"

container-test: $(VENV)/.installed
	bash tests/container/run.sh

clean:
	rm -rf $(DEMO_OUT) build *.egg-info
