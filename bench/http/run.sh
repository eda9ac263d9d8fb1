#!/usr/bin/env bash
# bench/http/run.sh -- wrk against faultmaven and against nginx (+ lua-nginx-module) on loopback.
#
# Targets (each measured with the same wrk settings, one after another):
#   fm-live     faultmaven  GET /health/live   (answered in C, no Lua)
#   nginx-live  nginx       GET /health/live   (static file, same bytes)
#   fm-lua      faultmaven  GET /              (Lua route, table -> JSON)
#   nginx-lua   nginx       GET /              (content_by_lua_block, cjson.encode of a table)
# nginx serves the same bytes / the same JSON fields as the faultmaven binary under test: both bodies
# are fetched from faultmaven before nginx is configured (defaults below when faultmaven is not run).
#
# Settings (environment):
#   DURATION=10s CONNECTIONS=64 THREADS=2   wrk -d / -c / -t
#   WARMUP=2s                               short unmeasured wrk run before each target (0 = none)
#   RUNS=1                                  measured runs per target; the run with the median req/s is reported
#   FM_WORKERS=2 FM_HTTP_IO_THREADS=2       faultmaven serve --workers / --io-threads
#   NGINX_WORKERS=2                         nginx worker_processes
#   ACCESS_LOG=0                            0: faultmaven LOG_LEVEL=warn and nginx access_log off (default)
#                                           1: faultmaven LOG_LEVEL=info (access lines to a file) and nginx
#                                              access_log to a file -- closer to production
#   LOG_LEVEL                               override faultmaven's LOG_LEVEL (default from ACCESS_LOG)
#   FM_BIN=path                             use this faultmaven binary (no build)
#   FM_HOME=dir                             faultmaven --home (config.lua, lua/); default: this source tree
#   BUILD=1                                 1: if build-bench/faultmaven is missing, configure and build it
#                                              (Release); an existing one is NOT rebuilt. 0: never run cmake
#   SERVERS="faultmaven nginx"              which servers to run ("nginx" alone tests the nginx half)
#   NGINX_MODULES=/usr/lib/nginx/modules    where ndk_http_module.so / ngx_http_lua_module.so live
#   KEEP_TMP=0                              1: keep the temp dir (configs, logs, raw wrk output)
#
# Exit status: non-zero only when something fails to run (build, server start, wrk). Missing the
# performance target prints MISS and still exits 0.
set -euo pipefail
# shellcheck disable=SC2317  # functions called from traps look unreachable to shellcheck
# the whole script is one { ... } block so bash parses it fully before running it (editing the file
# during a run cannot change the running script)
{

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"

DURATION="${DURATION:-10s}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-2}"
WARMUP="${WARMUP:-2s}"
RUNS="${RUNS:-1}"
FM_WORKERS="${FM_WORKERS:-2}"
FM_HTTP_IO_THREADS="${FM_HTTP_IO_THREADS:-2}"
NGINX_WORKERS="${NGINX_WORKERS:-2}"
ACCESS_LOG="${ACCESS_LOG:-0}"
if [ "$ACCESS_LOG" = 1 ]; then FM_LOG_LEVEL="${LOG_LEVEL:-info}"; else FM_LOG_LEVEL="${LOG_LEVEL:-warn}"; fi
BUILD="${BUILD:-1}"
SERVERS="${SERVERS:-faultmaven nginx}"
NGINX_MODULES="${NGINX_MODULES:-/usr/lib/nginx/modules}"
KEEP_TMP="${KEEP_TMP:-0}"
FM_HOME_DIR="${FM_HOME:-$ROOT}"   # config.lua and lua/ live here: the source tree

# Target of the issue: Lua JSON route at 64 connections >= 0.5 x nginx+Lua req/s, p99 < 5 ms.
TARGET_RATIO=0.5
TARGET_P99_MS=5

LIVE_BODY='{"status":"alive"}'
ROOT_JSON='{"name":"faultmaven","version":"0.1.0"}'

die() { echo "run.sh: error: $*" >&2; exit 1; }
log() { echo "== $*"; }
has_server() { case " $SERVERS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

# --- bounded durations ------------------------------------------------------------------------
to_seconds() { # "10s" "10" "2m" "500ms"(rounded up to 1) -> integer seconds
  local v="$1"
  case "$v" in
    *ms) echo 1 ;;
    *s) echo "${v%s}" ;;
    *m) echo $(( ${v%m} * 60 )) ;;
    *h) echo $(( ${v%h} * 3600 )) ;;
    *) echo "$v" ;;
  esac
}
DUR_S="$(to_seconds "$DURATION")"
WARM_S="$(to_seconds "$WARMUP")"
[[ "$DUR_S" =~ ^[0-9]+$ && "$DUR_S" -ge 1 && "$DUR_S" -le 600 ]] || die "DURATION must be 1s..600s (got $DURATION)"
[[ "$WARM_S" =~ ^[0-9]+$ && "$WARM_S" -le 60 ]] || die "WARMUP must be 0..60s (got $WARMUP)"
[[ "$CONNECTIONS" =~ ^[0-9]+$ && "$CONNECTIONS" -ge 1 ]] || die "CONNECTIONS must be a positive integer"
[[ "$THREADS" =~ ^[0-9]+$ && "$THREADS" -ge 1 && "$THREADS" -le "$CONNECTIONS" ]] || die "THREADS must be 1..CONNECTIONS"
[[ "$RUNS" =~ ^[0-9]+$ && "$RUNS" -ge 1 && "$RUNS" -le 20 ]] || die "RUNS must be 1..20"

