# The two commands of README.md, on a fresh machine with nothing installed:
#   make demo   # whole pipeline on the offline synthetic corpus
#   make test   # the test suite
# Both run scripts/setup.sh first (idempotent; seconds on a second run).

SHELL := /bin/bash
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
RECIPE := egs/librispeech/ASR

.PHONY: setup test demo lint clean-demo

setup:
	bash scripts/setup.sh

# pytest exits 5 when it collected no test: treat that as a failure.
test: setup
	$(PY) -m pytest -q tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: no tests were collected" >&2; exit 1; fi; exit $$rc

lint: setup
	$(VENV)/bin/ruff check .

demo: setup
	cd $(RECIPE) && PYTHON=$(PY) ./run_demo.sh

clean-demo:
	rm -rf $(RECIPE)/data $(RECIPE)/download $(RECIPE)/demo_exp
