# `make demo` and `make test` create or refresh the environment themselves; a second call skips the install.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.xfer-setup

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt requirements-assets.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -r requirements-assets.txt
	touch $(STAMP)

demo: setup
	$(VENV)/bin/xfer demo

test: setup
	$(VENV)/bin/pytest -q

bench: setup
	$(PY) bench/step_overhead.py
	$(PY) bench/feature_cache.py
	$(PY) bench/cpu_choices.py

clean:
	rm -rf $(VENV) .pytest_cache
