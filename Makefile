# The two set-up commands of the README:
#   make serve   installs the node and starts it on its embedded defaults (no GPU, no downloads at run time)
#   make test    installs the node, its test extras and the real peers (dcmtk, Orthanc, Chromium, OHIF),
#                then runs the whole test suite
PYTHON ?= python3
VENV ?= .venv
PIP = $(VENV)/bin/python -m pip
# torch and torchvision are pinned here, inside the range pyproject.toml declares.
TORCH = torch==2.14.1 torchvision==0.29.1

.PHONY: serve install install-test peers test bench lint

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

install: $(VENV)/bin/python
	$(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet -e .

serve: install
	$(VENV)/bin/samie-node serve

install-test: $(VENV)/bin/python
	$(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet -e '.[test]'

peers:
	./scripts/install-test-peers.sh

test: peers install-test
	$(VENV)/bin/python -m pytest

# ruff, mypy, and the architecture's rules (which folder may import which library, size limits,
# every setting read by something): tests/test_layout.py, which the test suite runs too.
lint:
	$(VENV)/bin/ruff check samie_node tests bench
	$(VENV)/bin/ruff format --check samie_node tests bench
	$(VENV)/bin/mypy samie_node
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_layout.py

bench: install-test
	$(VENV)/bin/python bench/ingest.py
	$(VENV)/bin/python bench/inference.py

# The radiologist's view on this machine: Orthanc (DICOMweb), samie-node (classifying with the packaged
# demonstration model: synthetic images, not for clinical use) and the OHIF viewer with the
# demo studies; prints the viewer's URL and runs until Ctrl-C (scripts/viewer-demo --help for options).
.PHONY: viewer
viewer: peers install-test
	./scripts/viewer-demo
