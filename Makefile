# The two commands of the README: `make demo` and `make test`.
.PHONY: install demo test bench

install:
	@bash scripts/setup.sh

demo: install
	.venv/bin/asiarch-tui lab

test: install
	.venv/bin/python -m pytest -q -p no:cacheprovider tests

bench: install
	for b in benchmarks/*.py; do .venv/bin/python $$b; done
