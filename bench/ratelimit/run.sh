#!/usr/bin/env bash
# bench/ratelimit/run.sh -- the rate limiter's check: in-process (C) and through Redis (the
# middleware's script), each against a named peer in the same run; then its cost on the request path.
#
# 1. micro   rl_micro (bench/ratelimit/rl_micro.c, linked against libfmcore.a): fm_rl_take() vs the
#            peer "one pthread mutex + hash map + counter increment", 1 and 2 threads, 1k and 100k keys.
# 2. redis   redis-benchmark against a throwaway redis-server on loopback: EVALSHA of the middleware's
#            script (extracted from lua/fm/middleware/ratelimit.lua, its SHA checked against the one the
#            engine loads) vs the peer INCR (the cheapest Redis round trip); -c1 and -c16.
# 3. engine  wrk GET / on faultmaven: limiter disabled / in-process / through Redis (limits so high
#            that nothing is refused); ratios vs disabled.
# 4. nginx   (NGINX=1) wrk on an nginx static file without / with limit_req: the peer for "a
#            limiter's cost on the request path".
#
# Settings (environment):
#   OPS=3000000 MICRO_RUNS=3     checks per thread in each micro run; runs per row (median ns/check reported)
#   REDIS_N=50000 REDIS_N1=10000 REDIS_RUNS=3  redis-benchmark -n at -c16 / at -c1; runs (alternating
#                                INCR and the script; the run with the median rps is reported)
#   DURATION=8s WARMUP=2s CONNECTIONS=64 THREADS=2   wrk
#   FM_WORKERS=2 FM_HTTP_IO_THREADS=2                faultmaven serve
#   NGINX=1                      0: skip the nginx peer
#   FM_BIN=path                  faultmaven binary (default build-bench-rl/faultmaven, built when missing)
#   PARTS="micro redis engine"   which parts to run (nginx runs with engine when NGINX=1)
#   KEEP_TMP=0
# Exit status: non-zero only when something fails to run.
set -euo pipefail
# shellcheck disable=SC2317
{

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
BUILD_DIR="$ROOT/build-bench-rl"

OPS="${OPS:-3000000}"
MICRO_RUNS="${MICRO_RUNS:-3}"
REDIS_N="${REDIS_N:-50000}"
REDIS_N1="${REDIS_N1:-10000}"
REDIS_RUNS="${REDIS_RUNS:-3}"
DURATION="${DURATION:-8s}"
WARMUP="${WARMUP:-2s}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-2}"
FM_WORKERS="${FM_WORKERS:-2}"
FM_HTTP_IO_THREADS="${FM_HTTP_IO_THREADS:-2}"
NGINX="${NGINX:-1}"
PARTS="${PARTS:-micro redis engine}"
KEEP_TMP="${KEEP_TMP:-0}"
# limits so high nothing is refused in a run (config maxima: 1,000,000 a minute, burst 1,000,000):
# a bucket holds 1,000,000 and refills 16,667/s, more than wrk sends in WARMUP + DURATION here
RL_RPM=1000000
RL_BURST=1000000
NGINX_RATE=1000000

die() { echo "run.sh: error: $*" >&2; exit 1; }
log() { echo "== $*"; }
has_part() { case " $PARTS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
to_seconds() { local v="$1"; case "$v" in *s) echo "${v%s}" ;; *m) echo $(( ${v%m} * 60 )) ;; *) echo "$v" ;; esac; }
DUR_S="$(to_seconds "$DURATION")"
WARM_S="$(to_seconds "$WARMUP")"
[[ "$DUR_S" =~ ^[0-9]+$ && "$DUR_S" -ge 1 && "$DUR_S" -le 600 ]] || die "DURATION must be 1s..600s"
[[ "$WARM_S" =~ ^[0-9]+$ && "$WARM_S" -le 60 ]] || die "WARMUP must be 0..60s"

for c in cc curl wrk redis-server redis-cli redis-benchmark sha1sum; do
  command -v "$c" >/dev/null || die "$c not found (apt-get install gcc curl wrk redis-server redis-tools)"
done
if [ "$NGINX" = 1 ] && ! command -v nginx >/dev/null; then
  echo "run.sh: nginx not found: skipping the nginx peer (apt-get install nginx)" >&2
  NGINX=0
