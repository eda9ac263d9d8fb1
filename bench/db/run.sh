#!/usr/bin/env bash
# bench/db/run.sh -- the cases API on SQLite and on PostgreSQL under wrk, each against a database
# peer that runs the same SQL without HTTP, Lua or JSON.
#
# Measured (same wrk settings for every engine target, one after another):
#   postgres list    faultmaven GET /api/v1/cases?limit=20   vs  pgbench, same statements
#   postgres create  faultmaven POST /api/v1/cases           vs  pgbench, same statements
#   postgres create with fsync=off (CHEAP_FSYNC_OFF=1)       vs  pgbench, fsync=off
#   sqlite   list    faultmaven GET /api/v1/cases?limit=20   vs  sqlite3 shell, same statements
#   sqlite   create  faultmaven POST /api/v1/cases           vs  sqlite3 shell, same statements
# The peers' SQL is not written here: the script records what the engine runs for one create and
# one list from PostgreSQL's statement log (log_statement=all) and turns it into the pgbench scripts
# and the sqlite3 scripts (sqlgen below): the same statements, parameters and transactions, however
# lua/fm/services/auth.lua (authenticate) and lua/fm/services/cases.lua (list, insert_case) change.
# The output prints those statements. PostgreSQL therefore always starts, even for BACKENDS=sqlite.
# Per backend the list runs first, against SEED cases created through the API; then the creates.
#
# Settings (environment):
#   DURATION=10s CONNECTIONS=16 THREADS=2   wrk -d / -c / -t; pgbench -T / -c / -j
#   WARMUP=2s                               unmeasured wrk run before each engine target (0 = none)
#   SEED=1000                               cases created through the API before the list runs
#   PEER_SECONDS=5                          the sqlite3 shell runs about this long per operation
#   PG_LOW_CLIENTS=1                        1: also run pgbench with FM_WORKERS clients (the engine's
#                                              database concurrency); 0: skip
#   CHEAP_FSYNC_OFF=1                       1: also measure PostgreSQL create with fsync=off
#   FM_WORKERS=2 FM_HTTP_IO_THREADS=2       faultmaven serve --workers / --io-threads
#   BACKENDS="sqlite postgres"              which databases to measure (PostgreSQL starts anyway, for
#                                              the statement log)
#   FM_BIN=path                             use this faultmaven binary (no build)
#   BUILD=1                                 1: build build-bench-db/faultmaven (Release) if it is
#                                              missing (an existing one is NOT rebuilt); 0: never
#   FM_PG_BIN=dir                           PostgreSQL bin dir (default: newest /usr/lib/postgresql/*/bin)
#   KEEP_TMP=0                              1: keep the temp dir (logs, scripts, raw outputs)
#
# Exit status: non-zero when something fails to run (build, a server, wrk, pgbench, sqlite3, a
# request of the wrong status). The numbers are reported, not judged.
set -euo pipefail
# shellcheck disable=SC2317  # functions called from traps look unreachable to shellcheck
# one { ... } block: bash parses the whole script before running it
{

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"

DURATION="${DURATION:-10s}"
CONNECTIONS="${CONNECTIONS:-16}"
THREADS="${THREADS:-2}"
WARMUP="${WARMUP:-2s}"
SEED="${SEED:-1000}"
PEER_SECONDS="${PEER_SECONDS:-5}"
PG_LOW_CLIENTS="${PG_LOW_CLIENTS:-1}"
CHEAP_FSYNC_OFF="${CHEAP_FSYNC_OFF:-1}"
FM_WORKERS="${FM_WORKERS:-2}"
FM_HTTP_IO_THREADS="${FM_HTTP_IO_THREADS:-2}"
BACKENDS="${BACKENDS:-sqlite postgres}"
BUILD="${BUILD:-1}"
KEEP_TMP="${KEEP_TMP:-0}"
FM_LOG_LEVEL=warn

CREATE_BODY='{"title":"bench case","description":"created by bench/db"}'

die() { echo "run.sh: error: $*" >&2; exit 1; }
log() { echo "== $*"; }
has_backend() { case " $BACKENDS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

to_seconds() { # "10s" "10" "2m" -> integer seconds
  local v="$1"
  case "$v" in
    *ms) echo 1 ;;
    *s) echo "${v%s}" ;;
    *m) echo $(( ${v%m} * 60 )) ;;
    *) echo "$v" ;;
  esac
}
DUR_S="$(to_seconds "$DURATION")"
WARM_S="$(to_seconds "$WARMUP")"
[[ "$DUR_S" =~ ^[0-9]+$ && "$DUR_S" -ge 1 && "$DUR_S" -le 600 ]] || die "DURATION must be 1s..600s (got $DURATION)"
[[ "$WARM_S" =~ ^[0-9]+$ && "$WARM_S" -le 60 ]] || die "WARMUP must be 0..60s (got $WARMUP)"
[[ "$CONNECTIONS" =~ ^[0-9]+$ && "$CONNECTIONS" -ge 1 && "$CONNECTIONS" -le 150 ]] || die "CONNECTIONS must be 1..150"
[[ "$THREADS" =~ ^[0-9]+$ && "$THREADS" -ge 1 && "$THREADS" -le "$CONNECTIONS" ]] || die "THREADS must be 1..CONNECTIONS"
[[ "$SEED" =~ ^[0-9]+$ && "$SEED" -ge 20 && "$SEED" -le 100000 ]] || die "SEED must be 20..100000"
[[ "$PEER_SECONDS" =~ ^[0-9]+$ && "$PEER_SECONDS" -ge 1 && "$PEER_SECONDS" -le 120 ]] || die "PEER_SECONDS must be 1..120"
for b in $BACKENDS; do
  case "$b" in sqlite|postgres) ;; *) die "BACKENDS: unknown '$b' (sqlite, postgres)" ;; esac
