# One command to build the post offline, one to run the tests (both install what they need first).
PYTHON ?= python3
PIP = $(PYTHON) -m pip
CORES ?= all
PORT ?= 4000

.PHONY: post preview test install install-system install-python bench serve

post: install  ## figures, markdown post and Jekyll site, on the backend of config.yaml
	snakemake --cores $(CORES)

preview: install  ## build, serve on http://127.0.0.1:$(PORT) and rebuild on every save of config.yaml (Ctrl-C stops)
	$(PYTHON) -m diffusion_post.cli preview --port $(PORT) --cores $(CORES)

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

serve:  ## serve the built site as it is at http://127.0.0.1:4000 (site/_site is written by the workflow only)
	cd site && jekyll serve --host 127.0.0.1 --skip-initial-build --no-watch
