-- Copied from the shared gateway-overhead harness (../shared/bench/post.lua); BENCH_STRATEGY added.
-- wrk script: POST an OpenAI chat completion; prints one machine-readable line at the end.
-- env: BENCH_MODEL (default mock-model), BENCH_STREAM=1 for "stream": true, BENCH_PATH,
--      BENCH_AUTH (bearer token, default bench-token), BENCH_STRATEGY (an X-Twice-Strategy header)
local model = os.getenv("BENCH_MODEL") or "mock-model"
local stream = os.getenv("BENCH_STREAM") == "1"
wrk.method = "POST"
wrk.path = os.getenv("BENCH_PATH") or "/v1/chat/completions"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_AUTH") or "bench-token")
if os.getenv("BENCH_STRATEGY") then wrk.headers["X-Twice-Strategy"] = os.getenv("BENCH_STRATEGY") end
wrk.body = '{"model":"' .. model .. '","messages":[{"role":"system","content":"You are a helpful assistant."},'
  .. '{"role":"user","content":"Say hello in ten words, please."}],"max_tokens":32,"temperature":0'
  .. (stream and ',"stream":true' or '') .. '}'

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests":%d,"duration_s":%.3f,"rps":%.1f,"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f,'
    .. '"max_ms":%.3f,"mean_ms":%.3f,"non2xx":%d,"connect_err":%d,"read_err":%d,"write_err":%d,"timeout":%d}\n',
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000, latency.mean / 1000, e.status, e.connect, e.read, e.write, e.timeout))
end
