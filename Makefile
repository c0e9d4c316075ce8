# Two entry points: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test install docs bench readme-figure clean

install: $(STAMP)

# torch is installed first and pinned: 2.13.0 is a CPU build that pip finds locally,
# while an unpinned torch would download a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/brain-gen demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

# Speed ratios against a baseline measured in the same process (not part of `make test`).
bench: $(STAMP)
	$(VENV)/bin/python -m benchmarks.run_all

# Regenerate docs/configuration.md from the config schema and docs/python-api.md from the docstrings.
docs: $(STAMP)
	$(VENV)/bin/python -m brain_gen.config.docs
	$(VENV)/bin/python -m brain_gen.api_docs

# The README's picture, docs/images/demo_psd.png, from a fresh demo run (about a minute).
readme-figure: $(STAMP)
	$(VENV)/bin/python docs/make_readme_figure.py

clean:
	rm -rf $(VENV) demo_run
