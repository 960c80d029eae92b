# The two commands of the README: `make demo` and `make test`.
.PHONY: install demo test bench

install:
	@bash scripts/setup.sh

demo: install
	.venv/bin/asiarch-tui lab

test: install
	.venv/bin/python -m pytest -q -p no:cacheprovider tests

# every benchmark with --json: records appended to benchmarks/results/*.jsonl, then a table.
# BENCH selects and passes arguments, e.g. make bench BENCH="ops_throughput check_latency --quick"
bench: install
	.venv/bin/python scripts/bench.py $(BENCH)