fi

TMP="$(mktemp -d "${TMPDIR:-/tmp}/fm-bench-rl.XXXXXX")"
chmod 755 "$TMP"
FM_PID="" REDIS_PID="" NGINX_PID="" CHILD_PID=""

# shellcheck source=../lib.sh
source "$HERE/../lib.sh"
cleanup() {
  local rc=$?
  stop_pid "$CHILD_PID" child
  stop_pid "$FM_PID" faultmaven
  stop_pid "$NGINX_PID" nginx
  stop_pid "$REDIS_PID" redis-server
  if [ "$KEEP_TMP" = 1 ]; then echo "run.sh: kept $TMP" >&2; else rm -rf "$TMP"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# a child in the background + wait, so that a signal runs the cleanup trap at once
run_child() { "$@" & CHILD_PID=$!; local rc=0; wait "$CHILD_PID" || rc=$?; CHILD_PID=""; return "$rc"; }

port_in_use() {
  if command -v ss >/dev/null; then [ -n "$(ss -Htln "sport = :$1" 2>/dev/null)" ]
  else (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; fi
}
pick_port() {
  local p _
  for _ in $(seq 1 500); do
    p=$(( 20000 + (RANDOM * 32768 + RANDOM) % 40000 ))
    port_in_use "$p" || { echo "$p"; return 0; }
  done
  return 1
}
wait_http() { # url pid name logfile
  local _
  for _ in $(seq 1 150); do
    kill -0 "$2" 2>/dev/null || { echo "run.sh: $3 exited during startup:" >&2; tail -n 30 "$4" >&2; return 1; }
    curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "run.sh: $3 did not answer $1 within 15 s:" >&2; tail -n 30 "$4" >&2; return 1
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b+0 == 0) print "n/a"; else printf "%.2f", a/b }'; }
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<" $2"; }

# rows of the result table
ROWS=()
declare -A WHAT RATE P50 P99 NOTE
add_row() { ROWS+=("$1"); WHAT[$1]="$2"; RATE[$1]="$3"; P50[$1]="$4"; P99[$1]="$5"; }

# --- build --------------------------------------------------------------------------------------
if [ -n "${FM_BIN:-}" ]; then
  [ -x "$FM_BIN" ] || die "FM_BIN=$FM_BIN is not executable"
  LIBFMCORE="$(dirname "$FM_BIN")/libfmcore.a"
else
  FM_BIN="$BUILD_DIR/faultmaven"
  LIBFMCORE="$BUILD_DIR/libfmcore.a"
  if [ ! -x "$FM_BIN" ] || [ ! -f "$LIBFMCORE" ]; then
    log "building release binary in build-bench-rl/ (cmake -DCMAKE_BUILD_TYPE=Release)"
    { cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release && cmake --build "$BUILD_DIR" -j2; } \
      >"$TMP/build.log" 2>&1 || { tail -n 20 "$TMP/build.log" >&2; die "release build failed"; }
  fi
fi
[ -f "$LIBFMCORE" ] || die "$LIBFMCORE not found (next to FM_BIN)"
BT="$(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$(dirname "$FM_BIN")/CMakeCache.txt" 2>/dev/null || true)"

START_S="$(date +%s)"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
echo "machine: $(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1), $(uname -sr)"
echo "faultmaven: ${FM_BIN#"$ROOT"/} (CMAKE_BUILD_TYPE=${BT:-unknown}); $(redis-server --version | cut -d' ' -f1-3); $(wrk -v 2>&1 | head -n1 | cut -d' ' -f1-2)$([ "$NGINX" = 1 ] && echo "; $(nginx -v 2>&1 | sed 's/.*: //')")"
echo "load average before the run: $LOAD_BEFORE"
awk -v l="${LOAD_BEFORE%% *}" 'BEGIN{exit !(l+0 > 0.5)}' && echo "WARNING: the machine is not idle (1-min load ${LOAD_BEFORE%% *}); other work skews these numbers"
echo

