#!/usr/bin/env bash
# Installs what is missing, builds build/faultmaven (as serve.sh does) and runs
# `faultmaven diagnose` on the files given, from where you are (relative paths work). The report
# goes to stdout, the build's output to stderr. FM_BUILD_DIR picks another build directory.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${FM_BUILD_DIR:-build}"
case "$build" in /*) ;; *) build="$root/$build" ;; esac
{
  "$root/scripts/install-deps.sh" build
  cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$build" -j"$(nproc)" --target faultmaven
} >&2
FM_HOME="$root" exec "$build/faultmaven" diagnose "$@"
