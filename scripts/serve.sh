#!/usr/bin/env bash
# Installs what is missing, builds, and starts `faultmaven serve` with the embedded defaults
# (127.0.0.1:8090, data in ./data). Extra arguments go to `faultmaven serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh build
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)"
exec build/faultmaven serve "$@"