command -v wrk >/dev/null || die "wrk not found (apt-get install wrk)"
command -v curl >/dev/null || die "curl not found"
if has_server nginx; then
  command -v nginx >/dev/null || die "nginx not found (apt-get install nginx libnginx-mod-http-lua)"
  for m in ndk_http_module.so ngx_http_lua_module.so; do
    [ -f "$NGINX_MODULES/$m" ] || die "$NGINX_MODULES/$m not found (apt-get install libnginx-mod-http-lua; or set NGINX_MODULES)"
  done
fi

# --- temp dir and cleanup -----------------------------------------------------------------------
TMP="$(mktemp -d "${TMPDIR:-/tmp}/fm-bench-http.XXXXXX")"
# nginx workers drop privileges (user nobody when started as root) and must read the static file.
chmod 755 "$TMP"
FM_PID=""
NGINX_PID=""
WRK_PID=""

# shellcheck source=../lib.sh
source "$HERE/../lib.sh"
cleanup() {
  local rc=$?
  stop_pid "$WRK_PID" wrk
  stop_pid "$FM_PID" faultmaven
  stop_pid "$NGINX_PID" nginx
  if [ "$KEEP_TMP" = 1 ]; then echo "run.sh: kept $TMP" >&2; else rm -rf "$TMP"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- free loopback port ---------------------------------------------------------------------------
port_in_use() {
  if command -v ss >/dev/null; then
    [ -n "$(ss -Htln "sport = :$1" 2>/dev/null)" ]
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  fi
}
pick_port() { # [exclude]
  local p _
  for _ in $(seq 1 500); do
    p=$(( 20000 + (RANDOM * 32768 + RANDOM) % 40000 ))
    [ "$p" != "${1:-}" ] || continue
    port_in_use "$p" || { echo "$p"; return 0; }
  done
  return 1
}

# wait until URL answers 200, while PID is alive
wait_http() { # url pid name logfile
  local _
  for _ in $(seq 1 150); do
    if ! kill -0 "$2" 2>/dev/null; then
      echo "run.sh: $3 exited during startup; last log lines:" >&2
      tail -n 30 "$4" >&2 || true
      return 1
    fi
    if curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "run.sh: $3 did not answer $1 within 15 s; last log lines:" >&2
  tail -n 30 "$4" >&2 || true
  return 1
}

# --- faultmaven binary ----------------------------------------------------------------------------
FM_BUILD_NOTE=""
find_fm_bin() {
  if [ -n "${FM_BIN:-}" ]; then
    [ -x "$FM_BIN" ] || die "FM_BIN=$FM_BIN is not executable"
  else
    find_built_fm_bin
  fi
  local cache bt
  cache="$(dirname "$FM_BIN")/CMakeCache.txt"
  bt="$(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$cache" 2>/dev/null || true)"
  FM_BUILD_NOTE="${FM_BIN#"$ROOT"/} (CMAKE_BUILD_TYPE=${bt:-unknown}, built $(date -r "$FM_BIN" '+%Y-%m-%d %H:%M'))"
}
find_built_fm_bin() {
  if [ ! -x "$ROOT/build-bench/faultmaven" ] && [ "$BUILD" = 1 ] && [ -f "$ROOT/CMakeLists.txt" ]; then
    log "building release binary in build-bench/ (cmake -DCMAKE_BUILD_TYPE=Release)"
    if ! { cmake -S "$ROOT" -B "$ROOT/build-bench" -DCMAKE_BUILD_TYPE=Release >"$TMP/build.log" 2>&1 &&
           cmake --build "$ROOT/build-bench" -j2 >>"$TMP/build.log" 2>&1; }; then
      echo "run.sh: release build in build-bench/ failed; last lines:" >&2
      tail -n 20 "$TMP/build.log" >&2
      if [ -x "$ROOT/build/faultmaven" ]; then
        echo "run.sh: falling back to build/faultmaven" >&2
      else
        die "no faultmaven binary"
      fi
    fi
  fi
  if [ -x "$ROOT/build-bench/faultmaven" ]; then
    FM_BIN="$ROOT/build-bench/faultmaven"
  elif [ -x "$ROOT/build/faultmaven" ]; then
    FM_BIN="$ROOT/build/faultmaven"
  else
    die "no faultmaven binary (build-bench/faultmaven or build/faultmaven); set FM_BIN or build first"
  fi
}

