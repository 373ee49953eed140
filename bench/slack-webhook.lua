-- wrk script for bench/messaging.sh: POST Slack Events API message events,
-- each with a unique event_id, signed as Slack does:
--   X-Slack-Request-Timestamp: T (fixed for the run, within Slack's 5 minutes)
--   X-Slack-Signature: v0=<hex HMAC-SHA256(secret, "v0:" T ":" body)>
-- The HMAC is computed per request by libcrypto through LuaJIT's FFI (wrk
-- runs LuaJIT), about a microsecond, so every body can be unique and no
-- request is a redelivery that dedup could short-circuit.
-- Environment: SLACK_SIGNING_SECRET, SLACK_TS (the fixed timestamp),
-- BENCH_TAG (makes event ids unique across runs).
local ffi = require("ffi")
ffi.cdef [[
typedef struct evp_md_st EVP_MD;
const EVP_MD *EVP_sha256(void);
unsigned char *HMAC(const EVP_MD *evp_md, const void *key, int key_len,
                    const unsigned char *d, size_t n, unsigned char *md,
                    unsigned int *md_len);
]]
local ok, crypto = pcall(ffi.load, "crypto")
if not ok then crypto = ffi.load("libcrypto.so.3") end

local secret = assert(os.getenv("SLACK_SIGNING_SECRET"), "SLACK_SIGNING_SECRET unset")
local ts = assert(os.getenv("SLACK_TS"), "SLACK_TS unset")
local tag = os.getenv("BENCH_TAG") or "x"
local counter = 1

function setup(thread)
   thread:set("tid", counter)
   counter = counter + 1
end

local md = ffi.new("unsigned char[32]")
local mdlen = ffi.new("unsigned int[1]")
local sha256 = crypto.EVP_sha256()
local hex = {}
for i = 0, 255 do hex[i] = string.format("%02x", i) end

local function sign(body)
   local base = "v0:" .. ts .. ":" .. body
   crypto.HMAC(sha256, secret, #secret, base, #base, md, mdlen)
   local out = {}
   for i = 0, 31 do out[i + 1] = hex[md[i]] end
   return "v0=" .. table.concat(out)
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
