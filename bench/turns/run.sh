#!/usr/bin/env bash
# bench/turns/run.sh -- latency of POST /api/v1/cases/{id}/turns with a 10 MB log upload, against
# nginx receiving the same multipart POST, in the same run.
#
#   fm-10mb     faultmaven serve (Release, SQLite, loopback): one turn = multipart upload of a
#               10,000,000-byte log (-F files=@...), stored, analysed, the investigation engine
#               run, the answer returned. Every turn uploads DIFFERENT bytes (the first line
#               carries the turn number), so the per-case dedup never skips the analysis.
#   nginx-10mb  nginx + lua-nginx-module: the same multipart POST, the whole body read into a
#               temp file (client_body_in_file_only clean, ngx.req.read_body()), the answer is the
#               file's size, which the script checks against what curl sent.
#   fm-small / nginx-small   the same with a 10,000-byte log: the per-turn cost without the bulk
#               upload and analysis (where the engine's time goes, with the analysis timed alone).
# Requests alternate between the two servers (fm turn i, then nginx POST i), one at a time, a new
# curl process and connection each; curl's time_total is the latency. Warm-up turns are not
# counted. Percentiles are nearest-rank (with 40 turns p99 is the slowest one).
#
# Settings (environment):
#   TURNS=40 SMALL_TURNS=40 WARMUP=2   measured turns per size, unmeasured first turns
#   BYTES=10000000 SMALL_BYTES=10000   upload sizes (MAX_UPLOAD_SIZE_MB defaults to 10 MiB)
#   FM_WORKERS=2 FM_HTTP_IO_THREADS=2 NGINX_WORKERS=2
#   FM_BIN=path     faultmaven binary (default build-bench-e/faultmaven, built when missing if
#   BUILD=1)        BUILD=1, Release, -j2)
#   FM_HOME=dir     config.lua, lua/, playbooks/, kb/ (default: this source tree)
#   NGINX_MODULES=/usr/lib/nginx/modules    ndk_http_module.so, ngx_http_lua_module.so
#   KEEP_TMP=0      1: keep the temp dir (logs, responses, raw timings)
set -euo pipefail
# shellcheck disable=SC2317  # functions called from traps look unreachable to shellcheck
{
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"

TURNS="${TURNS:-40}"
SMALL_TURNS="${SMALL_TURNS:-40}"
WARMUP="${WARMUP:-2}"
BYTES="${BYTES:-10000000}"
SMALL_BYTES="${SMALL_BYTES:-10000}"
FM_WORKERS="${FM_WORKERS:-2}"
FM_HTTP_IO_THREADS="${FM_HTTP_IO_THREADS:-2}"
NGINX_WORKERS="${NGINX_WORKERS:-2}"
BUILD="${BUILD:-1}"
NGINX_MODULES="${NGINX_MODULES:-/usr/lib/nginx/modules}"
KEEP_TMP="${KEEP_TMP:-0}"
FM_HOME_DIR="${FM_HOME:-$ROOT}"

die() { echo "run.sh: error: $*" >&2; exit 1; }
log() { echo "== $*"; }

for v in TURNS SMALL_TURNS WARMUP BYTES SMALL_BYTES; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer"
done
[ "$TURNS" -ge 1 ] || die "TURNS must be >= 1"
command -v curl >/dev/null || die "curl not found"
command -v jq >/dev/null || die "jq not found"
command -v nginx >/dev/null || die "nginx not found (apt-get install nginx libnginx-mod-http-lua)"
for m in ndk_http_module.so ngx_http_lua_module.so; do
  [ -f "$NGINX_MODULES/$m" ] || die "$NGINX_MODULES/$m not found (apt-get install libnginx-mod-http-lua)"
done

TMP="$(mktemp -d "${TMPDIR:-/tmp}/fm-bench-turns.XXXXXX")"
chmod 755 "$TMP"
FM_PID=""
NGINX_PID=""
# shellcheck source=../lib.sh
source "$HERE/../lib.sh"
cleanup() {
  local rc=$?
  stop_pid "$FM_PID" faultmaven
  stop_pid "$NGINX_PID" nginx
  if [ "$KEEP_TMP" = 1 ]; then echo "run.sh: kept $TMP" >&2; else rm -rf "$TMP"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_in_use() { [ -n "$(ss -Htln "sport = :$1" 2>/dev/null)" ]; }
pick_port() {
  local p _
  for _ in $(seq 1 500); do
    p=$(( 20000 + (RANDOM * 32768 + RANDOM) % 40000 ))
    [ "$p" != "${1:-}" ] || continue
    port_in_use "$p" || { echo "$p"; return 0; }
  done
  return 1
}
wait_http() { # url pid name logfile
  local _
  for _ in $(seq 1 300); do
    kill -0 "$2" 2>/dev/null || { tail -n 30 "$4" >&2; die "$3 exited during startup"; }
    curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  tail -n 30 "$4" >&2
  die "$3 did not answer $1 within 30 s"
}

# --- binary ---------------------------------------------------------------------------------------
if [ -z "${FM_BIN:-}" ]; then
  FM_BIN="$ROOT/build-bench-e/faultmaven"
  if [ ! -x "$FM_BIN" ] && [ "$BUILD" = 1 ]; then
    log "building release binary in build-bench-e/ (cmake -DCMAKE_BUILD_TYPE=Release, -j2)"
    { cmake -S "$ROOT" -B "$ROOT/build-bench-e" -DCMAKE_BUILD_TYPE=Release &&
      cmake --build "$ROOT/build-bench-e" -j2; } >"$TMP/build.log" 2>&1 \
      || { tail -n 20 "$TMP/build.log" >&2; die "release build failed"; }
  fi
fi
[ -x "$FM_BIN" ] || die "no faultmaven binary at $FM_BIN (set FM_BIN or BUILD=1)"
BT="$(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$(dirname "$FM_BIN")/CMakeCache.txt" 2>/dev/null || true)"

# --- the logs ---------------------------------------------------------------------------------------
log "generating the base logs ($BYTES and $SMALL_BYTES bytes)"
"$FM_BIN" exec "$HERE/gen_log.lua" "$TMP/base-big.log" "$BYTES"
"$FM_BIN" exec "$HERE/gen_log.lua" "$TMP/base-small.log" "$SMALL_BYTES"
HEADER_LEN="$(head -n1 "$TMP/base-big.log" | wc -c)"
# turn_file SIZE N: the base log of that size with the turn number in its fixed-width first line
turn_file() {
  local f="$TMP/turn-$1.log"
  { printf '# bench-turns %04d synthetic service log for bench/turns/run.sh\n' "$2"
    tail -c +"$((HEADER_LEN + 1))" "$TMP/base-$1.log"; } >"$f"
  echo "$f"
}

# --- servers ----------------------------------------------------------------------------------------
FM_PORT="$(pick_port)" || die "no free port"
mkdir -p "$TMP/fm-data"
log "starting faultmaven on 127.0.0.1:$FM_PORT (SQLite in $TMP/fm-data, workers=$FM_WORKERS)"
( cd "$FM_HOME_DIR" && RATE_LIMIT_ENABLED=false FM_ALLOW_DEV_LOGIN=true LOG_LEVEL=warn \
  exec "$FM_BIN" serve --host 127.0.0.1 --port "$FM_PORT" --data-dir "$TMP/fm-data" \
    --home "$FM_HOME_DIR" --workers "$FM_WORKERS" --io-threads "$FM_HTTP_IO_THREADS" \
    --log-level warn ) </dev/null >"$TMP/fm.stdout" 2>"$TMP/fm.log" &
FM_PID=$!
wait_http "http://127.0.0.1:$FM_PORT/health/live" "$FM_PID" faultmaven "$TMP/fm.log"

NGINX_PORT="$(pick_port "$FM_PORT")" || die "no free port"
mkdir -p "$TMP/nginx/logs" "$TMP/nginx/tmp/body"
chmod -R a+rwX "$TMP/nginx"
cat >"$TMP/nginx/nginx.conf" <<EOF
load_module $NGINX_MODULES/ndk_http_module.so;
load_module $NGINX_MODULES/ngx_http_lua_module.so;
worker_processes $NGINX_WORKERS;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/logs/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx/tmp/body;
    proxy_temp_path       $TMP/nginx/tmp/proxy;
    fastcgi_temp_path     $TMP/nginx/tmp/fastcgi;
    uwsgi_temp_path       $TMP/nginx/tmp/uwsgi;
    scgi_temp_path        $TMP/nginx/tmp/scgi;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location = /health { return 200 "ok\n"; }
        # the whole multipart body is read to a temp file (removed after the request); the answer
        # is its size, so the caller can check that nginx read every byte
        location = /upload {
            client_max_body_size 64m;
            client_body_in_file_only clean;
            client_body_buffer_size 128k;
            content_by_lua_block {
                ngx.req.read_body()
                local path = ngx.req.get_body_file()
                local size = 0
                if path then
                    local f = io.open(path, "rb")
                    if f then size = f:seek("end"); f:close() end
                end
                ngx.header["Content-Type"] = "application/json"
                ngx.say('{"received_bytes":', size, '}')
            }
        }
    }
}
EOF
nginx -t -q -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -e "$TMP/nginx/logs/error.log" \
  >"$TMP/nginx/logs/test.log" 2>&1 || { cat "$TMP/nginx/logs/test.log" >&2; die "nginx config test failed"; }