done

# --- tools ----------------------------------------------------------------------------------------
command -v wrk >/dev/null || die "wrk not found: scripts/install-deps.sh bench (or apt-get install wrk)"
command -v curl >/dev/null || die "curl not found (apt-get install curl)"
if has_backend sqlite && ! command -v sqlite3 >/dev/null; then
  # the peer of the SQLite runs: install it the way scripts/install-deps.sh does
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "sqlite3 not found and no root/sudo: apt-get install sqlite3 (or scripts/install-deps.sh bench)"
    SUDO="sudo"
  fi
  log "sqlite3 (the SQLite peer) is missing: apt-get install sqlite3"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends sqlite3 >/dev/null \
    || { DEBIAN_FRONTEND=noninteractive $SUDO apt-get update -qq &&
         DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends sqlite3 >/dev/null; } \
    || die "could not install sqlite3: apt-get install sqlite3 (or scripts/install-deps.sh bench)"
  command -v sqlite3 >/dev/null || die "sqlite3 still not found after apt-get install sqlite3"
fi
# PostgreSQL always starts: its statement log gives both peers their SQL
PG_BIN="${FM_PG_BIN:-$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)}"
[ -n "$PG_BIN" ] && [ -x "$PG_BIN/postgres" ] && [ -x "$PG_BIN/initdb" ] && [ -x "$PG_BIN/psql" ] \
  || die "PostgreSQL server not found in /usr/lib/postgresql/*/bin: scripts/install-deps.sh bench (or apt-get install postgresql; or set FM_PG_BIN)"
PGBENCH=""
if has_backend postgres; then
  if [ -x "$PG_BIN/pgbench" ]; then PGBENCH="$PG_BIN/pgbench"
  elif command -v pgbench >/dev/null; then PGBENCH="$(command -v pgbench)"
  else die "pgbench not found ($PG_BIN/pgbench or on PATH): it ships with Debian's postgresql-15 (scripts/install-deps.sh bench, or apt-get install postgresql postgresql-contrib)"
  fi
fi

# --- temp dir and cleanup -----------------------------------------------------------------------
TMP="$(mktemp -d "${TMPDIR:-/tmp}/fm-bench-db.XXXXXX")"
chmod 755 "$TMP"
FM_PID=""
PG_PID=""
CHILD_PID=""

# shellcheck source=../lib.sh
source "$HERE/../lib.sh"
cleanup() {
  local rc=$?
  stop_pid "$CHILD_PID" "wrk/pgbench/sqlite3"
  stop_pid "$FM_PID" faultmaven
  # fast shutdown (SIGINT): open sessions are ended
  stop_pid "$PG_PID" postgres INT
  if [ "$KEEP_TMP" = 1 ]; then echo "run.sh: kept $TMP" >&2; else rm -rf "$TMP"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# run a command in the background and wait for it, so that a signal runs the cleanup trap at once
run_child() {
  "$@" &
  CHILD_PID=$!
  local rc=0
  wait "$CHILD_PID" || rc=$?
  CHILD_PID=""
  return "$rc"
}

# --- free loopback port ---------------------------------------------------------------------------
port_in_use() {
  if command -v ss >/dev/null; then
    [ -n "$(ss -Htln "sport = :$1" 2>/dev/null)" ]
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  fi
}
pick_port() {
  local p _
  for _ in $(seq 1 500); do
    p=$(( 20000 + (RANDOM * 32768 + RANDOM) % 40000 ))
    port_in_use "$p" || { echo "$p"; return 0; }
  done
  return 1
}

# --- faultmaven binary ----------------------------------------------------------------------------
find_fm_bin() {
  if [ -n "${FM_BIN:-}" ]; then
    [ -x "$FM_BIN" ] || die "FM_BIN=$FM_BIN is not executable"
  else
    if [ ! -x "$ROOT/build-bench-db/faultmaven" ] && [ "$BUILD" = 1 ]; then
      log "building release binary in build-bench-db/ (cmake -DCMAKE_BUILD_TYPE=Release)"
      { cmake -S "$ROOT" -B "$ROOT/build-bench-db" -DCMAKE_BUILD_TYPE=Release >"$TMP/build.log" 2>&1 &&
        cmake --build "$ROOT/build-bench-db" -j2 --target faultmaven >>"$TMP/build.log" 2>&1; } \
        || { tail -n 20 "$TMP/build.log" >&2; die "release build in build-bench-db/ failed"; }
    fi
    [ -x "$ROOT/build-bench-db/faultmaven" ] \
      || die "no build-bench-db/faultmaven: build it (cmake -S . -B build-bench-db -DCMAKE_BUILD_TYPE=Release && cmake --build build-bench-db -j2 --target faultmaven) or set FM_BIN"
    FM_BIN="$ROOT/build-bench-db/faultmaven"
  fi
  local bt
  bt="$(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$(dirname "$FM_BIN")/CMakeCache.txt" 2>/dev/null || true)"
  FM_BUILD_NOTE="${FM_BIN#"$ROOT"/} (CMAKE_BUILD_TYPE=${bt:-unknown}, built $(date -r "$FM_BIN" '+%Y-%m-%d %H:%M'))"
}