# --- start servers --------------------------------------------------------------------------------
start_faultmaven() {
  FM_PORT="$(pick_port "${NGINX_PORT:-}")" || die "no free port"
  mkdir -p "$TMP/fm-data"
  log "starting faultmaven on 127.0.0.1:$FM_PORT (workers=$FM_WORKERS io-threads=$FM_HTTP_IO_THREADS LOG_LEVEL=$FM_LOG_LEVEL)"
  # the rate limiter is off: wrk is one client sending tens of thousands of requests a second
  # (RATE_LIMIT_ENABLED=true measures it on this path; the limiter has its own numbers in tests)
  RATE_LIMIT_ENABLED="${RATE_LIMIT_ENABLED:-false}" LOG_LEVEL="$FM_LOG_LEVEL" \
    "$FM_BIN" serve --host 127.0.0.1 --port "$FM_PORT" \
    --data-dir "$TMP/fm-data" --home "$FM_HOME_DIR" \
    --workers "$FM_WORKERS" --io-threads "$FM_HTTP_IO_THREADS" --log-level "$FM_LOG_LEVEL" \
    </dev/null >"$TMP/fm.stdout" 2>"$TMP/fm.log" &
  FM_PID=$!
  wait_http "http://127.0.0.1:$FM_PORT/" "$FM_PID" faultmaven "$TMP/fm.log" || die "faultmaven failed to start"
}