# --- 1. in-process micro-benchmark ------------------------------------------------------------------
if has_part micro; then
  log "compiling rl_micro.c against ${LIBFMCORE#"$ROOT"/} (cc -O2)"
  cc -O2 -std=c11 -Wall -Wextra -I"$ROOT/engine" "$HERE/rl_micro.c" "$LIBFMCORE" -lpthread -lm -o "$TMP/rl_micro" \
    >"$TMP/cc.log" 2>&1 || { cat "$TMP/cc.log" >&2; die "compiling rl_micro.c failed"; }
  for keys in 1000 100000; do
    for th in 1 2; do
      for impl in fm mutex; do
        # MICRO_RUNS runs, the one with the median ns/check is reported
        lines=""
        for _ in $(seq 1 "$MICRO_RUNS"); do
          out="$(run_child "$TMP/rl_micro" "$impl" "$th" "$keys" "$OPS")" || die "rl_micro $impl $th $keys failed"
          echo "   | $out"
          lines+="$(field ns_per_check "$out") $out"$'\n'
        done
        out="$(printf '%s' "$lines" | sort -n -k1,1 | sed -n "$(( (MICRO_RUNS + 1) / 2 ))p" | cut -d' ' -f2-)"
        key="micro-$impl-${th}t-$((keys / 1000))k"
        if [ "$impl" = fm ]; then w="fm_rl_take"; else w="peer: 1 mutex + hash map ++"; fi
        add_row "$key" "$w, $th thr, $((keys / 1000))k keys" "$(field checks_per_s "$out")" \
          "$(field p50_ns "$out")" "$(field p99_ns "$out")"
        NOTE[$key]="$(field ns_per_check "$out")"
        TIMER_NS="$(field timer_ns "$out")"
      done
    done
  done
  echo
fi

# --- Redis ----------------------------------------------------------------------------------------
start_redis() {
  REDIS_PORT="$(pick_port)" || die "no free port"
  mkdir -p "$TMP/redis"
  # as spec/helpers/init.lua (helpers.redis.start): loopback, no persistence
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$TMP/redis" \
    --daemonize no </dev/null >"$TMP/redis/redis.log" 2>&1 &
  REDIS_PID=$!
  local _
  for _ in $(seq 1 100); do
    kill -0 "$REDIS_PID" 2>/dev/null || { cat "$TMP/redis/redis.log" >&2; die "redis-server exited"; }
    [ "$(redis-cli -p "$REDIS_PORT" PING 2>/dev/null)" = PONG ] && break
    sleep 0.1
  done
  [ "$(redis-cli -p "$REDIS_PORT" PING 2>/dev/null)" = PONG ] || die "redis-server did not answer PING"
  log "redis-server $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/') on 127.0.0.1:$REDIS_PORT (no persistence)"
}
rcli() { redis-cli -p "$REDIS_PORT" "$@"; }

NEED_REDIS=0
has_part redis && NEED_REDIS=1
has_part engine && NEED_REDIS=1
if [ "$NEED_REDIS" = 1 ]; then
  start_redis
  # the middleware's script, byte for byte: the text of the Lua long string `local SCRIPT = [[ ... ]]`
  # (Lua drops the newline right after [[; the text ends with the newline before ]])
  awk '/^local SCRIPT = \[\[$/{f=1;next} f&&/^\]\]$/{exit} f{print}' "$ROOT/lua/fm/middleware/ratelimit.lua" >"$TMP/script.lua"
  [ -s "$TMP/script.lua" ] || die "could not extract the script from lua/fm/middleware/ratelimit.lua"
  SHA="$(rcli -x SCRIPT LOAD <"$TMP/script.lua")"
  [ "$SHA" = "$(sha1sum "$TMP/script.lua" | cut -d' ' -f1)" ] || die "SCRIPT LOAD returned $SHA, not the file's SHA1"
  RATE_ARG="$(awk -v r="$RL_RPM" 'BEGIN{ printf "%.17g", r / 60 }')"
  echo "   script: $(wc -l <"$TMP/script.lua") lines from lua/fm/middleware/ratelimit.lua, sha1 $SHA; args rate=$RATE_ARG/s capacity=$RL_BURST"
  [ "$(rcli EVALSHA "$SHA" 1 fm:bench:probe "$RATE_ARG" "$RL_BURST" | head -n1)" = 1 ] || die "EVALSHA of the script did not allow a request"
fi