# --- faultmaven -----------------------------------------------------------------------------------
start_faultmaven() { # name database-url
  local name="$1" url="$2" _
  FM_PORT="$(pick_port)" || die "no free port"
  mkdir -p "$TMP/fm-$name"
  FM_LOG="$TMP/fm-$name/fm.log"
  log "starting faultmaven ($name) on 127.0.0.1:$FM_PORT (workers=$FM_WORKERS io-threads=$FM_HTTP_IO_THREADS LOG_LEVEL=$FM_LOG_LEVEL)"
  # the rate limiter is off: wrk is one user sending thousands of requests a second
  RATE_LIMIT_ENABLED="${RATE_LIMIT_ENABLED:-false}" \
  DEPLOYMENT_MODE=local DATABASE_URL="$url" ACCESS_TOKEN_TTL_S=3600 LOG_LEVEL="$FM_LOG_LEVEL" \
    "$FM_BIN" serve --host 127.0.0.1 --port "$FM_PORT" --data-dir "$TMP/fm-$name" --home "$ROOT" \
    --workers "$FM_WORKERS" --io-threads "$FM_HTTP_IO_THREADS" --log-level "$FM_LOG_LEVEL" \
    </dev/null >"$TMP/fm-$name/fm.stdout" 2>"$FM_LOG" &
  FM_PID=$!
  # /readiness answers 200 once the engine serves (the database pool opened, migrations applied)
  for _ in $(seq 1 300); do
    if ! kill -0 "$FM_PID" 2>/dev/null; then
      tail -n 30 "$FM_LOG" >&2 || true
      die "faultmaven ($name) exited during startup"
    fi
    if curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$FM_PORT/readiness" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  tail -n 30 "$FM_LOG" >&2 || true
  die "faultmaven ($name) not ready on /readiness within 30 s"
}
stop_faultmaven() {
  stop_pid "$FM_PID" faultmaven
  FM_PID=""
}
fm_alive() {
  [ -n "$FM_PID" ] && kill -0 "$FM_PID" 2>/dev/null && return 0
  echo "run.sh: faultmaven is no longer running; last log lines:" >&2
  tail -n 15 "$FM_LOG" >&2 || true
  return 1
}