start_nginx() {
  NGINX_PORT="$(pick_port "${FM_PORT:-}")" || die "no free port"
  mkdir -p "$TMP/nginx/www/health" "$TMP/nginx/logs" "$TMP/nginx/tmp"
  chmod -R a+rX "$TMP/nginx"
  printf '%s' "$LIVE_BODY" >"$TMP/nginx/www/health/live"
  printf '%s' "$ROOT_JSON" >"$TMP/nginx/root.json"
  local access
  if [ "$ACCESS_LOG" = 1 ]; then access="access_log $TMP/nginx/logs/access.log;"; else access="access_log off;"; fi
  cat >"$TMP/nginx/nginx.conf" <<EOF
load_module $NGINX_MODULES/ndk_http_module.so;
load_module $NGINX_MODULES/ngx_http_lua_module.so;

worker_processes $NGINX_WORKERS;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/logs/error.log warn;

events {
    worker_connections 4096;
}

http {
    $access
    sendfile on;
    tcp_nodelay on;
    keepalive_timeout 65;
    # nginx 1.22 closes a keep-alive connection after 1000 requests by default; faultmaven
    # (libmicrohttpd) does not, so lift the limit to compare request handling, not reconnects.
    keepalive_requests 1000000;
    server_tokens off;
    # keep the static file's descriptor open instead of open/fstat/close per request
    open_file_cache max=64 inactive=60s;

    client_body_temp_path $TMP/nginx/tmp/body;
    proxy_temp_path       $TMP/nginx/tmp/proxy;
    fastcgi_temp_path     $TMP/nginx/tmp/fastcgi;
    uwsgi_temp_path       $TMP/nginx/tmp/uwsgi;
    scgi_temp_path        $TMP/nginx/tmp/scgi;

    # cjson is loaded once; root_fields holds the fields of faultmaven's GET / answer
    init_by_lua_block {
        cjson = require "cjson"
        local f = assert(io.open("$TMP/nginx/root.json", "rb"))
        root_fields = cjson.decode(f:read("*a"))
        f:close()
    }

    server {
        listen 127.0.0.1:$NGINX_PORT;
        server_name localhost;

        # static file, same bytes as faultmaven's /health/live body
        location = /health/live {
            root $TMP/nginx/www;
            default_type application/json;
        }

        # same JSON as faultmaven's GET /: a fresh Lua table per request, encoded with cjson
        location = / {
            default_type application/json;
            content_by_lua_block {
                local t = {}
                for k, v in pairs(root_fields) do t[k] = v end
                ngx.print(cjson.encode(t))
            }
        }
    }
}
EOF
  nginx -t -q -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -e "$TMP/nginx/logs/error.log" >"$TMP/nginx/logs/test.log" 2>&1 \
    || { cat "$TMP/nginx/logs/test.log" >&2; die "nginx config test failed"; }
  log "starting nginx on 127.0.0.1:$NGINX_PORT (worker_processes=$NGINX_WORKERS, access_log $([ "$ACCESS_LOG" = 1 ] && echo on || echo off))"
  nginx -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -e "$TMP/nginx/logs/error.log" -g 'daemon off;' \
    </dev/null >"$TMP/nginx/logs/stdout.log" 2>&1 &
  NGINX_PID=$!
  wait_http "http://127.0.0.1:$NGINX_PORT/" "$NGINX_PID" nginx "$TMP/nginx/logs/error.log" || die "nginx failed to start"
}

# GET url -> prints "status<TAB>body"
fetch() {
  local body status
  body="$(curl -sS --max-time 5 -o - -w '\n%{http_code}' "$1")" || return 1
  status="${body##*$'\n'}"
  body="${body%$'\n'*}"
  printf '%s\t%s\n' "$status" "$body"
}
check_target() { # name url expected-status
  local r
  r="$(fetch "$2")" || die "$1: GET $2 failed"
  [ "${r%%$'\t'*}" = "$3" ] || die "$1: GET $2 -> status ${r%%$'\t'*}, body: ${r#*$'\t'}"
  printf '   %-11s %s -> %s %s\n' "$1" "$2" "${r%%$'\t'*}" "${r#*$'\t'}"
}

# a wrk failure is most often a server that went away: say which, with its log
servers_alive() {
  local rc=0
  if [ -n "$FM_PID" ] && ! kill -0 "$FM_PID" 2>/dev/null; then
    echo "run.sh: faultmaven (pid $FM_PID) is no longer running; last log lines:" >&2
    grep -v '"msg":"access"' "$TMP/fm.log" | tail -n 15 >&2 || true
    rc=1
  fi
  if [ -n "$NGINX_PID" ] && ! kill -0 "$NGINX_PID" 2>/dev/null; then
    echo "run.sh: nginx (pid $NGINX_PID) is no longer running; last log lines:" >&2
    tail -n 15 "$TMP/nginx/logs/error.log" >&2 || true
    rc=1
  fi
  return "$rc"
}

# --- wrk ------------------------------------------------------------------------------------------
declare -A RPS P50 P99 PMAX ERRS BPR
TARGETS=()
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<" $2"; }

