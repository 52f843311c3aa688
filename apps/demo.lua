-- demo.lua: a tour of lcluster that runs by itself and stops (`make demo`).
-- The master forks one worker per CPU (at least 2) serving HTTP on one shared port, then:
--   1. sends requests and shows that every worker answers (round-robin hand-off in C),
--   2. kills a worker and shows the respawned one serving,
--   3. reloads every worker one at a time (cluster.reload) while requests keep flowing,
--   4. disconnects the cluster gracefully and exits 0.
local cluster = require('cluster')
local http = require('http')

if cluster.isWorker then
  http.createServer(function(req, res)
    res:setHeader('Content-Type', 'text/plain')
    res:finish(('hello from worker %d (pid %d) for %s\n'):format(cluster.worker.id, process.pid, req.url))
  end):listen(tonumber(arg[1]) or 0, '127.0.0.1')
  return
end

local n = math.max(2, #os.cpus())
local port
local step

local function say(fmt, ...)
  print(('[master %d] ' .. fmt):format(process.pid, ...))
end

-- Sends `count` requests, `conc` at a time; fn(tally by pid, failures) when all are done.
local function burst(count, conc, fn)
  local tally, failed, sent, done = {}, 0, 0, 0
  local function one()
    if sent == count then
      return
    end
    sent = sent + 1
    http.get({ host = '127.0.0.1', port = port, path = '/demo' }, function(res)
      local body = {}
      res:on('data', function(c)
        body[#body + 1] = c
      end)
      res:on('end', function()
        local pid = table.concat(body):match('pid (%d+)')
        tally[pid] = (tally[pid] or 0) + 1
        done = done + 1
        if done == count then
          return fn(tally, failed)
        end
        one()
      end)
    end):on('error', function()
      failed = failed + 1
      done = done + 1
      if done == count then
        return fn(tally, failed)
      end
      one()
    end)
  end
  for _ = 1, conc do
    one()
  end
end

local function show(tally, failed)
  local pids = {}
  for pid in pairs(tally) do
    pids[#pids + 1] = pid
  end
  table.sort(pids)
  for _, pid in ipairs(pids) do
    say('  worker pid %s answered %d requests', pid, tally[pid])
  end
  say('  failed requests: %d', failed)
end

local steps = {}
steps[1] = function()
  say('1. %d requests over %d workers sharing port %d:', 40, n, port)
  burst(40, 4, function(tally, failed)
    show(tally, failed)
    step(2)
  end)
end
steps[2] = function()
  local _, victim = next(cluster.workers)
  say('2. killing worker %d (pid %d) with SIGKILL; the master forks a replacement',
    victim.id, victim.process.pid)
  cluster.once('listening', function(w)
    say('   worker %d (pid %d) took its place', w.id, w.process.pid)
    burst(20, 4, function(tally, failed)
      show(tally, failed)
      step(3)
    end)
  end)
  -- process.kill, not worker:kill(): to the master this is a crash, not a wanted exit.
  process.kill(victim.process.pid, 'SIGKILL')
end
steps[3] = function()
  say('3. rolling reload: each worker is replaced one at a time while 200 requests run')
  local reloaded, loaded = false, false
  local function maybeNext()
    if reloaded and loaded then
      step(4)
    end
  end
  burst(200, 4, function(tally, failed)
    show(tally, failed)
    loaded = true
    maybeNext()
  end)
  cluster.reload(function(err)
    say('   reload %s', err and ('failed: ' .. tostring(err)) or 'complete')
    reloaded = true
    maybeNext()
  end)
end
steps[4] = function()
  say('4. disconnecting: workers finish what they have and exit')
  cluster.disconnect(function()
    say('all workers exited; bye')
    process.exit(0)
  end)
end
step = function(i)
  setImmediate(steps[i])
end

cluster.on('exit', function(w, code, signal)
  if not w.exitedAfterDisconnect then
    say('worker %d (pid %d) died (%s); forking a new one', w.id, w.process.pid, tostring(signal or code))
    cluster.fork()
  end
end)

say('starting %d workers', n)
local listening = 0
local function onListening(_, address)
  listening = listening + 1
  port = port or address.port
  if listening == n then
    cluster.off('listening', onListening)
    step(1)
  end
end
cluster.on('listening', onListening)
for _ = 1, n do
  cluster.fork()
end
-- Stop after a minute whatever happens, so the demo never hangs.
setTimeout(function()
  say('demo timed out')
  process.exit(1)
end, 60000):unref()
