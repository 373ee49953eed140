-- wrk script for bench/providers-meta-telegram.sh: POST WhatsApp Cloud API
-- webhooks (one inbound text message, a unique wamid per request) signed as
-- Meta does: X-Hub-Signature-256: sha256=<hex HMAC-SHA256(app secret, raw body)>.
-- The HMAC is computed per request by libcrypto through LuaJIT's FFI (as
-- bench/slack-webhook.lua does), so every body is unique.
-- Environment: WA_APP_SECRET, WA_PHONE_ID, BENCH_TAG.
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

local secret = assert(os.getenv("WA_APP_SECRET"), "WA_APP_SECRET unset")
local phone = assert(os.getenv("WA_PHONE_ID"), "WA_PHONE_ID unset")
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
   crypto.HMAC(sha256, secret, #secret, body, #body, md, mdlen)
   local out = {}
   for i = 0, 31 do out[i + 1] = hex[md[i]] end
   return "sha256=" .. table.concat(out)
end

local n = 0
local headers = {["Content-Type"] = "application/json"}

function request()
   n = n + 1
   local body = string.format(
      '{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[' ..
      '{"field":"messages","value":{"messaging_product":"whatsapp","metadata":' ..
      '{"display_phone_number":"15550783881","phone_number_id":"%s"},' ..
      '"contacts":[{"profile":{"name":"Ada"},"wa_id":"15550001111"}],' ..
      '"messages":[{"from":"15550001111","id":"wamid.%s%dx%d","timestamp":"1700000000",' ..
      '"type":"text","text":{"body":"hello %d"}}]}}]}]}',
      phone, tag, tid, n, n)
   headers["X-Hub-Signature-256"] = sign(body)
   return wrk.format("POST", nil, headers, body)
end
