-- wrk script: after the normal --latency report, print one machine-readable
-- line that bench/http/run.sh parses (latency values are in microseconds).
done = function(summary, latency, requests)
  local secs = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    "FMBENCH requests=%d bytes=%d duration_s=%.3f rps=%.2f " ..
    "p50_us=%d p90_us=%d p99_us=%d max_us=%d " ..
    "err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\n",
    summary.requests, summary.bytes, secs, summary.requests / secs,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