# --- 2. redis-benchmark: the script vs INCR ---------------------------------------------------------
rb() { # key what clients n cmd... -> one run, its CSV line in RB_LINE
  local key="$1" c="$3" n="$4" out; shift 4
  out="$TMP/rb-$key.csv"
  rcli FLUSHALL >/dev/null
  run_child redis-benchmark -p "$REDIS_PORT" -n "$n" -c "$c" -r 100000 --csv "$@" >"$out" 2>"$out.err" \
    || { cat "$out.err" >&2; die "redis-benchmark failed for $key"; }
  RB_LINE="$(tail -n1 "$out" | tr -d '"' | cut -d, -f2-)"
  echo "   | $key: redis-benchmark -c$c -n$n $* -> rps,avg,min,p50,p95,p99,max(ms) = $RB_LINE"
}
rb_add() { # key what lines: the run with the median rps
  local line rps p50 p99
  line="$(printf '%s' "$3" | sort -t, -n -k1,1 | sed -n "$(( (REDIS_RUNS + 1) / 2 ))p")"
  IFS=, read -r rps _ _ p50 _ p99 _ <<<"$line"
  add_row "$1" "$2" "$rps" "$(awk -v v="$p50" 'BEGIN{printf "%.0f", v*1e6}')" "$(awk -v v="$p99" 'BEGIN{printf "%.0f", v*1e6}')"
}
if has_part redis; then
  log "redis-benchmark, INCR and the script alternating, $REDIS_RUNS runs each (keys fm:rl:read:ip:__rand_int__, -r 100000)"
  for c in 16 1; do
    n="$REDIS_N"; [ "$c" = 1 ] && n="$REDIS_N1"
    li="" ls=""
    for _ in $(seq 1 "$REDIS_RUNS"); do
      rb "redis-incr-c$c" "" "$c" "$n" INCR "fm:rl:read:ip:__rand_int__"; li+="$RB_LINE"$'\n'
      rb "redis-script-c$c" "" "$c" "$n" EVALSHA "$SHA" 1 "fm:rl:read:ip:__rand_int__" "$RATE_ARG" "$RL_BURST"; ls+="$RB_LINE"$'\n'
    done
    rb_add "redis-incr-c$c" "peer: redis-benchmark INCR, -c$c" "$li"
    rb_add "redis-script-c$c" "EVALSHA rate-limit script, -c$c" "$ls"
  done
  echo
fi

