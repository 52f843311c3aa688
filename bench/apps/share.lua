-- share.lua: how evenly a policy spreads connections (issue 7's balance targets).
--   lcluster bench/apps/share.lua POLICY [CONNECTIONS] [WORKERS]
-- The master forks WORKERS (2) workers serving one port with `balance = POLICY`, then opens
-- CONNECTIONS (10000) connections itself, 32 at a time; each worker answers with its id and
-- closes. Prints one line: for rr/least the largest deviation of a worker's share from even,
-- in percent; for sticky (clients bind 12 source addresses 127.0.0.2-13) the percentage of
-- addresses whose connections all reached one worker.
local cluster = require('cluster')
local core = require('_core')

local policy = arg[1] or 'rr'
local total = tonumber(arg[2]) or 10000
local workers = tonumber(arg[3]) or 2

if cluster.isWorker then
  require('net').createServer(function(sock)
    sock:finish(tostring(cluster.worker.id))
  end):listen({ port = 0, host = '127.0.0.1', balance = policy })
  return
end

local byWorker, byAddr = {}, {}
local started, done, inflight = 0, 0, 0
local port

local function finish()
  local line
  if policy == 'sticky' then
    local one, n = 0, 0
    for _, seen in pairs(byAddr) do
      n = n + 1
      local k = 0
      for _ in pairs(seen) do
        k = k + 1
      end
      if k == 1 then
        one = one + 1
      end
    end
    line = ('sticky %d connections: %.1f%% of %d client addresses reached one worker only'):format(
      total, 100 * one / n, n)
  else
    local even, worst = total / workers, 0
    local parts = {}
    for id = 1, workers do
      local got = byWorker[tostring(id)] or 0
      parts[#parts + 1] = tostring(got)
      worst = math.max(worst, math.abs(got - even) / even * 100)
    end
    line = ('%s %d connections over %d workers: %s (max deviation from even %.1f%%)'):format(
      policy, total, workers, table.concat(parts, ' / '), worst)
  end
  print(line)
  cluster.disconnect(function()
    process.exit(0)
  end)
end

local function one()
  if started == total then
    return
  end
  started = started + 1
  inflight = inflight + 1
  local from = policy == 'sticky' and ('127.0.0.' .. (2 + started % 12)) or nil
  local reply = ''
  local h
  h = core.tcp(function(ev, a)
    if ev == 'connect' then
      if a then
        error('connect failed: ' .. tostring(a))
      end
      h:read_start()
    elseif ev == 'data' then
      reply = reply .. a
    elseif ev == 'end' or ev == 'error' then
      h:close()
      byWorker[reply] = (byWorker[reply] or 0) + 1
      if from then
        byAddr[from] = byAddr[from] or {}
        byAddr[from][reply] = true
      end
      inflight = inflight - 1
      done = done + 1
      if done == total then
        return finish()
      end
      one()
    end
  end)
  if from then
    assert(h:bind(from, 0))
  end
  assert(h:connect('127.0.0.1', port))
end

local listening = 0
cluster.on('listening', function(_, address)
  port = address.port
  listening = listening + 1
  if listening == workers then
    for _ = 1, 32 do
      one()
    end
  end
end)
for _ = 1, workers do
  cluster.fork()
end
