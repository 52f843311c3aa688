# A thin wrapper for humans; CMake does the work. Every target installs missing Debian
# packages first (deps/install.sh), so a fresh clone needs nothing else.
BUILD ?= build
JOBS ?= $(shell nproc)
# The suite's deadlines (lctest.waitFor's) times this: they only turn a hang into a failure,
# and CI's machine may be slow and loaded (measured: the suite ~6x slower beside two CPU hogs).
TEST_TIME_SCALE ?= 5
SAN_TIME_SCALE ?= 8
SAN_ENV := LCTEST_TIME_SCALE=$(SAN_TIME_SCALE) ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

.PHONY: all deps build demo test check test-sanitize valgrind fuzz bench clean

all: build

deps:
	@deps/install.sh

build: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLCLUSTER_WERROR=ON
	cmake --build $(BUILD) -j$(JOBS)

# The README's first command: build, then run a real cluster that serves and stops.
demo: build
	$(BUILD)/lcluster apps/demo.lua

# Formatting and lint, as CI checks them.
check: deps
	clang-format --dry-run --Werror runtime/*.c runtime/*.h runtime/tlsmod/*.c $(wildcard fuzz/*.c)
	luacheck -q lualib spec apps bench

# The README's second command: build, check, and run the whole suite with our binary.
test: build check
	LCTEST_TIME_SCALE=$(TEST_TIME_SCALE) $(BUILD)/lcluster test spec

# The same suite on an ASan + UBSan build (CI runs it after `make test`).
test-sanitize: deps
	@deps/install.sh sanitize
	cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DLCLUSTER_SANITIZE=ON -DLCLUSTER_WERROR=ON
	cmake --build build-asan -j$(JOBS)
	$(SAN_ENV) build-asan/lcluster test spec

# The C core under valgrind's memcheck: the demo (master, workers, IPC, round-robin hand-off,
# HTTP, respawn, reload, disconnect) and the runtime fixtures; any error or definite leak fails.
VALGRIND := valgrind --trace-children=yes --error-exitcode=9 --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite -q
valgrind: build
	@command -v valgrind >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y valgrind
	$(VALGRIND) $(BUILD)/lcluster apps/demo.lua > /dev/null
	$(VALGRIND) $(BUILD)/lcluster spec/fixtures/rt_timers.lua > /dev/null
	$(VALGRIND) $(BUILD)/lcluster spec/fixtures/rt_uncaught.lua > /dev/null

# libFuzzer harnesses (fuzz/), each run for FUZZ_SECONDS on its committed corpus.
FUZZ_SECONDS ?= 20
fuzz: deps
	@deps/install.sh fuzz
	CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug -DLCLUSTER_FUZZ=ON
	cmake --build build-fuzz -j$(JOBS)
	@for f in build-fuzz/fuzz/*_fuzz; do \
	  name=$$(basename $$f _fuzz); mkdir -p build-fuzz/corpus-$$name; \
	  echo "fuzzing $$name for $(FUZZ_SECONDS)s"; \
	  $$f -max_total_time=$(FUZZ_SECONDS) -print_final_stats=0 build-fuzz/corpus-$$name fuzz/corpus/$$name || exit 1; \
	done

bench: deps
	@deps/install.sh bench
	bench/run

clean:
	rm -rf build build-asan build-fuzz
