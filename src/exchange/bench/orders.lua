-- wrk script for `exchange bench orders`: limit orders around 20000 on BTC/USDT from
-- many users (tokens in the TOKENS environment variable), about half crossing.
local tokens = {}
for token in string.gmatch(os.getenv("TOKENS") or "", "[^,]+") do
  tokens[#tokens + 1] = token
end
local counter = 0
local thread_id = 0

function setup(thread)
  thread:set("thread_id", counter)
  counter = counter + 1
end

function init(args)
  math.randomseed(thread_id * 7919 + 17)
end

local n = 0
function request()
  n = n + 1
  local side = (n % 2 == 0) and "buy" or "sell"
  local price = 20000 + math.random(-25, 25)
  local amount = "0.00" .. math.random(1, 9)
  local token = tokens[((n + thread_id * 31) % #tokens) + 1]
  local body = "pair=BTC%2FUSDT&amount=" .. amount .. "&price=" .. price
  return wrk.format("POST", "/api/" .. side, {
    ["Content-Type"] = "application/x-www-form-urlencoded",
    ["Authorization"] = "Bearer " .. token,
  }, body)
end

local ok, refused = 0, 0
function response(status, headers, body)
  if status == 200 then ok = ok + 1 else refused = refused + 1 end
end

function done(summary, latency, requests)
  io.write(string.format(
    "RESULT requests=%d seconds=%.3f p50=%.3f p99=%.3f non2xx=%d errors=%d\n",
    summary.requests, summary.duration / 1e6,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    (summary.errors.status or 0), (summary.errors.connect or 0) + (summary.errors.read or 0)
      + (summary.errors.write or 0) + (summary.errors.timeout or 0)))
end
