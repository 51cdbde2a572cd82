# make demo: set up .venv if needed, then run the main job (data, CoT, No-CoT, CoLaR, RL, evaluation, report).
# make test: set up .venv if needed, then run the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test clean

$(VENV)/installed: requirements.txt requirements-extra.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.txt -r requirements-extra.txt
	touch $@

demo: $(VENV)/installed
	$(BIN)/python demo.py

test: $(VENV)/installed
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf out runs/*.log data/synth build *.egg-info
