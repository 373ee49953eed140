-- wrk script for bench/providers-chat.sh: POST pre-signed Discord
-- interactions (Ed25519 cannot be computed per request here, so
-- bench/node-chat/chat.js signs a pool first). Each line of $BENCH_POOL is
-- "<timestamp>\t<hex signature>\t<body>"; thread k of T sends lines
-- k, k+T, k+2T, ... so every interaction id is sent once; should a thread
-- run out it starts over (counted: those are replays, which switchboard
-- acknowledges without storing again), reported in done().
local pool_file = assert(os.getenv("BENCH_POOL"), "BENCH_POOL unset")
local threads = {}
local counter = 1

function setup(thread)
   thread:set("tid", counter)
   counter = counter + 1
   table.insert(threads, thread)
end

local reqs = {}
local i = 0
wraps = 0

function init(args)
   local nthreads = tonumber(os.getenv("BENCH_THREADS_N") or "1")
   local n = 0
   for line in io.lines(pool_file) do
      if n % nthreads == tid - 1 then
         local ts, sig, body = line:match("^([^\t]+)\t([^\t]+)\t(.*)$")
         reqs[#reqs + 1] = wrk.format("POST", nil, {
            ["Content-Type"] = "application/json",
            ["X-Signature-Ed25519"] = sig,
            ["X-Signature-Timestamp"] = ts,
         }, body)
      end
      n = n + 1
   end
end

function request()
   i = i + 1
   if i > #reqs then
      i = 1
      wraps = wraps + 1
   end
   return reqs[i]
end

function done(summary, latency, requests)
   local w = 0
   for _, t in ipairs(threads) do w = w + (t:get("wraps") or 0) end
   io.write(string.format("pool wraps: %d\n", w))
end
