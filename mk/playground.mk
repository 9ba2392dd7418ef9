# Browser tests of the playground (tests/playground): Debian's chromium and the playwright package.
# Included by the Makefile (`-include ... $(wildcard mk/*.mk)`). Nothing is installed when both are there, and
# no browser is ever downloaded: playwright drives the system chromium (`executable_path`), never its own.
CHROMIUM ?= /usr/bin/chromium

.PHONY: playground-prereqs
playground-prereqs: install
	@test -x $(CHROMIUM) || { \
	  command -v apt-get >/dev/null || { echo "install chromium (expected at $(CHROMIUM))" >&2; exit 1; }; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }
	@$(BIN)/python -c 'import playwright' 2>/dev/null || $(BIN)/pip install --quiet playwright

TEST_PREREQS += playground-prereqs

# Tests write their screenshot to a temporary folder; this refreshes the one the README and docs show.
.PHONY: playground-screenshot
playground-screenshot: playground-prereqs
	TWICE_PLAYGROUND_SCREENSHOT=$(CURDIR)/docs/img/playground.png $(BIN)/pytest -q \
	  tests/playground/test_playground.py::test_three_plans_stream_side_by_side_with_trace_and_cost
