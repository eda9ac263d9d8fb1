#!/usr/bin/env bash
# Installs what is missing, builds with AddressSanitizer + UndefinedBehaviorSanitizer and
# warnings as errors, and runs every test (C unit tests and busted specs) through ctest.
# Extra arguments go to ctest (for example -R api/01).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh test
BUILD_DIR=${BUILD_DIR:-build-asan}
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Debug -DFM_ASAN=ON -DFM_WERROR=ON >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:halt_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$PWD/tests/lsan.supp}
cd "$BUILD_DIR"
ctest --output-on-failure -j"${CTEST_JOBS:-2}" "$@"
