-- bench/ipc/ipc_bench.lua: cluster IPC throughput of lcluster (see ./run, which runs the
-- Node twin ipc_bench.js in the same run). `lcluster ipc_bench.lua <test> <count>` prints
-- one JSON line: {"test":..., "count":..., "seconds":..., "rate":...}.
--   pingpong  round trips of one 16-byte message in flight
--   stream    small messages from the worker, as fast as it can send them
--   big       1 MiB string messages from the worker (rate in MiB/s)
local cluster = require('cluster')
local cjson = require('cjson')

local test, count = arg[1], tonumber(arg[2])

if cluster.isMaster then
  local w = cluster.fork()
  local t0, n = nil, 0
  local function done(rate)
    local secs = (process.hrtime() - t0) / 1e9
    print(cjson.encode({ test = test, count = count, seconds = secs, rate = rate(secs) }))
    w:kill('SIGKILL')
    process.exit(0)
  end
  w:on('online', function()
    t0 = process.hrtime()
    if test == 'pingpong' then
      w:send('0123456789abcdef')
    else
      w:send('go')
    end
  end)
  w:on('message', function(m)
    n = n + 1
    if test == 'pingpong' then
      if n == count then
        return done(function(s)
          return count / s
        end)
      end
      w:send(m)
    elseif n == count then
      if test == 'big' then
        assert(#m == 1024 * 1024)
        return done(function(s)
          return count / s
        end)
      end
      return done(function(s)
        return count / s
      end)
    end
  end)
else
  local big = string.rep('x', 1024 * 1024)
  process.on('message', function(m)
    if test == 'pingpong' then
      process.send(m)
    elseif test == 'stream' then
      for i = 1, count do
        process.send({ seq = i, v = 'abc' })
      end
    else
      for _ = 1, count do
        process.send(big)
      end
    end
  end)
end