# JSON string field from a flat answer: json_field name < text
json_field() { sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p" | head -n1; }

# dev-login as "bench": sets TOKEN, FM_USER_ID (users.id) and FM_SID (the token's session: the
# family_id its auth query counts live refresh tokens of)
login() {
  local out payload
  out="$(curl -sS --max-time 10 -X POST "http://127.0.0.1:$FM_PORT/api/v1/auth/dev-login" \
    -H 'Content-Type: application/json' -d '{"username":"bench"}')" || die "dev-login failed"
  TOKEN="$(json_field access_token <<<"$out")"
  [ -n "$TOKEN" ] || die "dev-login: no access_token in: $out"
  payload="$(cut -d. -f2 <<<"$TOKEN" | tr '_-' '/+')"
  while [ $(( ${#payload} % 4 )) -ne 0 ]; do payload+="="; done
  payload="$(base64 -d <<<"$payload" 2>/dev/null)" || die "cannot decode the access token"
  FM_SID="$(json_field sid <<<"$payload")"
  FM_USER_ID="$(json_field sub <<<"$payload")"
  [ -n "$FM_SID" ] && [ -n "$FM_USER_ID" ] || die "access token without sid/sub: $payload"
}

# one request with curl; dies unless the status is the expected one. The body goes to $4 (and the
# headers of a GET to $4.headers).
check_request() { # method path expected-status out-file [body]
  local status
  if [ "$1" = POST ]; then
    status="$(curl -sS --max-time 10 -o "$4" -w '%{http_code}' -X POST "http://127.0.0.1:$FM_PORT$2" \
      -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' -d "$5")" || die "$1 $2 failed"
  else
    status="$(curl -sS --max-time 10 -o "$4" -D "$4.headers" -w '%{http_code}' "http://127.0.0.1:$FM_PORT$2" \
      -H "Authorization: Bearer $TOKEN")" || die "$1 $2 failed"
  fi
  [ "$status" = "$3" ] || die "$1 $2 -> $status (expected $3): $(head -c 400 "$4")"
}

# SEED cases through the API (one curl process, keep-alive), then check the list sees them
seed_cases() { # name
  local cfg="$TMP/seed-$1.curl" i total
  : >"$cfg"
  for i in $(seq 1 "$SEED"); do
    [ "$i" = 1 ] || echo next >>"$cfg"
    printf 'url = "http://127.0.0.1:%s/api/v1/cases"\nrequest = "POST"\nheader = "Authorization: Bearer %s"\nheader = "Content-Type: application/json"\ndata = "{\\"title\\":\\"seed case %d\\",\\"description\\":\\"created by bench/db\\"}"\noutput = "/dev/null"\n' \
      "$FM_PORT" "$TOKEN" "$i" >>"$cfg"
  done
  log "seeding $SEED cases through POST /api/v1/cases"
  run_child curl -sS --max-time 300 -K "$cfg" || die "seeding cases failed"
  check_request GET "/api/v1/cases?limit=20" 200 "$TMP/list-$1.json"
  total="$(sed -n 's/^[Xx]-[Tt]otal-[Cc]ount: *\([0-9]*\).*/\1/p' "$TMP/list-$1.json.headers")"
  [ "${total:-0}" -ge "$SEED" ] || die "after seeding, the list reports total ${total:-?} (expected >= $SEED)"
  [ "$(grep -o '"case_id"' "$TMP/list-$1.json" | wc -l)" = 20 ] || die "GET /api/v1/cases?limit=20 did not answer 20 cases"
  echo "   list: X-Total-Count $total, 20 cases per page, $(wc -c <"$TMP/list-$1.json") bytes"
}

# --- results --------------------------------------------------------------------------------------
declare -A RPS P50 P99 ERRS WHAT
ROWS=()
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<" $2"; }
ms() { awk -v u="$1" 'BEGIN{ if (u == "") print "-"; else printf "%.2f", u/1000 }'; }
add_row() { # key what rps p50_ms p99_ms errors
  ROWS+=("$1"); WHAT[$1]="$2"; RPS[$1]="$3"; P50[$1]="$4"; P99[$1]="$5"; ERRS[$1]="$6"
}

bench_engine() { # key what method path [body]
  local key="$1" what="$2" method="$3" url="http://127.0.0.1:$FM_PORT$4" body="${5:-}" out line
  out="$TMP/wrk-$key.txt"
  if [ "$WARM_S" -gt 0 ]; then
    FM_TOKEN="$TOKEN" FM_METHOD="$method" FM_BODY="$body" \
      run_child timeout $((WARM_S + 30)) wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" -s "$HERE/wrk.lua" "$url" \
      >"$out.warmup" 2>&1 || { cat "$out.warmup" >&2; fm_alive || true; die "wrk warm-up failed for $key"; }
  fi
  log "$key: wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency -s bench/db/wrk.lua ($method $4)"
  FM_TOKEN="$TOKEN" FM_METHOD="$method" FM_BODY="$body" \
    run_child timeout $((DUR_S + 60)) wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency \
    -s "$HERE/wrk.lua" "$url" >"$out" 2>&1 || { cat "$out" >&2; fm_alive || true; die "wrk failed for $key"; }
  grep -v '^FMBENCH ' "$out" | sed 's/^/   | /'
  fm_alive || die "faultmaven stopped during $key; its numbers are not valid"
  line="$(grep '^FMBENCH ' "$out")" || die "no FMBENCH line in the wrk output for $key"
  add_row "$key" "$what" "$(field rps "$line")" "$(ms "$(field p50_us "$line")")" "$(ms "$(field p99_us "$line")")" \
    "$(( $(field err_connect "$line") + $(field err_read "$line") + $(field err_write "$line") +
         $(field err_status "$line") + $(field err_timeout "$line") ))"
}

