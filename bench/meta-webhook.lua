-- wrk script for bench/providers-meta-telegram.sh and
-- bench/providers-messenger-instagram.sh: POST Meta webhooks signed as Meta
-- does: X-Hub-Signature-256: sha256=<hex HMAC-SHA256(app secret, raw body)>.
-- The HMAC is computed per request (bench/hmac.lua), so every body is unique.
-- META_OBJECT picks the body: whatsapp_business_account (default; one inbound
-- text in entry[].changes[].value.messages[], a unique wamid each), page
-- (Messenger) or instagram (entry[].messaging[] with one message, a unique
-- mid each).
-- Environment: META_APP_SECRET, META_ID (the phone number id, page id or
-- Instagram account id), META_OBJECT, BENCH_TAG.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local hmac_hex = dofile(here .. "hmac.lua")

local secret = assert(os.getenv("META_APP_SECRET"), "META_APP_SECRET unset")
local id = assert(os.getenv("META_ID"), "META_ID unset")
local object = os.getenv("META_OBJECT") or "whatsapp_business_account"
local tag = os.getenv("BENCH_TAG") or "x"
local counter = 1

function setup(thread)
   thread:set("tid", counter)
   counter = counter + 1
end

local function sign(body)
   return "sha256=" .. hmac_hex(secret, body)
end

local n = 0
local headers = {["Content-Type"] = "application/json"}

local function body_whatsapp()
   return string.format(
      '{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[' ..
      '{"field":"messages","value":{"messaging_product":"whatsapp","metadata":' ..
      '{"display_phone_number":"15550783881","phone_number_id":"%s"},' ..
      '"contacts":[{"profile":{"name":"Ada"},"wa_id":"15550001111"}],' ..
      '"messages":[{"from":"15550001111","id":"wamid.%s%dx%d","timestamp":"1700000000",' ..
      '"type":"text","text":{"body":"hello %d"}}]}}]}]}',
      id, tag, tid, n, n)
end

-- Messenger and Instagram: entry[].messaging[] (sender, recipient, timestamp, message {mid, text}).
local function body_messaging()
   return string.format(
      '{"object":"%s","entry":[{"id":"%s","time":1700000000000,"messaging":[' ..
      '{"sender":{"id":"%d"},"recipient":{"id":"%s"},"timestamp":1700000000000,' ..
      '"message":{"mid":"m_%s%dx%d","text":"hello %d"}}]}]}',
      object, id, 6543210000 + tid, id, tag, tid, n, n)
end

local build = object == "whatsapp_business_account" and body_whatsapp or body_messaging

function request()
   n = n + 1
   local body = build()
   headers["X-Hub-Signature-256"] = sign(body)
   return wrk.format("POST", nil, headers, body)
end
