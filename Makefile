# One command to build the post offline, one to run the tests (both install what they need first).
PYTHON ?= python3
PIP = $(PYTHON) -m pip
CORES ?= all

.PHONY: post test install install-system install-python bench serve

post: install  ## figures, markdown post and Jekyll site, on the backend of config.yaml
	snakemake --cores $(CORES)

test: install  ## the whole test suite (CPU only, downloads no model)
	$(PYTHON) -m pytest

install: install-system install-python

install-system:
	bash scripts/install_system_deps.sh

install-python:
	$(PIP) install --quiet --disable-pip-version-check -r requirements.txt -e '.[test]'

bench: install  ## CPU benchmarks; results go in BENCHMARKS.md by hand
	$(PYTHON) bench/bench_sampling.py
	$(PYTHON) bench/bench_build.py

serve:  ## preview the built post at http://127.0.0.1:4000
	cd site && jekyll serve --host 127.0.0.1