# --- 3. the engine: GET / with the limiter off / in-process / through Redis ------------------------------
wrk_row() { # key what url
  local key="$1" what="$2" url="$3" out line errs
  if [ "$WARM_S" -gt 0 ]; then run_child wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" "$url" >/dev/null 2>&1 || die "wrk warm-up failed ($key)"; fi
  out="$TMP/wrk-$key.txt"
  run_child timeout $((DUR_S + 60)) wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency \
    -s "$ROOT/bench/http/report.lua" "$url" >"$out" 2>&1 || { cat "$out" >&2; die "wrk failed ($key)"; }
  line="$(grep '^FMBENCH ' "$out")" || die "no FMBENCH line for $key"
  errs=$(( $(field err_connect "$line") + $(field err_read "$line") + $(field err_write "$line") + $(field err_status "$line") + $(field err_timeout "$line") ))
  echo "   | $key: wrk -t$THREADS -c$CONNECTIONS -d$DURATION $url -> $(field rps "$line") req/s, p50 $(field p50_us "$line") us, p99 $(field p99_us "$line") us, errors/non-2xx $errs"
  [ "$errs" = 0 ] || echo "   WARNING: $key had $errs errors or non-2xx answers (429s would mean the limit was reached)"
  add_row "$key" "$what" "$(field rps "$line")" "$(field p50_us "$line")000" "$(field p99_us "$line")000"
}
start_fm() { # enabled redis_url; another port when the picked one was taken meanwhile
  local try
  for try in 1 2 3; do
    start_fm_once "$@" && return 0
    grep -q 'in use' "$TMP/fm-$FM_PORT.log" 2>/dev/null && [ "$try" -lt 3 ] || die "faultmaven failed to start"
    echo "run.sh: port $FM_PORT was taken, trying another" >&2
  done
}
start_fm_once() {
  FM_PORT="$(pick_port)" || die "no free port"
  mkdir -p "$TMP/fm-data-$FM_PORT"
  RATE_LIMIT_ENABLED="$1" RATE_LIMIT_REQUESTS_PER_MINUTE="$RL_RPM" RATE_LIMIT_BURST_SIZE="$RL_BURST" \
    REDIS_URL="$2" LOG_LEVEL=warn \
    "$FM_BIN" serve --host 127.0.0.1 --port "$FM_PORT" --data-dir "$TMP/fm-data-$FM_PORT" --home "$ROOT" \
    --workers "$FM_WORKERS" --io-threads "$FM_HTTP_IO_THREADS" --log-level warn \
    </dev/null >"$TMP/fm-$FM_PORT.stdout" 2>"$TMP/fm-$FM_PORT.log" &
  FM_PID=$!
  wait_http "http://127.0.0.1:$FM_PORT/" "$FM_PID" faultmaven "$TMP/fm-$FM_PORT.log" || { FM_PID=""; return 1; }
}
limit_header() { curl -sS -D - -o /dev/null --max-time 5 "$1" | tr -d '\r' | sed -n 's/^[Xx]-[Rr]ate[Ll]imit-[Rr]emaining: //p'; }
if has_part engine; then
  log "faultmaven GET / (Lua route): RATE_LIMIT_REQUESTS_PER_MINUTE=$RL_RPM RATE_LIMIT_BURST_SIZE=$RL_BURST, workers=$FM_WORKERS io-threads=$FM_HTTP_IO_THREADS LOG_LEVEL=warn"
  start_fm false ""
  [ -z "$(limit_header "http://127.0.0.1:$FM_PORT/")" ] || die "limiter disabled but X-RateLimit-Remaining present"
  wrk_row fm-off "faultmaven GET /, limiter disabled" "http://127.0.0.1:$FM_PORT/"
  stop_pid "$FM_PID" faultmaven; FM_PID=""

  start_fm true ""
  [ -n "$(limit_header "http://127.0.0.1:$FM_PORT/")" ] || die "limiter enabled (in-process) but no X-RateLimit-Remaining header"
  wrk_row fm-memory "faultmaven GET /, limiter in-process" "http://127.0.0.1:$FM_PORT/"
  stop_pid "$FM_PID" faultmaven; FM_PID=""

  rcli FLUSHALL >/dev/null
  start_fm true "redis://127.0.0.1:$REDIS_PORT/0"
  [ -n "$(limit_header "http://127.0.0.1:$FM_PORT/")" ] || die "limiter enabled (Redis) but no X-RateLimit-Remaining header"
  [ "$(rcli SCRIPT EXISTS "$SHA")" = 1 ] || die "the engine did not load the script with sha1 $SHA: the extracted text differs from what it runs"
  [ "$(rcli --scan --pattern 'fm:rl:*' | wc -l)" -ge 1 ] || die "no fm:rl:* key in Redis: the engine did not limit through Redis"
  echo "   engine with Redis: script sha1 $SHA loaded by the engine (SCRIPT EXISTS = 1), bucket keys: $(rcli --scan --pattern 'fm:rl:*' | tr '\n' ' ')"
  c0="$(rcli INFO commandstats | sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\).*/\1/p')"
  wrk_row fm-redis "faultmaven GET /, limiter through Redis" "http://127.0.0.1:$FM_PORT/"
  c1="$(rcli INFO commandstats | sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\).*/\1/p')"
  echo "   EVALSHA calls during the Redis warm-up and run: $(( ${c1:-0} - ${c0:-0} )); fallback to in-process: $(curl -s "http://127.0.0.1:$FM_PORT/metrics" | sed -n 's/^fm_ratelimit_fallback_total[^ ]* //p' | head -n1)"
  stop_pid "$FM_PID" faultmaven; FM_PID=""
  echo
fi

# --- 4. nginx: limit_req on a static file, without / with ----------------------------------------------
if has_part engine && [ "$NGINX" = 1 ]; then
  NGINX_PORT="$(pick_port)" || die "no free port"
  mkdir -p "$TMP/nginx/www" "$TMP/nginx/logs" "$TMP/nginx/tmp"
  printf '%s' '{"name":"faultmaven","version":"0.1.0","api_contract":"2.0.0"}' >"$TMP/nginx/www/index.json"
  chmod -R a+rX "$TMP/nginx"
  cat >"$TMP/nginx/nginx.conf" <<EOF
worker_processes $FM_WORKERS;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    server_tokens off;
    open_file_cache max=64 inactive=60s;
    client_body_temp_path $TMP/nginx/tmp/body;
    proxy_temp_path       $TMP/nginx/tmp/proxy;
    fastcgi_temp_path     $TMP/nginx/tmp/fastcgi;
    uwsgi_temp_path       $TMP/nginx/tmp/uwsgi;
    scgi_temp_path        $TMP/nginx/tmp/scgi;
    # a leaky-bucket limit per client address, shared by the workers (shared memory + mutex). The
    # rate is higher than faultmaven's (which is capped at 1,000,000/min by its config) because nginx
    # serves more requests than a bucket of 1,000,000 + 16,667/s holds in a run: nothing is refused.
    limit_req_zone \$binary_remote_addr zone=fmbench:10m rate=${NGINX_RATE}r/s;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        default_type application/json;
        location = /plain   { alias $TMP/nginx/www/index.json; }
        location = /limited { alias $TMP/nginx/www/index.json; limit_req zone=fmbench burst=$RL_BURST nodelay; }
        location = /tiny    { alias $TMP/nginx/www/index.json; limit_req zone=fmbench_probe; }
    }
    limit_req_zone \$binary_remote_addr zone=fmbench_probe:1m rate=1r/m;
}
EOF
  nginx -t -q -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -e "$TMP/nginx/logs/error.log" >"$TMP/nginx/test.log" 2>&1 \
    || { cat "$TMP/nginx/test.log" >&2; die "nginx config test failed"; }
  nginx -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -e "$TMP/nginx/logs/error.log" -g 'daemon off;' \
    </dev/null >"$TMP/nginx/stdout.log" 2>&1 &
  NGINX_PID=$!
  wait_http "http://127.0.0.1:$NGINX_PORT/plain" "$NGINX_PID" nginx "$TMP/nginx/logs/error.log" || die "nginx failed to start"
  # limit_req is live: a 1 request/minute zone refuses the second request
  s1="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$NGINX_PORT/tiny")"
  s2="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$NGINX_PORT/tiny")"
  [ "$s1/$s2" = 200/503 ] || die "nginx limit_req probe: expected 200/503, got $s1/$s2"
  log "nginx $(nginx -v 2>&1 | sed 's/.*\///') on 127.0.0.1:$NGINX_PORT, worker_processes=$FM_WORKERS, static file (limit_req probe: $s1 then $s2)"
  wrk_row nginx-off "nginx static file, no limit_req" "http://127.0.0.1:$NGINX_PORT/plain"
  wrk_row nginx-limit "nginx static file, limit_req (${NGINX_RATE}r/s burst $RL_BURST)" "http://127.0.0.1:$NGINX_PORT/limited"
  stop_pid "$NGINX_PID" nginx; NGINX_PID=""
  echo