log "starting nginx on 127.0.0.1:$NGINX_PORT (worker_processes=$NGINX_WORKERS)"
nginx -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -e "$TMP/nginx/logs/error.log" -g 'daemon off;' \
  </dev/null >"$TMP/nginx/logs/stdout.log" 2>&1 &
NGINX_PID=$!
wait_http "http://127.0.0.1:$NGINX_PORT/health" "$NGINX_PID" nginx "$TMP/nginx/logs/error.log"

# --- login, cases -----------------------------------------------------------------------------------
BASE="http://127.0.0.1:$FM_PORT/api/v1"
TOKEN="$(curl -sS --max-time 10 -X POST "$BASE/auth/dev-login" -H 'Content-Type: application/json' \
  -d '{"username":"bench-turns"}' | jq -r '.access_token // empty')"
[ -n "$TOKEN" ] || die "dev-login gave no access_token (FM_ALLOW_DEV_LOGIN=true?)"
new_case() {
  local id
  id="$(curl -sS --max-time 10 -X POST "$BASE/cases" -H "Authorization: Bearer $TOKEN" \
    -H 'Content-Type: application/json' \
    -d "{\"title\":\"bench turns $1\",\"description\":\"orders-api returns 500s since 00:20, logs attached\"}" \
    | jq -r '.case_id // empty')"
  [ -n "$id" ] || die "POST /cases gave no case_id"
  echo "$id"
}
CASE_BIG="$(new_case big)"
CASE_SMALL="$(new_case small)"

