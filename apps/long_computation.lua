-- long_computation.lua: seed 001's CPU-bound server. Each request sums 0..n-1 before
-- answering, so one process serves one request at a time and a cluster scales with cores.
--   lcluster apps/long_computation.lua 3000            one process
--   lcluster -w auto apps/long_computation.lua 3000    one worker per CPU
-- arg[2] sets n (default 1e9, as in the seed; tests pass a small one).
local http = require('http')

local port = tonumber(arg[1]) or 3000
local n = tonumber(arg[2]) or 1e9
local pid = process.pid

local function longComputation()
  local sum = 0
  for i = 0, n - 1 do
    sum = sum + i
  end
  return sum
end

http.createServer(function(_, res)
  local start = process.hrtime()
  local sum = longComputation()
  local ms = (process.hrtime() - start) / 1e6
  res:finish(('Sum is %.0f--time-%d--pid = %d'):format(sum, ms, pid))
end):listen(port, function()
  print('started process', pid)
end)
