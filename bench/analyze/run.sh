#!/usr/bin/env bash
# bench/analyze/run.sh -- evidence analysis throughput and template-mining accuracy.
#
#   1. signature scan: the 21 signatures of bench/analyze/signatures.tsv over a generated 1 GiB
#      mixed log (gen_mixed.c: nginx access and error, application, Java with stack traces),
#      Hyperscan (scan_bench.c, one thread) against `grep -c -E -f` (LC_ALL=C) and `rg -c -f -j1`
#      on the same file and the same patterns, in the same run; best of ROUNDS each, the file
#      in the page cache. The ratios are printed. Before timing, each signature's count on a
#      64 MB sample is checked against `grep -c -E` of that signature alone: the set means the
#      same to both.
#   2. the driver on the same file: modules off (built-ins + secret triggers, line splitting,
#      encoding counts, secrets) and with every module (classification picks logs + stack).
#   3. template mining: the logs module alone (bench/analyze/drain_bench.c, the logs engineer's
#      harness) on LABELLED_LINES generated labelled lines (gen_labelled.c): lines/s, and the
#      pairwise precision / recall / F1 and grouping accuracy against the true template ids.
#
# Environment: SIZE (bytes, default 1073741824), ROUNDS (3), LABELLED_LINES (1000000),
#   BUILD_DIR (build-bench-an: a Release build, no sanitizers), KEEP=1 keeps the generated files
#   in $TMPDIR/fm-bench-analyze for the next run (default: kept; KEEP=0 removes them).
# Needs: cmake, cc, grep, rg (ripgrep), the engine's build dependencies.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
SIZE="${SIZE:-1073741824}"
ROUNDS="${ROUNDS:-3}"
LABELLED_LINES="${LABELLED_LINES:-1000000}"
BUILD_DIR="${BUILD_DIR:-$ROOT/build-bench-an}"
KEEP="${KEEP:-1}"
WORK="${TMPDIR:-/tmp}/fm-bench-analyze"
mkdir -p "$WORK"
cd "$ROOT"

die() { echo "run.sh: $*" >&2; exit 1; }
command -v rg >/dev/null || die "ripgrep (rg) not found: apt-get install ripgrep"
command -v grep >/dev/null || die "grep not found"

echo "== build ($BUILD_DIR, Release)"
cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD_DIR" -j2 --target fmcore >/dev/null
LIBS="$(pkg-config --libs lua5.4 libmicrohttpd libcurl jansson libedit sqlite3 libpq hiredis \
  libsodium libhs) -lpthread -lm -lstdc++"
CFLAGS="-O2 -D_GNU_SOURCE -Iengine -Iengine/analysis -Iproviders/db -Iproviders/kv \
  $(pkg-config --cflags jansson libhs lua5.4)"
# shellcheck disable=SC2086
cc $CFLAGS -o "$WORK/scan_bench" bench/analyze/scan_bench.c "$BUILD_DIR/libfmcore.a" $LIBS
cc -O2 -o "$WORK/gen_mixed" bench/analyze/gen_mixed.c
HAVE_DRAIN=0
if [ -f bench/analyze/drain_bench.c ] && [ -f bench/analyze/gen_labelled.c ]; then
  cc -O2 -o "$WORK/gen_labelled" bench/analyze/gen_labelled.c
  # shellcheck disable=SC2086
  cc $CFLAGS -o "$WORK/drain_bench" bench/analyze/drain_bench.c "$BUILD_DIR/libfmcore.a" $LIBS
  HAVE_DRAIN=1
fi

LOG="$WORK/mixed-$SIZE.log"
if [ ! -s "$LOG" ]; then
  echo "== generating $LOG ($SIZE bytes, seed 7)"
  "$WORK/gen_mixed" "$SIZE" 7 > "$LOG"
fi
cut -f2 bench/analyze/signatures.tsv > "$WORK/patterns.txt"
NSIG="$(wc -l < "$WORK/patterns.txt")"
cat "$LOG" > /dev/null # into the page cache

