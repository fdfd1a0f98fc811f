# scanoutd — run `make demo` to watch the built-in demo, `make test` to run every test.
SHELL := /bin/bash
CARGO ?= cargo
# The system Python carries the spice-gtk GObject bindings; another python3 may come first.
PYTHON ?= /usr/bin/python3
LISTEN ?= 127.0.0.1:5900
METRICS ?= 127.0.0.1:9100
DEMO_ARGS ?=

.PHONY: all deps build release demo demo-qemu test-guest test test-rust test-e2e lint bench clean

all: build

# Install every system package (idempotent; needs root or sudo).
deps:
	@scripts/install-deps

build:
	$(CARGO) build --workspace

release:
	$(CARGO) build --release -p scanoutd

# Serve the animated demo; watch it with: remote-viewer spice://$(LISTEN)
demo: deps release
	@echo "scanoutd demo: connect with   remote-viewer spice://$(LISTEN)   (metrics: http://$(METRICS)/metrics)"
	target/release/scanoutd serve --source demo --listen $(LISTEN) --metrics $(METRICS) --disable-ticketing $(DEMO_ARGS)

# The test guest (a Debian kernel + an initramfs running crates/testguest), for the QEMU tests.
test-guest:
	@scripts/build-test-guest

# Boot the test guest under QEMU and serve it; watch it with: remote-viewer spice://$(LISTEN)
demo-qemu: deps release test-guest
	@scripts/demo-qemu --listen $(LISTEN) --metrics $(METRICS) $(DEMO_ARGS)

# Every test (Rust workspace, then end to end), ending with a summary of what ran, passed,
# failed and was skipped and why. SCANOUTD_REQUIRE=qemu,egl,... turns skips for those parts
# into failures (.ci/run sets it); SCANOUTD_TEST_STRESS=1 adds a CPU hog to the e2e suite.
test: deps build test-guest
	@CARGO=$(CARGO) PYTHON=$(PYTHON) scripts/run-tests

test-rust:
	$(CARGO) test --workspace

# End-to-end tests with the real spice-gtk client library and remote-viewer.
test-e2e: build test-guest
	SCANOUTD_BIN=$(CURDIR)/target/debug/scanoutd $(PYTHON) -m pytest -v -rsP tests/e2e

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Benchmarks with the real client (release build).
bench: deps release test-guest build
	SCANOUTD_BIN=$(CURDIR)/target/release/scanoutd PYTHON=$(PYTHON) bench/run.sh

clean:
	$(CARGO) clean
