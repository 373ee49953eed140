-- wrk script for bench/providers-meta-telegram.sh: POST Telegram Bot API
-- updates (a private text message) with a unique update_id per request and
-- the X-Telegram-Bot-Api-Secret-Token header, as Telegram's webhook does.
-- Environment: TG_SECRET, BENCH_BASE_ID (update_ids start above it; unique
-- across runs and threads).
local secret = assert(os.getenv("TG_SECRET"), "TG_SECRET unset")
local base = tonumber(os.getenv("BENCH_BASE_ID") or "1000000")
local counter = 1

function setup(thread)
   thread:set("tid", counter)
   counter = counter + 1
end

local n = 0
local headers = {["Content-Type"] = "application/json",
                 ["X-Telegram-Bot-Api-Secret-Token"] = secret}

function request()
   n = n + 1
   local uid = base + tid * 100000000 + n
   local body = string.format(
      '{"update_id":%d,"message":{"message_id":%d,"date":1700000000,' ..
      '"from":{"id":%d,"is_bot":false,"first_name":"Ada","username":"ada"},' ..
      '"chat":{"id":%d,"type":"private","first_name":"Ada"},"text":"hello %d"}}',
      uid, n, 4242 + tid, 4242 + tid, n)
   return wrk.format("POST", nil, headers, body)
end
