# bench/lib.sh: shell helpers the bench/*/run.sh scripts share (source it; bash only).

# stop_pid PID NAME: SIGTERM, wait up to 5 s, then SIGKILL; quiet when PID is empty or gone.
stop_pid() {
  local pid="$1" _
  [ -n "$pid" ] || return 0
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    sleep 0.1
  done
  echo "run.sh: $2 (pid $pid) did not stop after SIGTERM, sending SIGKILL" >&2
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