fi

# --- report ---------------------------------------------------------------------------------------
echo "load average after the run: $(cut -d' ' -f1-3 /proc/loadavg); run took $(( $(date +%s) - START_S )) s"
echo
echo "Results (loopback; everything shares the $(nproc) cores; latencies in microseconds):"
echo
printf '| %-20s | %-56s | %12s | %9s | %9s | %8s |\n' row what "checks/s" "p50 us" "p99 us" "ns/check"
printf '|%s|%s|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..22})" "$(printf -- '-%.0s' {1..58})" \
  "$(printf -- '-%.0s' {1..13}):" "$(printf -- '-%.0s' {1..10}):" "$(printf -- '-%.0s' {1..10}):" "$(printf -- '-%.0s' {1..9}):"
us() { awk -v n="$1" 'BEGIN{ printf (n < 10000 ? "%.3f" : "%.1f"), n / 1000 }'; }
for k in "${ROWS[@]}"; do
  printf '| %-20s | %-56s | %12.0f | %9s | %9s | %8s |\n' "$k" "${WHAT[$k]}" "${RATE[$k]}" \
    "$(us "${P50[$k]}")" "$(us "${P99[$k]}")" "${NOTE[$k]:--}"
done
echo
echo "(checks/s: all threads / clients together; for wrk rows, requests/s. micro p50/p99: every 64th check of"
echo " thread 0 timed alone, including ~${TIMER_NS:-?} ns of clock_gettime; ns/check = wall time / checks per thread)"
echo
echo "Ratios:"
if has_part micro; then
  for keys in 1k 100k; do
    for th in 1t 2t; do
      a="micro-fm-$th-$keys" b="micro-mutex-$th-$keys"
      printf '  in-process %-3s keys %s: fm_rl_take / mutex+hash-map peer: checks/s %s, ns/check %s, p99 %s\n' \
        "$keys" "${th%t} thr" "$(ratio "${RATE[$a]}" "${RATE[$b]}")" "$(ratio "${NOTE[$a]}" "${NOTE[$b]}")" "$(ratio "${P99[$a]}" "${P99[$b]}")"
    done
  done
