# The two commands that matter on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: demo run test test-fast bench clean

# One virtualenv with the project (editable) and its test extras; redone when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

demo: $(VENV)/.installed  ## embedded broker + pipeline + metrics endpoint + simulated app
	$(BIN)/prodlens demo $(ARGS)

run: $(VENV)/.installed   ## embedded broker + pipeline + metrics endpoint (your apps produce)
	$(BIN)/prodlens run $(ARGS)

test: $(VENV)/.installed  ## the whole suite: unit, integration (real broker), end to end
	$(BIN)/pytest $(ARGS)

test-fast: $(VENV)/.installed  ## the pure core only
	$(BIN)/pytest -m "not broker" $(ARGS)

bench: $(VENV)/.installed  ## ingest benchmark (events/s and peak RSS vs raw aiokafka)
	$(BIN)/python bench/ingest.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info
