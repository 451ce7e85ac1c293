# One command runs the gateway, one runs the tests (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: install install-test run test test-fast test-cluster lint bench check clean web web-test

# The web UI (services/ui-api/web: Svelte + Vite + TypeScript), built into ui-api's package, which serves it
# at /. Built again when its files are missing or older than the sources; `make run` starts the gateway
# even when it cannot be built (no npm: / then says how).
WEB := services/ui-api/web
WEB_BUILT := services/ui-api/llmgw_ui_api/static/index.html
WEB_SOURCES := $(shell find $(WEB)/src $(WEB)/public -type f 2>/dev/null) \
	$(addprefix $(WEB)/,index.html package.json package-lock.json vite.config.ts svelte.config.js tsconfig.json openapi.json)
# npm ci only when node_modules is older than the lock file (npm writes node_modules/.package-lock.json)
WEB_DEPS = { [ node_modules/.package-lock.json -nt package-lock.json ] || npm ci --no-audit --no-fund; }

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[chdb]'  # chDB: ClickHouse in-process for llmgw run
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[chdb,test]'
	touch $(TEST_STAMP)

install: $(STAMP)
install-test: $(TEST_STAMP)

run: $(STAMP)
	@$(MAKE) --no-print-directory web || echo "web UI not built: the gateway starts without it (its / says how to build it)"
	$(BIN)/llmgw run

web: $(WEB_BUILT)

$(WEB_BUILT): $(WEB_SOURCES)
	@command -v npm >/dev/null 2>&1 || { echo "web UI: npm not found; install Node.js 20.19 or newer (with npm), then: make web"; exit 1; }
	cd $(WEB) && $(WEB_DEPS) && npm run build

# the web UI's type check and unit tests (Vitest); its browser test is tests/e2e/test_web_ui.py
web-test:
	cd $(WEB) && $(WEB_DEPS) && npm run check && npm test

test: $(TEST_STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# tests/cluster: the gateway on NATS and Redis clusters started on loopback (docs/scaling.md); not in `make test`
test-cluster: $(TEST_STAMP)
	$(BIN)/python -m pytest -q tests/cluster $(PYTEST_ARGS)

# tests/unit only: in-process, no servers (tests/service, tests/e2e and tests/faults need NATS, Redis, chDB)
test-fast: $(TEST_STAMP)
	$(BIN)/python -m pytest -q tests/unit $(PYTEST_ARGS)

# ruff (rules in pyproject.toml; no formatter), mypy on libs/common and the edge core, the import contracts
# ([tool.importlinter]: the layers point one way). CI runs it before the tests.
lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	PYTHONPATH=bench $(BIN)/lint-imports

# make bench: this gateway beside LiteLLM and Portkey (installed, pinned, into .bench/ by python -m llmgw_bench
# --peers); make bench PEERS=0: the quick gateway-vs-direct run. The benchmarks (bench/llmgw_bench) are not part
# of the gateway's package: they run from the source tree.
PEERS ?= 1
bench: $(STAMP)
	@# wrk is a Debian package: install it when we can (root with apt), else the bench says what to do
	@if ! command -v wrk >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get install -y -qq wrk || { apt-get update -qq && apt-get install -y -qq wrk; }; \
	fi
	PYTHONPATH=bench $(BIN)/python -m llmgw_bench $(if $(filter 1,$(PEERS)),--peers)

check: $(STAMP)
	$(BIN)/llmgw config check $${LLMGW_CONFIG:-llmgw.yaml}

clean:
	rm -rf $(VENV) .state *.egg-info services/ui-api/llmgw_ui_api/static $(WEB)/node_modules
