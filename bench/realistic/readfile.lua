-- readfile.lua: fs.readFile throughput, the lcluster side of bench/realistic/run's row.
--   lcluster bench/realistic/readfile.lua FILE RUNS
-- Reads FILE RUNS times in a row with fs.readFile (non-blocking) and prints
-- "readFile MiB/s best" (the best run) and the size it read.
local fs = require('fs')
local file, runs = arg[1], tonumber(arg[2]) or 3
local best, i = 0, 0
local hr = process.hrtime
local function one()
  i = i + 1
  local t0 = hr()
  fs.readFile(file, function(err, data)
    assert(not err, err and err.message)
    local secs = (hr() - t0) / 1e9
    local rate = #data / 1048576 / secs
    if rate > best then
      best = rate
    end
    if i < runs then
      return one()
    end
    print(('readFile %.0f MiB/s size %d'):format(best, #data))
  end)
end
one()
