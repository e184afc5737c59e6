-- wrk script for bench/run: POSTs $BENCH_BODY as JSON (with $BENCH_AUTH as the
-- Authorization header when set) and prints one machine-readable RESULT line at the end.
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"
local auth = os.getenv("BENCH_AUTH")
if auth ~= nil and auth ~= "" then
  wrk.headers["Authorization"] = auth
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests %.0f duration_us %.0f p50_us %.1f p99_us %.1f errors %.0f status_errors %.0f\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
