-- wrk script for `exchange bench orders --api binance`: signed POST /api/v3/order requests,
-- made and signed beforehand (file REQUESTS: one "apikey body" per line), sent in turn.
local lines = {}
for line in io.lines(os.getenv("REQUESTS")) do
  local key, body = line:match("^(%S+) (.+)$")
  lines[#lines + 1] = wrk.format("POST", "/api/v3/order", {
    ["Content-Type"] = "application/x-www-form-urlencoded",
    ["X-MBX-APIKEY"] = key,
  }, body)
end

local n = 0
function request()
  n = n + 1
  return lines[(n % #lines) + 1]
end

function done(summary, latency, requests)
  io.write(string.format(
    "RESULT requests=%d seconds=%.3f p50=%.3f p99=%.3f non2xx=%d errors=%d\n",
    summary.requests, summary.duration / 1e6,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    (summary.errors.status or 0), (summary.errors.connect or 0) + (summary.errors.read or 0)
      + (summary.errors.write or 0) + (summary.errors.timeout or 0)))
end
