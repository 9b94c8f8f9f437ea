# AiR Studio. `make run` launches the app on the offline default; `make test` sets up and runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 7860
export HF_HUB_OFFLINE ?= 1
export GRADIO_ANALYTICS_ENABLED = False
export MPLBACKEND = Agg
export TOKENIZERS_PARALLELISM = false

.PHONY: setup test demo run demo-workspace bench clean

$(VENV)/.installed: requirements.txt requirements-test.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-test.txt
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -q

demo: setup
	$(PY) -m air_app run --config configs/demo.yaml --workspace demo_workspace

demo-workspace: setup
	$(PY) -m air_app run --config configs/demo.yaml --workspace demo_workspace --prompt none -q

run: demo-workspace
	$(PY) app.py --workspace demo_workspace --port $(PORT)

bench: setup
	$(PY) -m air_app bench pseudolabel

clean:
	rm -rf demo_workspace .pytest_cache