# --- the peers' SQL: the engine's own statements ----------------------------------------------------
# capture_engine_sql (below) records, from PostgreSQL's statement log (log_statement=all), what the
# engine ran for one create and one list. sqlgen turns such a log excerpt into a peer script:
#   mode=pgbench  the statements with each parameter as a pgbench variable (-D name=value, written
#                 to the file `vars`), NULL parameters as NULL, the created case's id as :cid (a
#                 random number per transaction: each INSERT needs a new primary key)
#   mode=sqlite   the statements with the values as literals (digits-only values as integers, as
#                 the engine binds them on SQLite), the case id as '@CID@' (replaced per request),
#                 BEGIN as BEGIN IMMEDIATE (what fm.db sends SQLite), and the PostgreSQL run's user
#                 id and session id (from1, from2) replaced by the SQLite run's (to1, to2)
# shellcheck disable=SC2016  # $n in the awk program is awk's, not the shell's
SQLGEN_AWK='
function flush() { if (have) emit(); have = 0 }
function parse(s,   k, v, i, c) {
  while (match(s, /^\$[0-9]+ = /)) {
    k = substr(s, 2, RLENGTH - 4) + 0
    s = substr(s, RLENGTH + 1)
    if (substr(s, 1, 4) == "NULL") { isnull[k] = 1; val[k] = ""; s = substr(s, 5) }
    else {
      v = ""; i = 2
      while ((c = substr(s, i, 1)) != "") {
        if (c == "\047") { if (substr(s, i + 1, 1) == "\047") { v = v c; i += 2; continue } break }
        v = v c; i++
      }
      val[k] = v; isnull[k] = 0; s = substr(s, i + 1)
    }
    sub(/^, /, "", s)
  }
}
function repl(k,   v, name) {
  if (isnull[k]) return "NULL"
  v = val[k]
  if (v ~ /^case_[0-9a-f]+$/) return (mode == "pgbench") ? ":cid" : "\047@CID@\047"
  if (mode == "pgbench") { name = "p" nst "_" k; print name "=" v > vars; return ":" name }
  if (v == from1) v = to1; else if (v == from2) v = to2
  if (v ~ /^-?[0-9]+$/) return v
  gsub(Q, Q Q, v)
  return Q v Q
}
function emit(   out, rest, k) {
  nst++; out = ""; rest = sql
  while (match(rest, /\$[0-9]+/)) {
    k = substr(rest, RSTART + 1, RLENGTH - 1) + 0
    out = out substr(rest, 1, RSTART - 1) repl(k)
    rest = substr(rest, RSTART + RLENGTH)
  }
  out = out rest
  if (mode == "sqlite" && out == "BEGIN") out = "BEGIN IMMEDIATE"
  print out ";"
}
BEGIN { Q = "\047"; if (mode == "pgbench") print "\\set cid random(1000000000000000000, 9223372036854775806)" }
/LOG:  (execute [^:]*|statement): / {
  flush(); sql = $0; sub(/^.*LOG:  (execute [^:]*|statement): /, "", sql)
  have = 1; for (k in val) delete val[k]; for (k in isnull) delete isnull[k]; next
}
/DETAIL:  parameters: / { s = $0; sub(/^.*DETAIL:  parameters: /, "", s); parse(s); next }
END { flush() }
'

# --- SQLite peer: the sqlite3 shell -----------------------------------------------------------------
# A generated script: n copies of the engine's statements for one request (from its PostgreSQL run,
# see sqlgen), values as literals, each create with a new case id. One connection with the engine's
# connection settings (WAL, synchronous=FULL, foreign_keys=ON, busy_timeout): the same statements and
# transactions as the engine, so the same durable commits.
sqlite_script() { # op n prefix out
  local op="$1" n="$2" prefix="$3" out="$4"
  awk -v mode=sqlite -v from1="$PG_USER_ID" -v to1="$FM_USER_ID" -v from2="$PG_SID" -v to2="$FM_SID" \
    "$SQLGEN_AWK" "$TMP/sql/$op.log" >"$TMP/sql/sqlite-$op.tpl"
  {
    echo "PRAGMA journal_mode=WAL;"
    echo "PRAGMA synchronous=FULL;"
    echo "PRAGMA foreign_keys=ON;"
    echo "PRAGMA busy_timeout=5000;"
  } >"$out"
  awk -v n="$n" -v prefix="$prefix" '
    { tpl = tpl $0 "\n" }
    END {
      split(tpl, parts, "@CID@")
      for (i = 1; i <= n; i++) {
        cid = sprintf("case_%s%019d", prefix, i)
        out = parts[1]
        for (j = 2; j in parts; j++) out = out cid parts[j]
        printf "%s", out
      }
    }' "$TMP/sql/sqlite-$op.tpl" >>"$out"
}
# seconds (float) the sqlite3 shell takes for a script
sqlite_time() { # db script
  local t0 t1
  t0="$(date +%s%N)"
  run_child sqlite3 -batch -bail -init /dev/null "$1" ".read $2" >/dev/null 2>"$2.err" || { cat "$2.err" >&2; die "sqlite3 failed on $2"; }
  t1="$(date +%s%N)"
  awk -v a="$t0" -v b="$t1" 'BEGIN{ printf "%.4f", (b - a) / 1e9 }'
}
bench_sqlite_peer() { # key what op db
  local key="$1" what="$2" op="$3" db="$4" n secs rps nst
  # calibrate on 300 requests, then size the run to about PEER_SECONDS
  sqlite_script "$op" 300 "cal${RANDOM}" "$TMP/sqlite-$key-cal.sql"
  secs="$(sqlite_time "$db" "$TMP/sqlite-$key-cal.sql")"
  n="$(awk -v s="$secs" -v t="$PEER_SECONDS" 'BEGIN{ n = int(300 * t / (s > 0.001 ? s : 0.001)); if (n < 1000) n = 1000; if (n > 500000) n = 500000; print n }')"
  sqlite_script "$op" "$n" "sq${RANDOM}" "$TMP/sqlite-$key.sql"
  nst="$(grep -c ';$' "$TMP/sql/sqlite-$op.tpl")"
  log "$key: sqlite3 -batch $(basename "$db") '.read script' of $n requests ($nst statements each, one connection)"
  secs="$(sqlite_time "$db" "$TMP/sqlite-$key.sql")"
  rps="$(awk -v n="$n" -v s="$secs" 'BEGIN{ printf "%.2f", n / s }')"
  echo "   | $n requests in $secs s: $rps requests/s, $(awk -v r="$rps" -v k="$nst" 'BEGIN{ printf "%.0f", k * r }') statements/s, mean $(awk -v r="$rps" 'BEGIN{ printf "%.3f", 1000 / r }') ms"
  add_row "$key" "$what" "$rps" "$(awk -v r="$rps" 'BEGIN{ printf "(%.2f)", 1000 / r }')" "-" 0
}