bench_target() { # name url
  local name="$1" url="$2" run out line lines=""
  if [ "$WARM_S" -gt 0 ]; then
    timeout $((WARM_S + 30)) wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" "$url" >/dev/null 2>&1 &
    WRK_PID=$!
    wait "$WRK_PID" || { WRK_PID=""; servers_alive || true; die "wrk warm-up failed for $name ($url)"; }
    WRK_PID=""
  fi
  for run in $(seq 1 "$RUNS"); do
    out="$TMP/wrk-$name-$run.txt"
    log "wrk $name run $run/$RUNS: wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency $url"
    # in the background + wait, so that a signal to this script runs the cleanup trap at once
    timeout $((DUR_S + 60)) wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency \
      -s "$HERE/report.lua" "$url" >"$out" 2>&1 &
    WRK_PID=$!
    if ! wait "$WRK_PID"; then
      WRK_PID=""
      cat "$out" >&2
      servers_alive || true
      die "wrk failed for $name ($url)"
    fi
    WRK_PID=""
    grep -v '^FMBENCH ' "$out" | sed 's/^/   | /'
    servers_alive || die "a server stopped during the $name run; its numbers are not valid"
    line="$(grep '^FMBENCH ' "$out")" || die "no FMBENCH line in wrk output for $name"
    lines+="$(field rps "$line") $line"$'\n'
  done
  # median by req/s
  line="$(printf '%s' "$lines" | sort -n -k1,1 | sed -n "$(( (RUNS + 1) / 2 ))p" | cut -d' ' -f2-)"
  RPS[$name]="$(field rps "$line")"
  P50[$name]="$(awk -v u="$(field p50_us "$line")" 'BEGIN{printf "%.2f", u/1000}')"
  P99[$name]="$(awk -v u="$(field p99_us "$line")" 'BEGIN{printf "%.2f", u/1000}')"
  PMAX[$name]="$(awk -v u="$(field max_us "$line")" 'BEGIN{printf "%.1f", u/1000}')"
  ERRS[$name]="$(( $(field err_connect "$line") + $(field err_read "$line") + $(field err_write "$line") +
                   $(field err_status "$line") + $(field err_timeout "$line") ))"
  BPR[$name]="$(awk -v b="$(field bytes "$line")" -v n="$(field requests "$line")" 'BEGIN{printf "%d", (n>0)?b/n:0}')"
  TARGETS+=("$name")
}

# --- main -----------------------------------------------------------------------------------------
if has_server faultmaven; then
  find_fm_bin
  start_faultmaven
  check_target fm-live "http://127.0.0.1:$FM_PORT/health/live" 200
  check_target fm-lua "http://127.0.0.1:$FM_PORT/" 200
  LIVE_BODY="$(fetch "http://127.0.0.1:$FM_PORT/health/live" | cut -f2-)"
  ROOT_JSON="$(fetch "http://127.0.0.1:$FM_PORT/" | cut -f2-)"
fi
if has_server nginx; then
  start_nginx
  check_target nginx-live "http://127.0.0.1:$NGINX_PORT/health/live" 200
  check_target nginx-lua "http://127.0.0.1:$NGINX_PORT/" 200
fi

LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
CPU_MODEL="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)"
NCPU="$(nproc)"
echo
echo "machine: $NCPU CPUs, ${CPU_MODEL:-unknown CPU}, $(uname -sr)"
echo "wrk: $(wrk -v 2>&1 | head -n1 | cut -d' ' -f1-2); nginx: $(nginx -v 2>&1 | sed 's/.*nginx\///')"
has_server faultmaven && echo "faultmaven: $FM_BUILD_NOTE; $("$FM_BIN" version 2>/dev/null | head -n1 || true)"
echo "settings: wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency (warm-up $WARMUP, runs $RUNS); faultmaven workers=$FM_WORKERS io-threads=$FM_HTTP_IO_THREADS LOG_LEVEL=$FM_LOG_LEVEL; nginx worker_processes=$NGINX_WORKERS access_log $([ "$ACCESS_LOG" = 1 ] && echo on || echo off)"
echo "load average before the run: $LOAD_BEFORE"
if awk -v l="${LOAD_BEFORE%% *}" 'BEGIN{exit !(l+0 > 0.5)}'; then
  echo "WARNING: the machine is not idle (1-min load ${LOAD_BEFORE%% *}); other work skews these numbers"
