# ptlab: `make demo` runs the main job, `make test` the tests. Both create .venv/ on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: demo test test-slow fuzz bench corpus lock clean

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

# --durations: the slowest tests, printed each run, to keep the suite under ten minutes on two cores
test: $(VENV)/.installed-dev
	$(PY) -m pytest -q --durations=12

test-slow: $(VENV)/.installed-dev
	$(PY) -m pytest -q -m slow

# A long property-based campaign: every tests/test_fuzz_*.py test with 10x its examples and fresh random seeds
# (PTLAB_FUZZ=1); prints the number of generated cases. Log in runs/fuzz.log.
fuzz: $(VENV)/.installed-dev
	@mkdir -p runs
	@{ PTLAB_FUZZ=1 $(PY) -m pytest -q -p no:cacheprovider --hypothesis-show-statistics tests/test_fuzz_*.py; \
	  echo $$? > runs/fuzz.status; } | tee runs/fuzz.log | grep -v '^ *\* '
	@awk '/ passing, / {n += $$2} END {printf "fuzz: %d generated cases\n", n}' runs/fuzz.log
	@exit $$(cat runs/fuzz.status)

bench: $(VENV)/.installed-dev
	$(PY) benchmarks/run.py

corpus: $(VENV)/.installed
	$(PY) scripts/build_corpus.py
	$(PY) scripts/build_messy.py
	$(PY) scripts/build_tasks.py

# Re-pin the whole dependency tree in constraints.txt from a fresh install of ptlab with its test extra.
LOCK_VENV := .cache/lock-venv
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --disable-pip-version-check 'torch==2.13.0' -e '.[dev]'
	{ sed -n '/^#/p' constraints.txt; $(LOCK_VENV)/bin/python -m pip freeze --exclude-editable --all \
	  | grep -viE '^(ptlab|pip|setuptools|wheel)[=@ ]' | sed -E 's/^torch==([0-9.]+)\+.*/torch==\1/'; } > constraints.txt.tmp
	mv constraints.txt.tmp constraints.txt
	rm -rf $(LOCK_VENV)

clean:
	rm -rf runs .pytest_cache
