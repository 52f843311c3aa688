-- startup.lua: time from spawn to the line "ready N", median of several runs.
--   lcluster bench/apps/startup.lua RUNS PORT N lcluster|node script [args...]
-- "{port}" in args is replaced by a fresh port per run (PORT, PORT+1, ...). Each run spawns
-- the server, waits for "ready N" on its stdout, then stops it (SIGTERM) and waits until the
-- master and its workers are gone. Prints "median_ms min_ms max_ms".
local lctest = require('lctest')

local runs = tonumber(arg[1])
local port0 = tonumber(arg[2])
local n = tonumber(arg[3])
local which = arg[4]
local script = arg[5]
assert(runs and port0 and n and script, 'usage: startup.lua RUNS PORT N lcluster|node script [args...]')

-- Alive and not a zombie (an orphaned worker is reparented to pid 1, which may not reap it).
local function running(pid)
  local f = io.open('/proc/' .. pid .. '/stat')
  if not f then
    return false
  end
  local stat = f:read('*l') or ''
  f:close()
  return stat:match('^%d+ %b() (%a)') ~= 'Z'
end

local times = {}
for i = 1, runs do
  local args = {}
  for j = 6, #arg do
    args[#args + 1] = (arg[j]:gsub('{port}', tostring(port0 + i - 1)))
  end
  local t0 = process.hrtime()
  local child = lctest.spawn(script, args, { binary = which == 'node' and 'node' or nil })
  child:waitOutput('ready ' .. n, 10000)
  times[#times + 1] = (process.hrtime() - t0) / 1e6
  local kids = lctest.childPids(child.pid)
  child:stop(3000)
  lctest.waitFor(function()
    for _, pid in ipairs(kids) do
      if running(pid) then
        return false
      end
    end
    return true
  end, 5000, 'workers to exit')
end
table.sort(times)
local median = #times % 2 == 1 and times[(#times + 1) / 2] or (times[#times / 2] + times[#times / 2 + 1]) / 2
print(('%.1f %.1f %.1f'):format(median, times[1], times[#times]))