fi
echo "NOTE: wrk and the server under test share the same $NCPU cores on loopback; absolute numbers"
echo "      understate both servers, the faultmaven/nginx ratios are the meaningful output."
echo

has_server faultmaven && bench_target fm-live "http://127.0.0.1:$FM_PORT/health/live"
has_server nginx && bench_target nginx-live "http://127.0.0.1:$NGINX_PORT/health/live"
has_server faultmaven && bench_target fm-lua "http://127.0.0.1:$FM_PORT/"
has_server nginx && bench_target nginx-lua "http://127.0.0.1:$NGINX_PORT/"

describe() {
  case "$1" in
    fm-live) echo "faultmaven GET /health/live (C)" ;;
    nginx-live) echo "nginx static file" ;;
    fm-lua) echo "faultmaven GET / (Lua route)" ;;
    nginx-lua) echo "nginx content_by_lua + cjson" ;;
  esac
}
echo
echo "load average after the run: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "Results (wrk -t$THREADS -c$CONNECTIONS -d$DURATION, loopback, wrk shares the $NCPU cores):"
echo
printf '| %-10s | %-31s | %10s | %8s | %8s | %8s | %6s | %6s |\n' target what "req/s" "p50 ms" "p99 ms" "max ms" errors "B/resp"
printf '|%s|%s|%s|%s|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..12})" "$(printf -- '-%.0s' {1..33})" \
  "$(printf -- '-%.0s' {1..11}):" "$(printf -- '-%.0s' {1..9}):" "$(printf -- '-%.0s' {1..9}):" \
  "$(printf -- '-%.0s' {1..9}):" "$(printf -- '-%.0s' {1..7}):" "$(printf -- '-%.0s' {1..7}):"
for t in "${TARGETS[@]}"; do
  printf '| %-10s | %-31s | %10.0f | %8s | %8s | %8s | %6s | %6s |\n' "$t" "$(describe "$t")" \
    "${RPS[$t]}" "${P50[$t]}" "${P99[$t]}" "${PMAX[$t]}" "${ERRS[$t]}" "${BPR[$t]}"
done
echo

ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b+0 == 0) print "n/a"; else printf "%.2f", a/b }'; }
if has_server faultmaven && has_server nginx; then
  echo "Ratios faultmaven/nginx (req/s: higher is better for faultmaven; p50/p99: lower is better):"
  for pair in "live fm-live nginx-live" "lua fm-lua nginx-lua"; do
    read -r kind a b <<<"$pair"
    printf '  %-5s req/s %s   p50 %s   p99 %s\n' "$kind" "$(ratio "${RPS[$a]}" "${RPS[$b]}")" \
      "$(ratio "${P50[$a]}" "${P50[$b]}")" "$(ratio "${P99[$a]}" "${P99[$b]}")"
  done
  echo
  r="$(ratio "${RPS[fm-lua]}" "${RPS[nginx-lua]}")"
  verdict="$(awk -v r="$r" -v p="${P99[fm-lua]}" -v tr="$TARGET_RATIO" -v tp="$TARGET_P99_MS" -v e="${ERRS[fm-lua]}" \
    'BEGIN{ print (r != "n/a" && r+0 >= tr && p+0 < tp && e+0 == 0) ? "PASS" : "MISS" }')"
  echo "Target (Lua JSON route at 64 connections: req/s >= ${TARGET_RATIO} x nginx+Lua, p99 < ${TARGET_P99_MS} ms):"
  echo "  $verdict  (req/s ratio $r, p99 ${P99[fm-lua]} ms, errors ${ERRS[fm-lua]})"
  [ "$CONNECTIONS" = 64 ] || echo "  note: this run used $CONNECTIONS connections; the target is defined at 64"
  echo
else
  echo "Only '$SERVERS' ran: no ratios, no target check."
fi

exit 0
}
