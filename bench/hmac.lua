-- HMAC-SHA256 in hex for the wrk scripts (bench/slack-webhook.lua,
-- bench/meta-webhook.lua), by libcrypto through LuaJIT's FFI (wrk runs
-- LuaJIT): about a microsecond, so every request can carry a unique body.
-- Load it with dofile from the calling script's folder; it returns
-- hmac_hex(key, data).
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

local md = ffi.new("unsigned char[32]")
local mdlen = ffi.new("unsigned int[1]")
local sha256 = crypto.EVP_sha256()
local hex = {}
for i = 0, 255 do hex[i] = string.format("%02x", i) end

return function(key, data)
   crypto.HMAC(sha256, key, #key, data, #data, md, mdlen)
   local out = {}
   for i = 0, 31 do out[i + 1] = hex[md[i]] end
   return table.concat(out)
end
