-- wrk script for bench/run.py (`make bench`): non-streaming POSTs, alternating
-- OpenAI chat/completions and Anthropic messages (BENCH_MIX=openai|anthropic
-- selects one), with the Majordomo key from BENCH_KEY.  BENCH_PROVIDER_KEY,
-- when set, is the provider credential of both (Authorization: Bearer and
-- x-api-key), e.g. a proxy key (bench/proxy_overhead.py); else each has a
-- fixed fake provider key.  At the end it prints one line "BENCH_JSON {...}"
-- with counts and latency percentiles in us.
--
--   BENCH_KEY=mdm_sk_... wrk -t1 -c16 -d10s --timeout 10s -s bench/load.lua http://127.0.0.1:7680

local key = os.getenv("BENCH_KEY") or ""
local mix = os.getenv("BENCH_MIX") or "mixed"
local provider_key = os.getenv("BENCH_PROVIDER_KEY") or ""

local openai_body = '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}'
local anthropic_body = '{"model": "claude-3-5-haiku-20241022", "max_tokens": 64, '
  .. '"messages": [{"role": "user", "content": "Say hello"}]}'

local requests = {}
local n = 0

function init(args)
  local common = { ["Host"] = "127.0.0.1", ["Content-Type"] = "application/json",
                   ["X-Majordomo-Key"] = key }
  local openai_key, anthropic_key = "sk-bench-provider-key", "sk-ant-bench"
  if provider_key ~= "" then openai_key, anthropic_key = provider_key, provider_key end
  local openai = { ["Authorization"] = "Bearer " .. openai_key }
  local anthropic = { ["x-api-key"] = anthropic_key, ["anthropic-version"] = "2023-06-01" }
  for name, value in pairs(common) do openai[name] = value; anthropic[name] = value end
  local o = wrk.format("POST", "/v1/chat/completions", openai, openai_body)
  local a = wrk.format("POST", "/v1/messages", anthropic, anthropic_body)
  if mix == "openai" then requests = { o }
  elseif mix == "anthropic" then requests = { a }
  else requests = { o, a } end
end

function request()
  n = n + 1
  return requests[n % #requests + 1]
end

function done(summary, latency, _)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
      .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
