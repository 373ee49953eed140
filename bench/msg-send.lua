-- wrk script for bench/messaging.sh: POST a provider-neutral message with a
-- unique text per request to the URL given (switchboard's
-- /v1/instances/{id}/messages, or the Node peer's /send).
-- Environment: SB_AUTH (an "Authorization" header value, optional),
-- BENCH_TAG (makes texts unique across runs), BENCH_TO (recipient, C0BENCH).
local auth = os.getenv("SB_AUTH")
local tag = os.getenv("BENCH_TAG") or "x"
local to = os.getenv("BENCH_TO") or "C0BENCH"
local threads = {}
local counter = 1

function setup(thread)
   thread:set("tid", counter)
   counter = counter + 1
   table.insert(threads, thread)
end

local n = 0
local headers = {["Content-Type"] = "application/json"}
if auth and auth ~= "" then headers["Authorization"] = auth end

function request()
   n = n + 1
   local body = string.format('{"to":"%s","text":"bench %s-%d-%d"}', to, tag, tid, n)
   return wrk.format("POST", nil, headers, body)
end
