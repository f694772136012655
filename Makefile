.PHONY: setup demo test bench-quick mutation

setup:
	bash scripts/setup.sh

# Set up, then train a teacher and distilled students on the bundled Fashion-MNIST sample.
demo: setup
	.venv/bin/wdistill demo

# Set up, then run the whole test suite.
test: setup
	.venv/bin/python -m pytest -q -p no:cacheprovider tests

bench-quick: setup
	.venv/bin/wdistill bench accuracy --quick

# Plant each known bug of tests/mutations.yaml in a copy of the package; fails if one survives.
mutation: setup
	.venv/bin/python scripts/mutation.py
