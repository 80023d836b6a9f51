# The two commands of the README: `make demo` (a search on the embedded default task) and `make test`.
# Each creates .venv and installs the package into it on first use (with the dev, onnx and ray extras, so that the
# tests cover ONNX export and the leaderboard on a local Ray instance); nothing but python3 is needed.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint clean

# The read-only benchmark data beside this checkout, when present, is passed by environment variable (the code
# never looks for it by path); set AJPQ_DATA / AJPQ_WEIGHTS yourself to use other copies.
SHARED_DATA := $(abspath ../shared/data)
ifneq ($(wildcard $(SHARED_DATA)/cifar10),)
export AJPQ_DATA ?= $(SHARED_DATA)/cifar10
export AJPQ_WEIGHTS ?= $(SHARED_DATA)/weights
export AJPQ_DETECTION ?= $(SHARED_DATA)/detection
endif

# within constraints.txt: the versions the benchmark tables were made with (a search's trajectory depends on them)
$(STAMP): setup.cfg pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev,onnx,ray]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ajpq search --env AJPQ-MobileNet-v0 --algo td3-twolevel --episodes 150 --target 0.125 --seed 0 --out runs/demo $(if $(wildcard runs/demo/episodes.csv),--resume,)

# two test processes (pytest-xdist), each test file whole in one of them so module fixtures are built once
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile

lint: $(STAMP)
	$(VENV)/bin/ruff check ajpq_env agents benchmarks tests

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
