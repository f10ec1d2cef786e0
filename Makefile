# make demo : install everything, build the demo catalog and index, run example searches
# make test : install everything, run the test suite
VENV ?= .venv
# pytest-xdist workers for `make test`; each takes whole test modules (tests/conftest.py keeps the two
# Milvus modules on one)
TEST_WORKERS ?= 2

.PHONY: install demo test
install:
	VENV=$(VENV) bash scripts/install.sh

demo: install
	$(VENV)/bin/snapshop demo

test: install
	$(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadscope
