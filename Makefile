# kexue: set-up and everyday commands. Works on a fresh clone with only Python 3.11 installed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.13.0
# Nothing is downloaded at run time: models load from local paths only.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MPLBACKEND := Agg

.PHONY: demo test test-all bench clean help

help:
	@echo "make demo      create .venv, install, run 'kexue reproduce' (quick scale), print where the report is"
	@echo "make test      create .venv, install with the test extra, run the test suite (excludes slow)"
	@echo "make test-all  the whole test suite, slow checks included"
	@echo "make bench     run 'kexue bench' at full size, writes reports/bench.json"

# torch first, pinned: 2.13.0 is the local CPU wheel; any other torch request pulls CUDA packages.
$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH)
	@touch $@

# One stamp per extra: the base package, '.[test]', '.[bench]'.
$(VENV)/.installed-base: $(VENV)/.torch pyproject.toml
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

$(VENV)/.installed-%: $(VENV)/.torch pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[$*]'
	@touch $@

demo: $(VENV)/.installed-base
	$(BIN)/kexue reproduce --out reports
	@echo "Report: $(CURDIR)/reports/report.html (results: $(CURDIR)/reports/results.json)"

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest

test-all: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m ""

bench: $(VENV)/.installed-bench
	$(BIN)/kexue bench --out reports
	@echo "Benchmarks: $(CURDIR)/reports/bench.json"

clean:
	rm -rf $(VENV) reports build src/*.egg-info .pytest_cache .hypothesis
