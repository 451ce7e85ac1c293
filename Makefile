# One command runs the gateway, one runs the tests (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: install install-test run test bench check clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[test]'
	touch $(TEST_STAMP)

install: $(STAMP)
install-test: $(TEST_STAMP)

run: $(STAMP)
	$(BIN)/llmgw run

test: $(TEST_STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# make bench: this gateway beside LiteLLM and Portkey (installed, pinned, into .bench/ by llmgw bench --peers);
# make bench PEERS=0: the quick gateway-vs-direct run
PEERS ?= 1
bench: $(STAMP)
	@# wrk is a Debian package: install it when we can (root with apt), else llmgw bench says what to do
	@if ! command -v wrk >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get install -y -qq wrk || { apt-get update -qq && apt-get install -y -qq wrk; }; \
	fi
	$(BIN)/llmgw bench $(if $(filter 1,$(PEERS)),--peers)

check: $(STAMP)
	$(BIN)/llmgw config check $${LLMGW_CONFIG:-llmgw.yaml}

clean:
	rm -rf $(VENV) .state *.egg-info
