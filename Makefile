# The two commands a newcomer needs: `make chat` and `make test`. Each bootstraps uv and syncs
# the locked environment first. Tandem starts its embedded Redis itself when TANDEM_REDIS_URL is unset.
SHELL := /bin/bash
PYTHON ?= python3
# uv from PATH, else the copy pip installs (runnable as `python3 -m uv` wherever pip put it).
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")

.PHONY: chat test lint sync uv bench browser

uv:
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 || \
		$(PYTHON) -m pip install --quiet --user uv 2>/dev/null || \
		$(PYTHON) -m pip install --quiet uv

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

# pytest exits 5 when it collects no tests; that is not a failure of the suite.
test: lint browser
	@$(UV) run --locked pytest; status=$$?; if [ $$status -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$status

bench: sync
	@for script in bench/*.py; do $(UV) run --locked python $$script || exit $$?; done
