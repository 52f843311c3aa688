-- bench/ipc/ipc_bench.lua: cluster IPC throughput of lcluster (see ./run, which runs the
-- Node twin ipc_bench.js in the same run). `lcluster ipc_bench.lua <test> <count>` prints
-- one JSON line: {"test":..., "count":..., "seconds":..., "rate":...}.
--   pingpong       round trips of one 16-byte message in flight
--   stream         small messages from the worker, as fast as it can send them
--   big            1 MiB string messages from the worker (rate in MiB/s)
--   bigtable-up    1 MiB table messages {i=n, p=<1 MiB string>} from the worker to the master,
--                  sent as a well-behaved stream (stop on false, resume on 'drain'); MiB/s
--   bigtable-down  the same from the master to the worker (the worker answers 'done')
-- The bigtable tests also report, in the same process before the stream starts, lua-cjson's
-- own rates on the same message: "encode" and "decode" (MiB/s, best of a few passes) and
-- "codec", the slower of the two: the most a two-process stream can reach, as the sender
-- encodes while the receiver decodes.
local cluster = require('cluster')
local cjson = require('cjson')

local test, count = arg[1], tonumber(arg[2])
local MiB = 1024 * 1024
local bigtable = test == 'bigtable-up' or test == 'bigtable-down'

-- CPU seconds (user + system) a process has used so far, from /proc (Linux): on a shared
-- machine, where wall-clock rates swing with other jobs, CPU time per message is steadier.
local function cpuOf(pid)
  local f = io.open(('/proc/%d/stat'):format(pid))
  if not f then
    return 0
  end
  local stat = f:read('*a')
  f:close()
  -- Fields after the command name (which may hold spaces, so skip past its ')').
  local rest = stat:match('%) (.*)$')
  local fields = {}
  for x in rest:gmatch('%S+') do
    fields[#fields + 1] = x
  end
  return (tonumber(fields[12]) + tonumber(fields[13])) / 100 -- utime, stime in ticks
end

-- lua-cjson alone on {i=, p=<1 MiB string>}: encode and decode rates in MiB/s, best of 3
-- passes of n messages each (a fresh instance with lua-cjson's defaults).
local function codec(big, n)
  local c = cjson.new()
  local enc, dec = 0, 0
  for _ = 1, 3 do
    local msg, s = { i = 0, p = big }, nil
    local t0 = process.hrtime()
    for i = 1, n do
      msg.i = i
      s = c.encode(msg)
    end
    local t1 = process.hrtime()
    for _ = 1, n do
      assert(#c.decode(s).p == MiB)
    end
    local t2 = process.hrtime()
    enc = math.max(enc, n / ((t1 - t0) / 1e9))
    dec = math.max(dec, n / ((t2 - t1) / 1e9))
  end
  return enc, dec
end

-- Sends {i=, p=big} count times through send(msg) -> boolean, stopping on false until
-- on_drain calls the returned function again.
local function streamer(big, send)
  local sent = 0
  return function()
    while sent < count do
      sent = sent + 1
      if not send({ i = sent, p = big }) then
        return
      end
    end
  end
end

if cluster.isMaster then
  local extra = {}
  local w = cluster.fork()
  local t0, n = nil, 0
  local cpu0, wcpu0
  local function done(rate)
    local secs = (process.hrtime() - t0) / 1e9
    local out = { test = test, count = count, seconds = secs, rate = rate(secs) }
    if bigtable then
      -- CPU ms per message on each side, counted from 'online' (after the codec pass).
      out.master_cpu_ms = (cpuOf(process.pid) - cpu0) * 1000 / count
      out.worker_cpu_ms = (cpuOf(w.process.pid) - wcpu0) * 1000 / count
    end
    for k, v in pairs(extra) do
      out[k] = v
    end
    print(cjson.encode(out))
    w:kill('SIGKILL')
    process.exit(0)
  end
  local function perSecond(s)
    return count / s
  end
  w:on('online', function()
    -- The codec pass runs once the worker is forked: its freed 1 MiB blocks, kept by the
    -- allocator's cache (runtime/bigalloc.c), would otherwise be write-protected by the
    -- fork and cost a fault per page on their first reuse in the stream (a one-off per
    -- fork, ~26 per message over 200 in bigtable-down), which is not the stream's cost.
    if bigtable then
      local enc, dec = codec(string.rep('x', MiB), 20)
      extra = { encode = enc, decode = dec, codec = math.min(enc, dec) }
    end
    t0 = process.hrtime()
    cpu0, wcpu0 = cpuOf(process.pid), cpuOf(w.process.pid)
    if test == 'pingpong' then
      w:send('0123456789abcdef')
    elseif test == 'bigtable-down' then
      local pump = streamer(string.rep('x', MiB), function(m)
        return w:send(m)
      end)
      w:on('drain', pump)
      pump()
    else
      w:send('go')
    end
  end)
  w:on('message', function(m)
    n = n + 1
    if test == 'pingpong' then
      if n == count then
        return done(perSecond)
      end
      w:send(m)
    elseif test == 'bigtable-down' then
      assert(m == 'done')
      return done(perSecond)
    elseif test == 'bigtable-up' then
      assert(m.i == n and #m.p == MiB, 'out of order or damaged')
      if n == count then
        return done(perSecond)
      end
    elseif n == count then
      if test == 'big' then
        assert(#m == MiB)
      end
      return done(perSecond)
    end
  end)
else
  local big = string.rep('x', MiB)
  local n = 0
  process.on('message', function(m)
    if test == 'pingpong' then
      process.send(m)
    elseif test == 'stream' then
      for i = 1, count do
        process.send({ seq = i, v = 'abc' })
      end
    elseif test == 'bigtable-up' then
      local pump = streamer(big, process.send)
      process.on('drain', pump)
      pump()
    elseif test == 'bigtable-down' then
      n = n + 1
      assert(m.i == n and #m.p == MiB, 'out of order or damaged')
      if n == count then
        process.send('done')
      end
    else
      for _ = 1, count do
        process.send(big)
      end
    end
  end)
end