fi
if has_part redis; then
  for c in 16 1; do
    printf '  Redis -c%-2s: rate-limit script / INCR: checks/s %s, p50 %s, p99 %s\n' "$c" \
      "$(ratio "${RATE[redis-script-c$c]}" "${RATE[redis-incr-c$c]}")" "$(ratio "${P50[redis-script-c$c]}" "${P50[redis-incr-c$c]}")" \
      "$(ratio "${P99[redis-script-c$c]}" "${P99[redis-incr-c$c]}")"
  done
fi
if has_part engine; then
  for k in fm-memory fm-redis; do
    printf '  %-10s / fm-off:    req/s %s, p50 %s, p99 %s\n' "$k" "$(ratio "${RATE[$k]}" "${RATE[fm-off]}")" \
      "$(ratio "${P50[$k]}" "${P50[fm-off]}")" "$(ratio "${P99[$k]}" "${P99[fm-off]}")"
  done
  if [ -n "${RATE[nginx-off]:-}" ]; then
    printf '  %-10s / nginx-off: req/s %s, p50 %s, p99 %s   (the peer: nginx limit_req on the request path)\n' nginx-limit \
      "$(ratio "${RATE[nginx-limit]}" "${RATE[nginx-off]}")" "$(ratio "${P50[nginx-limit]}" "${P50[nginx-off]}")" "$(ratio "${P99[nginx-limit]}" "${P99[nginx-off]}")"
    # per-request cost of the limiter in microseconds of wall time at this concurrency: 1/rps_with - 1/rps_without
    for k in fm-memory fm-redis; do
      printf '  added time per request (1e6/req/s with - without): %-10s %s us\n' "$k" \
        "$(awk -v a="${RATE[$k]}" -v b="${RATE[fm-off]}" 'BEGIN{printf "%.2f", 1e6/a - 1e6/b}')"
    done
    printf '  added time per request (1e6/req/s with - without): %-10s %s us\n' nginx-limit \
      "$(awk -v a="${RATE[nginx-limit]}" -v b="${RATE[nginx-off]}" 'BEGIN{printf "%.2f", 1e6/a - 1e6/b}')"
  fi
fi
echo
echo "Anchors:"
if has_part micro; then
  v="${NOTE[micro-fm-1t-1k]}"
  printf '  in-process check under 100 ns (1 thread, 1k keys): %s ns -> %s\n' "$v" "$(awk -v v="$v" 'BEGIN{print (v+0 < 100) ? "MET" : "MISSED"}')"
  v="${NOTE[micro-fm-1t-100k]}"
  printf '  (1 thread, 100k keys: %s ns; 2 threads: %s ns at 1k, %s ns at 100k keys)\n' "$v" "${NOTE[micro-fm-2t-1k]}" "${NOTE[micro-fm-2t-100k]}"
fi
if has_part redis; then
  for c in 1 16; do
    v="$(us "${P99[redis-script-c$c]}")"
    printf '  Redis script p99 under 0.5 ms at -c%-2s: %s us -> %s\n' "$c" "$v" "$(awk -v v="$v" 'BEGIN{print (v+0 < 500) ? "MET" : "MISSED"}')"
  done
fi

exit 0
}
