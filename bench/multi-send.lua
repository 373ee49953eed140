-- wrk script for bench/providers-chat.sh: POST a message with a unique text
-- to one of many paths in turn (one per bot: switchboard's
-- /v1/instances/{id}/messages, or the Node peer's /send/{k}), read from
-- $BENCH_PATHS (one path a line). Environment: SB_AUTH (optional
-- "Authorization" value), BENCH_TAG, BENCH_TO (channel id).
local auth = os.getenv("SB_AUTH")
local tag = os.getenv("BENCH_TAG") or "x"
local to = os.getenv("BENCH_TO") or "1100000000000000001"
local paths_file = assert(os.getenv("BENCH_PATHS"), "BENCH_PATHS unset")
local paths = {}
for line in io.lines(paths_file) do
   paths[#paths + 1] = line
end
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
   local p = paths[(n * 7 + tid) % #paths + 1]
   local body = string.format('{"to":"%s","text":"bench %s-%d-%d"}', to, tag, tid, n)
   return wrk.format("POST", p, headers, body)
end