# --- turns ------------------------------------------------------------------------------------------
# fm_turn CASE FILE N -> appends "seconds" to $TMP/fm-<size>.txt after checking the answer
fm_turn() { # case size n measured
  local f out w code t
  f="$(turn_file "$2" "$3")"
  out="$TMP/resp-fm.json"
  w="$(curl -sS --max-time 300 -o "$out" -w '%{http_code} %{time_total}' \
    -H "Authorization: Bearer $TOKEN" \
    -F "query=here is the service log of turn $3, what is failing?" \
    -F "files=@$f;type=text/plain;filename=orders-api-$3.log" \
    "$BASE/cases/$1/turns")" || die "turn $3 ($2): curl failed"
  read -r code t <<<"$w"
  [ "$code" = 200 ] || { head -c 600 "$out" >&2; echo >&2; die "turn $3 ($2): HTTP $code"; }
  jq -e '(.attachments_processed | length) == 1 and (.attachments_processed[0].duplicate_of // null) == null' \
    "$out" >/dev/null || { head -c 600 "$out" >&2; die "turn $3 ($2): the upload was not processed as new evidence"; }
  if [ "$4" = 1 ]; then echo "$t" >>"$TMP/fm-$2.txt"; fi
  cp "$out" "$TMP/last-fm-$2.json"
}
nginx_post() { # size n measured
  local f out w code t up got
  f="$(turn_file "$1" "$2")"
  out="$TMP/resp-nginx.json"
  w="$(curl -sS --max-time 300 -o "$out" -w '%{http_code} %{time_total} %{size_upload}' \
    -F "query=here is the service log of turn $2, what is failing?" \
    -F "files=@$f;type=text/plain;filename=orders-api-$2.log" \
    "http://127.0.0.1:$NGINX_PORT/upload")" || die "nginx POST $2 ($1): curl failed"
  read -r code t up <<<"$w"
  [ "$code" = 200 ] || die "nginx POST $2 ($1): HTTP $code"
  got="$(jq -r '.received_bytes' "$out")"
  [ "$got" = "${up%.*}" ] || die "nginx POST $2 ($1): read $got bytes of a $up-byte body"
  if [ "$3" = 1 ]; then echo "$t" >>"$TMP/nginx-$1.txt"; fi
}

LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
run_phase() { # size turns case
  local i n=$(( WARMUP + $2 ))
  : >"$TMP/fm-$1.txt"; : >"$TMP/nginx-$1.txt"
  log "$1: $WARMUP warm-up + $2 measured turns, alternating faultmaven / nginx"
  for i in $(seq 1 "$n"); do
    local m=0
    [ "$i" -gt "$WARMUP" ] && m=1
    fm_turn "$3" "$1" "$i" "$m"
    nginx_post "$1" "$i" "$m"
  done
  kill -0 "$FM_PID" 2>/dev/null || die "faultmaven stopped during the run"
  kill -0 "$NGINX_PID" 2>/dev/null || die "nginx stopped during the run"
}
run_phase big "$TURNS" "$CASE_BIG"
[ "$SMALL_TURNS" -gt 0 ] && run_phase small "$SMALL_TURNS" "$CASE_SMALL"
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"

# the analysis alone, in process (fm.analyze.file on the big log with the playbooks' signature
# set, 5 times, median), the playbook runner on a ctx holding that one evidence item, and the
# upload's SHA-256
cat >"$TMP/analyze.lua" <<'EOF'
local analyze, time = require "fm.analyze", require "fm.time"
local set = require("fm.playbooks").signature_set()
local function median(f)
  local t = {}
  for i = 1, 5 do
    local s = time.monotonic()
    f()
    t[i] = time.monotonic() - s
  end
  table.sort(t)
  return t[3] * 1000
end
local a = median(function()
  assert(analyze.file(arg[1], { filename = "orders-api.log", signatures = set }))
end)
local ctx = assert(require("fm.agent.context").from_files({ arg[1] },
  { symptom = "orders-api returns 500s since 00:20, logs attached" }))
local runner = require "fm.agent.runner"
local r = median(function() runner.run(ctx) end)
local crypto = require "fm.crypto"
local h = median(function() assert(crypto.sha256_file(arg[1])) end)
print(string.format("%.1f %.1f %.1f", a, r, h))
EOF
read -r ANALYZE_MS RUNNER_MS HASH_MS <<<"$(cd "$FM_HOME_DIR" && FM_HOME="$FM_HOME_DIR" "$FM_BIN" exec \
  "$TMP/analyze.lua" "$(turn_file big 9999)" 2>/dev/null || echo "n/a n/a n/a")"

# --- report -----------------------------------------------------------------------------------------
stats() { # file -> "p50 p99 mean max" in ms (nearest rank)
  sort -n "$1" | awk '{ v[NR] = $1 * 1000; s += $1 * 1000 }
    END { n = NR; if (n == 0) { print "n/a n/a n/a n/a"; exit }
          i50 = int(n * 0.50); if (i50 < n * 0.50) i50++; if (i50 < 1) i50 = 1
          i99 = int(n * 0.99); if (i99 < n * 0.99) i99++; if (i99 < 1) i99 = 1
          printf "%.1f %.1f %.1f %.1f\n", v[i50], v[i99], s / n, v[n] }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b+0 == 0) print "n/a"; else printf "%.2f", a/b }'; }
echo
echo "machine: $(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1), $(uname -sr)"
echo "faultmaven: ${FM_BIN#"$ROOT"/} (CMAKE_BUILD_TYPE=${BT:-unknown}, built $(date -r "$FM_BIN" '+%Y-%m-%d %H:%M')),"\
  "commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?') + working tree;"\
  "serve --workers $FM_WORKERS --io-threads $FM_HTTP_IO_THREADS, SQLite, LOG_LEVEL=warn, RATE_LIMIT_ENABLED=false"
echo "nginx: $(nginx -v 2>&1 | sed 's/.*nginx\///'), worker_processes $NGINX_WORKERS, body to a temp file (client_body_in_file_only clean)"
echo "curl: $(curl --version | head -n1 | cut -d' ' -f1-2); one request at a time, a new connection each, fm and nginx alternating"
echo "load average: before $LOAD_BEFORE, after $LOAD_AFTER"
echo
printf '| %-11s | %-52s | %5s | %9s | %9s | %9s | %9s |\n' target what turns "p50 ms" "p99 ms" "mean ms" "max ms"
printf '|%s|%s|%s|%s|%s|%s|%s|\n' "-------------" "------------------------------------------------------" \
  "------:" "----------:" "----------:" "----------:" "----------:"
