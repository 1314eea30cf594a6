# The two commands a newcomer needs: `make chat` and `make test`. Each installs uv when it is missing
# and syncs the locked environment first; Tandem starts its embedded Redis itself when TANDEM_REDIS_URL is unset.
SHELL := /bin/bash
PYTHON ?= python3
# uv from PATH, else a private copy that pip puts in .tools/uv (pip --target works on any Python,
# including one marked externally managed, and needs no directory on PATH).
UV_HOME := $(CURDIR)/.tools/uv
UV := $(or $(shell command -v uv 2>/dev/null),$(UV_HOME)/bin/uv)

.PHONY: chat test lint sync uv bench browser

uv:
	@command -v uv >/dev/null 2>&1 || [ -x "$(UV_HOME)/bin/uv" ] || { \
		echo "installing uv into .tools/uv (once)"; \
		$(PYTHON) -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target "$(UV_HOME)" uv; }

sync: uv
	@$(UV) sync --locked --all-extras --quiet

chat: sync
	@$(UV) run --locked tandem chat

lint: sync
	$(UV) run --locked ruff check .
	$(UV) run --locked ruff format --check .
	$(UV) run --locked pyright

# Headless Chromium checks the HTML scenario report. Installed from Debian when missing and we
# can (root with apt); elsewhere that one test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		  { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || \
		  echo "note: chromium not installed; the HTML-report browser test will be skipped"; }

# pytest exits 5 when it collects no tests (e.g. `make test PYTEST_ARGS='-k nothing'`): not a failure.
test: lint browser
	@$(UV) run --locked pytest $(PYTEST_ARGS); status=$$?; \
		if [ $$status -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$status

bench: sync
	@for script in bench/*.py; do $(UV) run --locked python $$script || exit $$?; done
