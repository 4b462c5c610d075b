# ptlab: `make demo` runs the main job, `make test` the tests. Both create .venv/ on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: demo test test-slow bench corpus clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml constraints.txt | $(PY)
	$(PIP) -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml constraints.txt | $(PY)
	$(PIP) -e '.[dev]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/ptlab demo

test: $(VENV)/.installed-dev
	$(PY) -m pytest -q

test-slow: $(VENV)/.installed-dev
	$(PY) -m pytest -q -m slow

bench: $(VENV)/.installed-dev
	$(PY) benchmarks/run.py

corpus: $(VENV)/.installed
	$(PY) scripts/build_corpus.py
	$(PY) scripts/build_messy.py
	$(PY) scripts/build_tasks.py

clean:
	rm -rf runs .pytest_cache
