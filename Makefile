# One command runs the gateway, one runs the tests (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: install install-test run test bench check clean web web-test

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

# the web UI's type check and unit tests (Vitest); its browser test is tests/test_web_ui.py
web-test:
	cd $(WEB) && $(WEB_DEPS) && npm run check && npm test

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
	rm -rf $(VENV) .state *.egg-info services/ui-api/llmgw_ui_api/static $(WEB)/node_modules
