# Two commands on a fresh machine:  `make demo` (the main job)  and  `make test`.
# Each creates the virtual environment when missing and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test figure params clean-venv

# The package is installed in editable mode: the commands, scripts/ and benchmarks/ import it, and edits (the presets
# in srdensenet/config.py) take effect without reinstalling.
$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt -e .
	touch $@

demo: $(VENV)/.installed
	$(PY) scripts/demo.py

test: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

# Refresh the tracked README figures (assets/) from the shipped weights: the only command that rewrites them.
figure: $(VENV)/.installed
	$(PY) scripts/make_figure.py

params: $(VENV)/.installed
	$(PY) -m srdensenet.model

clean-venv:
	rm -rf $(VENV)