# --- PostgreSQL -----------------------------------------------------------------------------------
PG_PREFIX=()
start_postgres() {
  local dir="$TMP/pg" gid setpriv_bin _
  mkdir -p "$dir"
  if [ "$(id -u)" -eq 0 ]; then
    # postgres refuses to run as root: initdb and the server run as nobody (spec/helpers/init.lua)
    gid="$(id -g nobody)" || die "running as root needs user nobody"
    setpriv_bin="$(command -v setpriv)" || die "running as root needs setpriv (util-linux)"
    chown nobody:"$gid" "$dir"
    PG_PREFIX=("$setpriv_bin" --reuid=nobody --regid="$gid" --clear-groups --)
  fi
  "${PG_PREFIX[@]}" "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-locale --no-sync \
    >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
  PG_PORT="$(pick_port)" || die "no free port"
  log "starting PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT (fsync=on, synchronous_commit=on, full_page_writes=on)"
  "${PG_PREFIX[@]}" "$PG_BIN/postgres" -D "$dir/data" -p "$PG_PORT" -c listen_addresses=127.0.0.1 \
    -c unix_socket_directories="$dir" -c max_connections=200 \
    </dev/null >"$dir/postgres.log" 2>&1 &
  PG_PID=$!
  for _ in $(seq 1 300); do
    kill -0 "$PG_PID" 2>/dev/null || { tail -n 30 "$dir/postgres.log" >&2; die "postgres exited during startup"; }
    "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres && break
    sleep 0.1
  done
  "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres || die "postgres not ready within 30 s"
  psql_c postgres "CREATE DATABASE fm" >/dev/null
  # durable settings, through ALTER SYSTEM (not -c: a command-line setting would win over the
  # ALTER SYSTEM of the fsync=off phase)
  pg_settings on
}
psql_c() { # db sql...
  local db="$1"; shift
  local args=() s
  for s in "$@"; do args+=(-c "$s"); done
  "$PG_BIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d "$db" "${args[@]}" \
    || die "psql failed: $*"
}
pg_settings() { # fsync on|off: server-wide, applied by a reload (no restart)
  psql_c fm "ALTER SYSTEM SET fsync = $1" "ALTER SYSTEM SET synchronous_commit = $1" \
    "ALTER SYSTEM SET full_page_writes = $1" "SELECT pg_reload_conf()" >/dev/null
  sleep 0.3
  [ "$(psql_c fm "SHOW fsync" "SHOW synchronous_commit" "SHOW full_page_writes" | tr '\n' ' ')" = "$1 $1 $1 " ] \
    || die "fsync, synchronous_commit, full_page_writes did not become $1"
}
pg_quiesce() { # same starting point for the engine and its peer: stats fresh, checkpoint done
  psql_c fm "VACUUM ANALYZE cases" "CHECKPOINT" >/dev/null
}

pct() { # p file-of-numbers(sorted) -> value
  awk -v p="$1" '{ v[NR] = $1 } END { if (NR == 0) { print ""; exit } i = int(p * NR + 0.999999); if (i < 1) i = 1; if (i > NR) i = NR; print v[i] }' "$2"
}
bench_pgbench() { # key what op clients
  local key="$1" what="$2" op="$3" clients="$4" jobs out tps failed defs=() v
  jobs="$THREADS"; [ "$jobs" -le "$clients" ] || jobs="$clients"
  while IFS= read -r v; do defs+=(-D "$v"); done <"$TMP/sql/pgbench-$op.vars"
  out="$TMP/pgbench-$key.txt"
  mkdir -p "$TMP/pglog-$key"
  log "$key: pgbench -n -M extended -c$clients -j$jobs -T$DUR_S -l -f pgbench-$op.sql (the engine's $(grep -vc '^\\' "$TMP/sql/pgbench-$op.sql") statements)"
  run_child timeout $((DUR_S + 60)) "$PGBENCH" -n -M extended -c "$clients" -j "$jobs" -T "$DUR_S" \
    -l --log-prefix="$TMP/pglog-$key/tx" -f "$TMP/sql/pgbench-$op.sql" "${defs[@]}" \
    -h 127.0.0.1 -p "$PG_PORT" -U postgres fm >"$out" 2>&1 || { cat "$out" >&2; die "pgbench failed for $key"; }
  sed 's/^/   | /' "$out" | grep -E 'clients|transactions|latency average|tps' || true
  tps="$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time).*/\1/p' "$out")"
  [ -n "$tps" ] || die "no tps in the pgbench output for $key"
  failed="$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$out")"
  # per-transaction log: column 3 is the latency in microseconds
  cat "$TMP/pglog-$key"/tx.* | awk '{ print $3 }' | sort -n >"$TMP/pglog-$key/lat"
  add_row "$key" "$what" "$tps" "$(ms "$(pct 0.50 "$TMP/pglog-$key/lat")")" "$(ms "$(pct 0.99 "$TMP/pglog-$key/lat")")" "${failed:-0}"
}

