-- wrk script: prints one line "WRKJSON {...}" with the summary, so the harness reads numbers
-- instead of parsing wrk's text. With BENCH_UPSTREAMS=N set, requests rotate over the route
-- prefixes /ex01 .. /exNN (several upstreams); otherwise the URL's path is used as is.
local n = tonumber(os.getenv("BENCH_UPSTREAMS") or "0")
if n > 0 then
  local reqs = {}
  for i = 1, n do
    reqs[i] = wrk.format("GET", string.format("/ex%02d/v5/market/tickers?category=spot&symbol=BTCUSDT", i))
  end
  local k = 0
  request = function()
    k = k % n + 1
    return reqs[k]
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"err_connect":%d,"err_read":%d,' ..
    '"err_write":%d,"err_status":%d,"err_timeout":%d,"lat_mean_us":%.1f,"lat_p50_us":%d,' ..
    '"lat_p90_us":%d,"lat_p99_us":%d,"lat_max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
