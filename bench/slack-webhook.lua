-- wrk script for bench/messaging.sh: POST Slack Events API message events,
-- each with a unique event_id, signed as Slack does:
--   X-Slack-Request-Timestamp: T (fixed for the run, within Slack's 5 minutes)
--   X-Slack-Signature: v0=<hex HMAC-SHA256(secret, "v0:" T ":" body)>
-- The HMAC is computed per request (bench/hmac.lua), so every body can be
-- unique and no request is a redelivery that dedup could short-circuit.
-- Environment: SLACK_SIGNING_SECRET, SLACK_TS (the fixed timestamp),
-- BENCH_TAG (makes event ids unique across runs).
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local hmac_hex = dofile(here .. "hmac.lua")

local secret = assert(os.getenv("SLACK_SIGNING_SECRET"), "SLACK_SIGNING_SECRET unset")
local ts = assert(os.getenv("SLACK_TS"), "SLACK_TS unset")
local tag = os.getenv("BENCH_TAG") or "x"
local counter = 1

function setup(thread)
   thread:set("tid", counter)
   counter = counter + 1
end

local function sign(body)
   return "v0=" .. hmac_hex(secret, "v0:" .. ts .. ":" .. body)
end

local n = 0
local headers = {["Content-Type"] = "application/json", ["X-Slack-Request-Timestamp"] = ts}

function request()
   n = n + 1
   local body = string.format(
      '{"token":"bench","team_id":"T0BENCH","api_app_id":"A0BENCH",' ..
      '"event":{"type":"message","channel":"C0BENCH","user":"U0BENCH",' ..
      '"text":"hello %d","ts":"%s.%06d","event_ts":"%s.%06d","channel_type":"channel"},' ..
      '"type":"event_callback","event_id":"Ev%s%dx%d","event_time":%s}',
      n, ts, n % 1000000, ts, n % 1000000, tag, tid, n, ts)
   headers["X-Slack-Signature"] = sign(body)
   return wrk.format("POST", nil, headers, body)
end
