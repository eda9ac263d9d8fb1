#!/usr/bin/env bash
# bench/eval/run.sh -- playbook evaluation: every bundle of bench/eval/incidents/ through the
# investigation engine's offline path (fm.agent.context.from_files + fm.agent.runner.run) against
# knowledge search alone over the kb/ pack, in the same run (bench/eval/eval.lua does the work).
#
#   bench/eval/run.sh [--verbose] [--only SUBSTRING]
#
# Settings (environment):
#   FM_BIN=path     use this faultmaven binary (no build)
#   BUILD=1         1: if build-bench-e/faultmaven is missing, configure and build it (Release, -j2)
#   FM_HOME=dir     config.lua, lua/, playbooks/, kb/ (default: this source tree)
# Prints the table per bundle, the totals and the ratios; exit status non-zero only when
# something fails to run.
set -euo pipefail
{
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
BUILD="${BUILD:-1}"
FM_HOME_DIR="${FM_HOME:-$ROOT}"

die() { echo "run.sh: error: $*" >&2; exit 1; }

if [ -z "${FM_BIN:-}" ]; then
  FM_BIN="$ROOT/build-bench-e/faultmaven"
  if [ ! -x "$FM_BIN" ] && [ "$BUILD" = 1 ]; then
    echo "== building release binary in build-bench-e/ (cmake -DCMAKE_BUILD_TYPE=Release)" >&2
    cmake -S "$ROOT" -B "$ROOT/build-bench-e" -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build "$ROOT/build-bench-e" -j2 >/dev/null
  fi
fi
[ -x "$FM_BIN" ] || die "no faultmaven binary at $FM_BIN (set FM_BIN or BUILD=1)"

echo "machine: $(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1),"\
  "load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "faultmaven: ${FM_BIN#"$ROOT"/} (built $(date -r "$FM_BIN" '+%Y-%m-%d %H:%M')); home $FM_HOME_DIR;"\
  "commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"\
  "($(git -C "$ROOT" status --porcelain -- playbooks lua/fm/agent 2>/dev/null | wc -l) uncommitted"\
  "files under playbooks/ and lua/fm/agent/)"
cd "$FM_HOME_DIR"
FM_HOME="$FM_HOME_DIR" "$FM_BIN" exec "$HERE/eval.lua" "$@"
}
