-- wrk script for bench/providers-meta-telegram.sh: POST a provider-neutral
-- text message to a distinct recipient per request (Telegram paces each chat
-- to one message a second), to switchboard's /v1/instances/{id}/messages or
-- the Node peer's /tg/send, /wa/send.
-- Environment: SB_AUTH (Authorization header value, optional), BENCH_TAG,
-- BENCH_TO_BASE (first recipient number; recipients are BENCH_TO_BASE + k).
local auth = os.getenv("SB_AUTH")
local tag = os.getenv("BENCH_TAG") or "x"
local tobase = tonumber(os.getenv("BENCH_TO_BASE") or "100000000")
local counter = 1

function setup(thread)
   thread:set("tid", counter)
   counter = counter + 1
end

local n = 0
local headers = {["Content-Type"] = "application/json"}
if auth and auth ~= "" then headers["Authorization"] = auth end

function request()
   n = n + 1
   local body = string.format('{"to":"%d","text":"bench %s-%d-%d"}',
                              tobase + tid * 10000000 + n, tag, tid, n)
   return wrk.format("POST", nil, headers, body)
end