# What the engine runs for one create and one list: PostgreSQL's statement log (log_statement=all)
# around one request of each, with curl. The peers' scripts are made from it (sqlgen), so they run
# the engine's statements, parameters and transactions, whatever the Lua code does today.
capture_engine_sql() {
  local logf="$TMP/pg/postgres.log" n0 n1 n2 op
  mkdir -p "$TMP/sql"
  psql_c fm "ALTER SYSTEM SET log_statement = 'all'" "SELECT pg_reload_conf()" >/dev/null
  sleep 0.3
  n0="$(wc -l <"$logf")"
  check_request POST /api/v1/cases 201 "$TMP/check-create.json" "$CREATE_BODY"
  sleep 0.2
  n1="$(wc -l <"$logf")"
  check_request GET "/api/v1/cases?limit=20" 200 "$TMP/check-list.json"
  sleep 0.2
  n2="$(wc -l <"$logf")"
  psql_c fm "ALTER SYSTEM RESET log_statement" "SELECT pg_reload_conf()" >/dev/null
  sed -n "$((n0 + 1)),${n1}p" "$logf" | grep -E 'LOG:  (execute [^:]*|statement): |DETAIL:  parameters: ' >"$TMP/sql/create.log" || true
  sed -n "$((n1 + 1)),${n2}p" "$logf" | grep -E 'LOG:  (execute [^:]*|statement): |DETAIL:  parameters: ' >"$TMP/sql/list.log" || true
  grep -q 'INSERT INTO cases' "$TMP/sql/create.log" \
    || { cat "$TMP/sql/create.log" >&2; die "no INSERT INTO cases in the statements of POST /api/v1/cases (PostgreSQL log above)"; }
  grep -q 'FROM cases .*LIMIT' "$TMP/sql/list.log" \
    || { cat "$TMP/sql/list.log" >&2; die "no SELECT ... FROM cases ... LIMIT in the statements of GET /api/v1/cases (PostgreSQL log above)"; }
  for op in create list; do
    : >"$TMP/sql/pgbench-$op.vars"
    awk -v mode=pgbench -v vars="$TMP/sql/pgbench-$op.vars" "$SQLGEN_AWK" "$TMP/sql/$op.log" >"$TMP/sql/pgbench-$op.sql"
    echo "   the engine's statements for one $op ($(grep -c 'LOG:  ' "$TMP/sql/$op.log"), from PostgreSQL's log; the peers run these):"
    sed -n -E 's/.*LOG:  (execute [^:]*|statement): /     /p' "$TMP/sql/$op.log"
  done
  STMTS_CREATE="$(grep -c 'LOG:  ' "$TMP/sql/create.log")"
  STMTS_LIST="$(grep -c 'LOG:  ' "$TMP/sql/list.log")"
}

# --- main -----------------------------------------------------------------------------------------
find_fm_bin
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
CPU_MODEL="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)"
NCPU="$(nproc)"
START_S="$(date +%s)"
echo "machine: $NCPU CPUs, ${CPU_MODEL:-unknown CPU}, $(uname -sr), TMPDIR on $(df -P "$TMP" | awk 'NR==2{print $1}')"
echo "wrk: $(wrk -v 2>&1 | head -n1 | cut -d' ' -f1-2); sqlite3 $(sqlite3 --version 2>/dev/null | cut -d' ' -f1 || echo -)$( [ -n "$PGBENCH" ] && echo "; $("$PGBENCH" --version)")"
echo "faultmaven: $FM_BUILD_NOTE"
echo "settings: wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency after a $WARMUP warm-up; faultmaven workers=$FM_WORKERS io-threads=$FM_HTTP_IO_THREADS LOG_LEVEL=$FM_LOG_LEVEL; $SEED seeded cases"
echo "load average before the run: $LOAD_BEFORE"
if awk -v l="${LOAD_BEFORE%% *}" 'BEGIN{exit !(l+0 > 0.5)}'; then
  echo "WARNING: the machine is not idle (1-min load ${LOAD_BEFORE%% *}); other work skews these numbers"
fi
echo

# PostgreSQL first: its statement log gives the peers' SQL (also for the SQLite peer)
start_postgres
start_faultmaven postgres "postgresql://postgres@127.0.0.1:$PG_PORT/fm"
login
PG_USER_ID="$FM_USER_ID"
PG_SID="$FM_SID"
capture_engine_sql
if has_backend postgres; then
  seed_cases postgres
  pg_quiesce
  bench_engine pg-list-fm "faultmaven GET /api/v1/cases?limit=20" GET "/api/v1/cases?limit=20"
  bench_pgbench pg-list-peer "pgbench -c$CONNECTIONS, same $STMTS_LIST statements" list "$CONNECTIONS"
  [ "$PG_LOW_CLIENTS" = 1 ] && bench_pgbench pg-list-peer-low "pgbench -c$FM_WORKERS (= engine workers)" list "$FM_WORKERS"
  pg_quiesce
  bench_engine pg-create-fm "faultmaven POST /api/v1/cases" POST /api/v1/cases "$CREATE_BODY"
  pg_quiesce
  bench_pgbench pg-create-peer "pgbench -c$CONNECTIONS, same $STMTS_CREATE statements" create "$CONNECTIONS"
  [ "$PG_LOW_CLIENTS" = 1 ] && { pg_quiesce; bench_pgbench pg-create-peer-low "pgbench -c$FM_WORKERS (= engine workers)" create "$FM_WORKERS"; }
  if [ "$CHEAP_FSYNC_OFF" = 1 ]; then
    log "PostgreSQL: fsync=off, synchronous_commit=off, full_page_writes=off (reload)"
    pg_settings off
    pg_quiesce
    bench_engine pg-nofsync-create-fm "faultmaven POST /api/v1/cases" POST /api/v1/cases "$CREATE_BODY"
    pg_quiesce
    bench_pgbench pg-nofsync-create-peer "pgbench -c$CONNECTIONS, same $STMTS_CREATE statements" create "$CONNECTIONS"
    [ "$PG_LOW_CLIENTS" = 1 ] && { pg_quiesce; bench_pgbench pg-nofsync-create-peer-low "pgbench -c$FM_WORKERS (= engine workers)" create "$FM_WORKERS"; }
  fi
