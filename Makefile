.PHONY: setup setup-test demo test bench-quick docs mutation

# The package only: what `make demo` needs.
setup:
	bash scripts/setup.sh

# The package, the test dependencies and (as root) Debian's Fashion-MNIST for the real-data tests.
setup-test:
	bash scripts/setup.sh --test

# Set up, then distil students from the shipped teacher on the bundled Fashion-MNIST sample
# (`.venv/bin/wdistill demo --full` trains the teacher too).
demo: setup
	.venv/bin/wdistill demo

# Set up for the tests, then run the whole test suite, one pytest-xdist worker per core (at most 4).
test: setup-test
	.venv/bin/python -m pytest -q -p no:cacheprovider -n auto --maxprocesses 4 tests

# The benchmarks are project tooling beside the package (benchtools/, protocols in docs/benchmarks.md).
bench-quick: setup-test
	.venv/bin/python -m benchtools accuracy --quick

# The documentation site (docs/ + docstrings), strict: a broken link or a renamed function fails.
docs: setup-test
	NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --site-dir site

# Plant each known bug of tests/mutations.yaml in a copy of the package; fails if one survives (after checking
# that the unplanted copy passes the same tests).
mutation: setup-test
	.venv/bin/python scripts/mutation.py --baseline