echo "== checking the set on a 64 MB sample: Hyperscan per-signature lines vs grep -c -E"
head -c 67108864 "$LOG" > "$WORK/sample.log"
"$WORK/scan_bench" bench/analyze/signatures.tsv "$WORK/sample.log" 1 > "$WORK/sample.out"
bad=0
while IFS=$'\t' read -r name pat; do
  ours="$(awk -v n="$name" '$1 == "count" && $2 == n {print $3}' "$WORK/sample.out")"
  theirs="$(LC_ALL=C grep -c -E -e "$pat" "$WORK/sample.log" || true)"
  if [ "$ours" != "$theirs" ]; then echo "  MISMATCH $name: hyperscan $ours, grep $theirs"; bad=1; fi
done < bench/analyze/signatures.tsv
[ "$bad" = 0 ] && echo "  all $NSIG signatures agree"
[ "$bad" = 0 ] || die "the signature set does not mean the same to grep and Hyperscan"

best_time() { # best wall time of ROUNDS runs of "$@" (stdout to $WORK/last.out)
  local best="" t0 t1 t
  for _ in $(seq "$ROUNDS"); do
    t0="$(date +%s.%N)"
    "$@" > "$WORK/last.out"
    t1="$(date +%s.%N)"
    t="$(echo "$t1 - $t0" | bc -l)"
    if [ -z "$best" ] || [ "$(echo "$t < $best" | bc -l)" = 1 ]; then best="$t"; fi
  done
  echo "$best"
}

echo "== signature scan: $NSIG signatures over $SIZE bytes, best of $ROUNDS"
T_GREP="$(LC_ALL=C best_time grep -c -E -f "$WORK/patterns.txt" "$LOG")"
GREP_LINES="$(cat "$WORK/last.out")"
T_RG="$(best_time rg --no-config -j1 -c -f "$WORK/patterns.txt" "$LOG")"
RG_LINES="$(cat "$WORK/last.out")"
"$WORK/scan_bench" bench/analyze/signatures.tsv "$LOG" "$ROUNDS" full > "$WORK/scan.out" \
  2> "$WORK/scan.err"
cat "$WORK/scan.err"
J="$(tail -n 1 "$WORK/scan.out")"
jget() { echo "$J" | sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p"; }
T_HS="$(jget scan_s)"
MB="$(echo "$(stat -c %s "$LOG") / 1000000" | bc -l)"
printf "  %-36s %8.3f s  %8.1f MB/s   (lines matching any: %s)\n" "grep -c -E -f (LC_ALL=C)" \
  "$T_GREP" "$(echo "$MB / $T_GREP" | bc -l)" "$GREP_LINES"
printf "  %-36s %8.3f s  %8.1f MB/s   (lines matching any: %s)\n" "rg -c -f -j1" \
  "$T_RG" "$(echo "$MB / $T_RG" | bc -l)" "$RG_LINES"
printf "  %-36s %8.3f s  %8.1f MB/s   (per-signature lines, summed: %s)\n" \
  "fm scan (Hyperscan stream, 1 thread)" "$T_HS" "$(jget scan_MBps)" "$(jget matching_lines_sum)"
printf "  ratio: fm scan is %.1fx grep -E, %.1fx rg\n" "$(echo "$T_GREP / $T_HS" | bc -l)" \
  "$(echo "$T_RG / $T_HS" | bc -l)"
echo "== driver on the same file ($(jget lines) lines)"
printf "  %-36s %8.3f s  %8.1f MB/s\n" "modules off (built-ins, secrets)" \
  "$(jget driver_scan_only_s)" "$(jget driver_scan_only_MBps)"
printf "  %-36s %8.3f s  %8.1f MB/s  %12.0f lines/s\n" "every module (logs + stack)" \
  "$(jget full_s)" "$(jget full_MBps)" "$(jget full_lines_per_s)"
echo "  peak resident set of the whole scan_bench process: $(jget max_rss_kib) KiB"

if [ "$HAVE_DRAIN" = 1 ]; then
  LAB="$WORK/labelled-$LABELLED_LINES.log"
  [ -s "$LAB" ] || "$WORK/gen_labelled" "$LABELLED_LINES" 42 > "$LAB"
  echo "== template mining (logs module alone, drain_bench) on $LABELLED_LINES labelled lines"
  "$WORK/drain_bench" "$LAB" "$ROUNDS" | tail -n 1
fi
echo "== json"
echo "$J"
if [ "$KEEP" = 0 ]; then rm -rf "$WORK"; fi
