# fieldmesh — developer entry points. CMake does the building; this file only strings the steps
# together so that on a fresh Debian 12 machine, as root, `make demo` and `make check` just work.
# Every target that builds first runs tools/deps.sh (the one list of Debian packages), which
# installs what is missing, or does nothing when all is installed. `make help` lists the targets.

PREFIX       ?= /usr/local
DESTDIR      ?=
JOBS         ?= 2
FUZZ_SECONDS ?= 60
CMAKE        ?= cmake
CTEST        ?= ctest

BUILD_DIR := build
ASAN_DIR  := build-asan
TSAN_DIR  := build-tsan
FUZZ_DIR  := build-fuzz

# Stamp: tools/deps.sh runs again only when it changes or a package is installed or removed.
DEPS_STAMP := $(BUILD_DIR)/.deps-stamp
DPKG_DB    := $(wildcard /var/lib/dpkg/status)

FUZZ_TARGETS := $(basename $(notdir $(wildcard tests/fuzz/fuzz_*.c)))

.DEFAULT_GOAL := build
MAKEFLAGS += --no-print-directory
# Each step parallelises inside cmake/ctest (JOBS); running steps side by side would overload a
# 2-core machine and interleave their output.
.NOTPARALLEL:
.PHONY: help deps build demo demo-embedded check check-asan check-tsan bench install fuzz fuzz-build fuzz-check format \
        format-check determinism clean

help: ## list the targets
	@echo "fieldmesh make targets (variables: PREFIX=$(PREFIX) DESTDIR= JOBS=$(JOBS)" \
	      "FUZZ_SECONDS=$(FUZZ_SECONDS)):"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | \
	    awk 'BEGIN {FS = ":.*## "} {printf "  make %-13s %s\n", $$1, $$2}'

deps: $(DEPS_STAMP) ## install missing Debian packages (tools/deps.sh)

$(DEPS_STAMP): tools/deps.sh $(DPKG_DB)
	tools/deps.sh
	@mkdir -p $(@D) && touch $@

build: deps ## release build (RelWithDebInfo) in build/
	$(CMAKE) -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	    -DCMAKE_INSTALL_PREFIX=$(PREFIX)
	$(CMAKE) --build $(BUILD_DIR) -j$(JOBS)

demo: build ## three live nodes on loopback: writes, a conflict, convergence (tools/demo-live.sh)
	tools/demo-live.sh $(BUILD_DIR)/fieldmesh

demo-embedded: build ## the in-process three-replica demo, no network (build/fieldmesh-demo)
	$(BUILD_DIR)/fieldmesh-demo

check: build check-asan check-tsan ## the whole suite: release build, ASan/UBSan ctest, TSan simulator
	@if command -v qemu-system-x86_64 >/dev/null 2>&1 && [ "$$(id -u)" -eq 0 ]; then \
	    $(MAKE) check-ble; \
	else \
	    echo "check: skipping check-ble (needs root and qemu-system-x86_64, as in CI)"; \
	fi

check-asan: deps ## ASan+UBSan Debug build in build-asan/ and its ctest (incl. format/determinism)
	$(CMAKE) -S . -B $(ASAN_DIR) -DCMAKE_BUILD_TYPE=Debug -DFM_SANITIZE=ON
	$(CMAKE) --build $(ASAN_DIR) -j$(JOBS)
	cd $(ASAN_DIR) && $(CTEST) --output-on-failure -j$(JOBS)

# The simulator runs node shards on threads (sim/sim_int.h): ThreadSanitizer on a run with
# churn, crashes and a partition at 1, 2 and 3 threads, which must also agree bit for bit, and
# the signature cache the threads share.
check-tsan: deps ## ThreadSanitizer build of the simulator test in build-tsan/, its threads scenario
	$(CMAKE) -S . -B $(TSAN_DIR) -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	    -DCMAKE_C_FLAGS="-fsanitize=thread -fno-omit-frame-pointer" \
	    -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=thread"
	$(CMAKE) --build $(TSAN_DIR) -j$(JOBS) --target test_sim test_sigcache
	TSAN_OPTIONS="halt_on_error=1 exitcode=66" $(TSAN_DIR)/tests/test_sim threads
	TSAN_OPTIONS="halt_on_error=1 exitcode=66" $(TSAN_DIR)/tests/test_sigcache

# One VM boot (tests/ble/vm.sh; the image is built once and cached in /var/tmp/fieldmesh-ble),
# three daemons on virtual LE controllers, no IP path between them (tests/ble/guest-test.sh).
check-ble: build ## BLE tests on real BlueZ in a qemu VM (root; prints ble_sync_bytes_per_s)
	tests/ble/check-ble.sh $(BUILD_DIR); rc=$$?; [ $$rc -eq 77 ] && rc=0; exit $$rc

bench: build ## run the benchmarks (build/fieldmesh-bench --json)
	$(BUILD_DIR)/fieldmesh-bench --json

install: build ## install into $(DESTDIR)$(PREFIX)
	DESTDIR="$(DESTDIR)" $(CMAKE) --install $(BUILD_DIR) --prefix "$(PREFIX)"

fuzz-build: deps ## build the libFuzzer targets with clang in build-fuzz/
	CC=clang $(CMAKE) -S . -B $(FUZZ_DIR) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFM_FUZZ=ON
	$(CMAKE) --build $(FUZZ_DIR) -j$(JOBS)

fuzz-check: fuzz-build ## run every fuzz target once over its seed corpus (ctest -R fuzz)
	cd $(FUZZ_DIR) && $(CTEST) --output-on-failure -j$(JOBS) -R '^fuzz\.'

# Each target fuzzes a scratch copy of its corpus (build-fuzz/corpus-run/<target>/) so the repo is
# not polluted; crashes land in build-fuzz/fuzz/artifacts/. Promote interesting inputs by hand.
fuzz: fuzz-build ## fuzz each target for FUZZ_SECONDS (default 60) on tests/fuzz/corpus/<target>/
	@if [ -z "$(FUZZ_TARGETS)" ]; then echo "no fuzz targets (tests/fuzz/fuzz_*.c)"; exit 1; fi
	@set -e; for t in $(FUZZ_TARGETS); do \
	    run=$(FUZZ_DIR)/corpus-run/$$t; rm -rf $$run; mkdir -p $$run $(FUZZ_DIR)/fuzz/artifacts; \
	    if [ -d tests/fuzz/corpus/$$t ]; then cp -R tests/fuzz/corpus/$$t/. $$run/; fi; \
	    echo "== $$t: $(FUZZ_SECONDS)s on $$run"; \
	    $(FUZZ_DIR)/fuzz/$$t -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
	        -artifact_prefix=$(FUZZ_DIR)/fuzz/artifacts/ $$run; \
	done

format: ## reformat every project .c/.h in place with clang-format
	tools/check-format.sh --fix

format-check: ## check formatting only (also a ctest entry)
	tools/check-format.sh

determinism: ## check STYLE.md rule 8 only (also a ctest entry)
	tools/check-determinism.sh

clean: ## remove every build directory
	rm -rf $(BUILD_DIR) $(ASAN_DIR) $(TSAN_DIR) $(FUZZ_DIR)