declare -A P50 P99
for pair in "fm big" "nginx big" "fm small" "nginx small"; do
  read -r sys size <<<"$pair"
  [ -s "$TMP/$sys-$size.txt" ] || continue
  read -r p50 p99 mean max <<<"$(stats "$TMP/$sys-$size.txt")"
  P50[$sys-$size]="$p50"; P99[$sys-$size]="$p99"
  bytes="$BYTES"; [ "$size" = small ] && bytes="$SMALL_BYTES"
  if [ "$sys" = fm ]; then what="faultmaven POST /cases/{id}/turns, $bytes-byte log"
  else what="nginx reads the same multipart body to a file"; fi
  printf '| %-11s | %-52s | %5s | %9s | %9s | %9s | %9s |\n' "$sys-$size" "$what" \
    "$(wc -l <"$TMP/$sys-$size.txt")" "$p50" "$p99" "$mean" "$max"
done
echo
echo "Ratios faultmaven/nginx (latency: lower is better for faultmaven):"
echo "  $BYTES-byte upload: p50 $(ratio "${P50[fm-big]}" "${P50[nginx-big]}")   p99 $(ratio "${P99[fm-big]}" "${P99[nginx-big]}")"
if [ -n "${P50[fm-small]:-}" ]; then
  echo "  $SMALL_BYTES-byte upload: p50 $(ratio "${P50[fm-small]}" "${P50[nginx-small]}")   p99 $(ratio "${P99[fm-small]}" "${P99[nginx-small]}")"
  echo
  echo "Where a big turn's time goes (p50s; estimates by difference):"
  awk -v big="${P50[fm-big]}" -v small="${P50[fm-small]}" -v nb="${P50[nginx-big]}" \
      -v ns="${P50[nginx-small]}" -v an="$ANALYZE_MS" -v rn="$RUNNER_MS" -v hs="$HASH_MS" 'BEGIN {
    up = nb - ns
    printf "  %-58s %8.1f ms\n", "big turn, p50", big
    printf "  %-58s %8.1f ms\n", "fixed per-turn cost (the small turn, p50)", small
    printf "  %-58s %8.1f ms\n", "receiving the extra bytes (nginx big - nginx small)", up
    if (an != "n/a") printf "  %-58s %8.1f ms\n", "fm.analyze.file of the big log alone (median of 5)", an
    rest = big - small - up - (an == "n/a" ? 0 : an)
    printf "  %-58s %8.1f ms\n", "the rest (multipart, spool, hash, store, engine)", rest
    if (hs != "n/a") printf "  %-58s %8.1f ms\n", "  of which: crypto.sha256_file of the big log (median)", hs
    if (rn != "n/a") printf "  %-58s %8.1f ms\n", "  of which: playbook runner on this one log alone (median)", rn
  }'
fi
if [ "$TURNS" -ge 20 ]; then
  # the case accumulates one evidence item per turn: does a turn slow down as it grows?
  first="$(head -n 10 "$TMP/fm-big.txt" >"$TMP/first.txt"; stats "$TMP/first.txt" | cut -d' ' -f1)"
  last="$(tail -n 10 "$TMP/fm-big.txt" >"$TMP/last.txt"; stats "$TMP/last.txt" | cut -d' ' -f1)"
  echo
  echo "fm-big p50 of the first 10 measured turns $first ms, of the last 10 $last ms"\
    "(the case holds $((WARMUP + 1))-$((WARMUP + 10)) vs $((WARMUP + TURNS - 9))-$((WARMUP + TURNS)) evidence items)"
fi
echo
agent="$(jq -r '.agent_response // "" | .[0:300]' "$TMP/last-fm-big.json" 2>/dev/null | tr '\n' ' ')"
echo "last big turn: turn_number $(jq -r '.turn_number' "$TMP/last-fm-big.json"), case_state $(jq -r '.case_state' "$TMP/last-fm-big.json"); agent_response starts: ${agent:0:200}"
exit 0
}