fi
stop_faultmaven
stop_pid "$PG_PID" postgres INT
PG_PID=""
echo

if has_backend sqlite; then
  SQLITE_DB="$TMP/sqlite/fm.db"
  mkdir -p "$TMP/sqlite"
  start_faultmaven sqlite "sqlite:///$SQLITE_DB"
  login
  check_request POST /api/v1/cases 201 "$TMP/check-create.json" "$CREATE_BODY"
  seed_cases sqlite
  bench_engine sqlite-list-fm "faultmaven GET /api/v1/cases?limit=20" GET "/api/v1/cases?limit=20"
  bench_sqlite_peer sqlite-list-peer "sqlite3 shell, same $STMTS_LIST statements" list "$SQLITE_DB"
  bench_engine sqlite-create-fm "faultmaven POST /api/v1/cases" POST /api/v1/cases "$CREATE_BODY"
  bench_sqlite_peer sqlite-create-peer "sqlite3 shell, same $STMTS_CREATE statements" create "$SQLITE_DB"
  stop_faultmaven
  echo
fi

# --- report ---------------------------------------------------------------------------------------
echo "load average after the run: $(cut -d' ' -f1-3 /proc/loadavg); run took $(( $(date +%s) - START_S )) s"
echo
echo "Results (engine: wrk -t$THREADS -c$CONNECTIONS -d$DURATION; pgbench -c/-j/-T the same unless noted; loopback; everything shares the $NCPU cores):"
echo
printf '| %-28s | %-40s | %9s | %7s | %7s | %6s |\n' case what "req/s" "p50 ms" "p99 ms" errors
printf '|%s|%s|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..30})" "$(printf -- '-%.0s' {1..42})" \
  "$(printf -- '-%.0s' {1..10}):" "$(printf -- '-%.0s' {1..8}):" "$(printf -- '-%.0s' {1..8}):" "$(printf -- '-%.0s' {1..7}):"
for k in "${ROWS[@]}"; do
  printf '| %-28s | %-40s | %9.0f | %7s | %7s | %6s |\n' "$k" "${WHAT[$k]}" "${RPS[$k]}" "${P50[$k]}" "${P99[$k]}" "${ERRS[$k]}"
done
echo
echo "(req/s of a peer: requests (the engine's statements for one request) per second, pgbench's tps; the"
echo " sqlite3 shell's p50 column is its mean time per request, in parentheses: it has no percentiles)"
echo
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b+0 == 0) print "n/a"; else printf "%.2f", a/b }'; }
echo "Ratios engine req/s / peer req/s (the share of the database's own throughput that the full"
echo "HTTP + Lua + JSON path keeps):"
for pair in "pg-list pgbench" "pg-create pgbench" "pg-nofsync-create pgbench" "sqlite-list sqlite3" "sqlite-create sqlite3"; do
  read -r base peer <<<"$pair"
  [ -n "${RPS[$base-fm]:-}" ] || continue
  line="$(printf '  %-22s %s / %s -c%s: %s' "$base" faultmaven "$peer" "$CONNECTIONS" "$(ratio "${RPS[$base-fm]}" "${RPS[$base-peer]}")")"
  [ "$peer" = sqlite3 ] && line="$(printf '  %-22s faultmaven / sqlite3 shell (1 connection): %s' "$base" "$(ratio "${RPS[$base-fm]}" "${RPS[$base-peer]}")")"
  [ -n "${RPS[$base-peer-low]:-}" ] && line+="$(printf ';  / pgbench -c%s: %s' "$FM_WORKERS" "$(ratio "${RPS[$base-fm]}" "${RPS[$base-peer-low]}")")"
  echo "$line"
done
echo
echo "peers' SQL: the engine's own statements, from PostgreSQL's log: $STMTS_CREATE per create, $STMTS_LIST per list"
total_err=0
for k in "${ROWS[@]}"; do total_err=$(( total_err + ${ERRS[$k]:-0} )); done
[ "$total_err" = 0 ] || echo "WARNING: $total_err errors (non-2xx answers, socket errors or failed transactions): see the rows above"

exit 0
}
