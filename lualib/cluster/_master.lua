-- _master.lua: the built-in master of `lcluster -w N app.lua`. It forks N workers running
-- app.lua, each in a slot whose number (LCLUSTER_WORKER_SLOT, like PM2's NODE_APP_INSTANCE)
-- survives respawns; replaces workers that exit unexpectedly, with exponential backoff for
-- crash loops; reloads them one at a time on SIGHUP / SIGUSR2; and stops gracefully on
-- SIGTERM / SIGINT / SIGQUIT (a second one stops at once); SIGUSR1 reopens log files;
-- replaces a worker whose loop stops answering (--watchdog); gives up, exit 1, when a port
-- cannot be used and no worker ever listened; runs --master FILE inside itself.
local lifecycle = require('_lifecycle')
local log = lifecycle.log

local M = {}

local function envNumber(name, default)
  local v = tonumber(process.env[name] or '')
  return v or default
end

function M.run(script, args, opts)
  local cluster = require('cluster')
  local n = opts.workers
  -- A master started by `lcluster upgrade` runs the old master's worker count, which
  -- `lcluster scale` may have changed since the command line was written (PM2 keeps a scaled
  -- count across `pm2 reload` too). The variable is the old master's (_upgrade.lua).
  local carried = tonumber(process.env.LCLUSTER_UPGRADE_WORKERS or '')
  process.env.LCLUSTER_UPGRADE_WORKERS = nil
  require('_core').setenv('LCLUSTER_UPGRADE_WORKERS', nil)
  if carried and process.env.LCLUSTER_UPGRADE and carried >= 1 and carried ~= n then
    log(('upgrade: %d workers, as the old master had after scale (the command line says %d)')
      :format(carried, n))
    n = carried
  end
  local killTimeout = opts.killTimeout or envNumber('LCLUSTER_KILL_TIMEOUT', 5000)
  local readyTimeout = opts.readyTimeout or envNumber('LCLUSTER_READY_TIMEOUT', 10000)
  -- A worker that dies before it is ready, or within this long of becoming ready, counts as
  -- a failed start; consecutive failures back off exponentially up to the cap.
  local stableAfter = envNumber('LCLUSTER_STABLE_AFTER', 5000)
  local backoffBase = envNumber('LCLUSTER_BACKOFF_BASE', 100)
  local backoffCap = envNumber('LCLUSTER_BACKOFF_CAP', 30000)
  -- A graceful stop is announced (STOPPING=1, GET /health 503, M.state.draining) this long
  -- before the workers stop accepting, so load balancers take the host out first.
  local drainDelay = opts.drainDelay or envNumber('LCLUSTER_DRAIN_DELAY', 0)
  -- While no worker has ever been ready, this many failed starts of one slot end the master
  -- (exit 1): a port in use or a broken config must not crash-loop silently forever.
  local maxStartFails = envNumber('LCLUSTER_MAX_START_FAILS', 8)
  local watchdog = opts.watchdog or envNumber('LCLUSTER_WATCHDOG', 30000)
  local everReady = false

  -- Workers get their own process group, so a terminal's Ctrl-C or a SIGHUP reaches only
  -- the master, which coordinates the stop or the reload.
  -- Silent: workers' stdout/stderr are pipes the master reads, to tag each line (_logs.lua).
  cluster.setupPrimary({ exec = script, args = args, detached = true, silent = true,
    killTimeout = killTimeout, watchdog = watchdog })
  local logger = require('_logs').new({ file = opts.log, format = opts.logFormat })
  cluster._onSpawn = logger.attach
  -- Workers report their counters to the master this often (_metrics.lua).
  process.env.LCLUSTER_METRICS_MS = process.env.LCLUSTER_METRICS_MS or '1000'
  -- Workers drain for at most as long on an uncaught error (_worker_lifecycle).
  process.env.LCLUSTER_KILL_TIMEOUT = tostring(killTimeout)
  -- Workers signalled with the master (systemd's KillMode=control-group) keep serving for
  -- the drain delay too, before they stop accepting (_worker_lifecycle).
  process.env.LCLUSTER_DRAIN_DELAY = drainDelay > 0 and tostring(drainDelay) or nil
  -- A worker must never take LCLUSTER_WORKERS as a request to be a master itself.
  process.env.LCLUSTER_WORKERS = nil
  -- Without --master nothing in this process listens for messages sent to 'master': the
  -- workers' process.sendTo('master', ...) returns false with a warning instead of losing
  -- them (_cluster_messaging).
  process.env.LCLUSTER_NO_MASTER = not opts.masterFile and '1' or nil

  local slots = {} -- slot -> { worker=, fails=, timer= }

  -- Cancels the slot's pending respawn, if any.
  local function clearSlotTimer(slot)
    if slot.timer then
      clearTimeout(slot.timer)
      slot.timer = nil
    end
  end

  local function clearSlotTimers()
    for _, slot in pairs(slots) do
      clearSlotTimer(slot)
    end
  end
  local stopping = false
  local reloading, reloadPending = false, false
  M.state = { draining = false } -- read by the operations code (/health)

  local function readyCount()
    local c = 0
    for _, slot in pairs(slots) do
      local w = slot.worker
      if w and w._ready and not w:isDead() then
        c = c + 1
      end
    end
    return c
  end
  -- systemd notifications (Type=notify): READY/RELOADING/STOPPING/STATUS/WATCHDOG.
  local sd = require('_systemd').master({
    total = function()
      return n
    end,
    ready = readyCount,
  })
  local reloadWaiters = {} -- fn(err) to call when the running (or pending) reload ends
  local ops -- the control socket and metrics (_control.lua), once listening

  -- A worker of `slot` is gone: counts a failed start (it died before it was ready, or
  -- within stableAfter of it) and returns the delay before the slot's next fork.
  local function backoff(slot, w)
    local ranFor = (process.hrtime() - (w._readyAt or w._forkedAt)) / 1e6
    if not w._ready or ranFor < stableAfter then
      slot.fails = slot.fails + 1
    else
      slot.fails = 0
    end
    if slot.fails == 0 then
      return 0
    end
    return math.min(backoffBase * 2 ^ (slot.fails - 1), backoffCap)
  end

  local schedule -- defined below fork, which it calls
  local function fork(slotNo)
    local slot = slots[slotNo]
    local w = cluster.fork({ LCLUSTER_WORKER_SLOT = tostring(slotNo) })
    w._slot = slotNo
    w._forkedAt = process.hrtime()
    slot.worker = w
    local function ready()
      w._ready = true
      w._readyAt = process.hrtime()
      sd.changed()
      everReady = true
    end
    w:on('listening', ready)
    w:on('ready', ready)
    -- An uncaught error: the worker drains and exits; its replacement starts now, so the
    -- slot keeps serving. The old worker's exit is then a replaced worker's exit.
    w:on('stopping', function(reason, detail)
      if reason == 'signal' then
        -- SIGTERM/SIGINT sent straight to the worker (a supervisor signalling every process
        -- of the service): it drains. Its replacement, if the master is not stopping too,
        -- comes after its exit, so a stop signalled to all processes at once forks nothing.
        log(('worker %d (pid %d, slot %d) got %s and drains'):format(w.id, w.process.pid, slotNo,
          tostring(detail)))
      elseif slot.worker == w and not stopping and w._ready then
        log(('worker %d (pid %d, slot %d) hit an uncaught error (%s); starting its replacement'):format(
          w.id, w.process.pid, slotNo, tostring(detail)))
        slot.worker = nil
        schedule(slotNo, backoff(slot, w))
      end
    end)
    -- The watchdog stops a worker whose loop stopped answering: its replacement starts now.
    w:on('unresponsive', function()
      if slot.worker == w and not stopping then
        slot.worker = nil
        schedule(slotNo, 0)
      end
    end)
    w:on('_stalled', function()
      log(('worker %d (pid %d, slot %d) has not acknowledged new connections for a second; '
        .. 'sending them to other workers'):format(w.id, w.process.pid, slotNo))
    end)
    w:on('_listenError', function(err)
      local where = err.port and (tostring(err.address) .. ':' .. tostring(err.port)) or tostring(err.address)
      log(('worker %d (pid %d, slot %d) cannot listen on %s: %s'):format(w.id, w.process.pid,
        slotNo, where, tostring(err.message)))
    end)
    w:on('exit', function(code, signal)
      sd.changed()
      local how = signal and ('signal ' .. signal) or ('code ' .. tostring(code))
      if slot.worker ~= w then
        -- A replaced worker, or a reload's replacement that never became ready.
        log(('worker %d (pid %d, slot %d) exited with %s'):format(w.id, w.process.pid or 0, slotNo, how))
        return
      end
      if stopping or w.exitedAfterDisconnect then
        log(('worker %d (pid %d, slot %d) exited with %s'):format(w.id, w.process.pid or 0, slotNo, how))
        slot.worker = nil
        return
      end
      -- --max-restarts: a slot that crashed too often within the window is left errored.
      if ops and ops.giveUp(slotNo, how) then
        slot.worker = nil
        return
      end
      local delay = backoff(slot, w)
      if not everReady and slot.fails >= maxStartFails then
        log(('worker %d (pid %d, slot %d) exited with %s before it was ready; no worker has ever '
          .. 'started after %d attempts, giving up'):format(w.id, w.process.pid, slotNo, how, slot.fails))
        slot.worker = nil
        M.giveUp()
        return
      end
      log(('worker %d (pid %d, slot %d) exited unexpectedly with %s%s; restarting in %d ms'):format(
        w.id, w.process.pid or 0, slotNo, how, w._ready and '' or ' before it was ready', delay))
      slot.worker = nil
      schedule(slotNo, delay)
    end)
    return w
  end

  schedule = function(slotNo, delay)
    local slot = slots[slotNo]
    if slot.timer then
      clearTimeout(slot.timer)
    end
    slot.timer = setTimeout(function()
      slot.timer = nil
      if not stopping and not slot.worker then
        fork(slotNo)
      end
    end, delay)
  end

  local reloadDone
  local function reload(cb)
    if type(cb) == 'function' then
      reloadWaiters[#reloadWaiters + 1] = cb
    end
    if stopping then
      local list = reloadWaiters
      reloadWaiters = {}
      for _, fn in ipairs(list) do
        fn('ESTOPPING: the master is stopping')
      end
      return
    end
    if reloading then
      reloadPending = true
      return
    end
    reloading = true
    sd.reloading()
    log('reloading ' .. n .. ' workers one at a time')
    local list = {}
    for slotNo = 1, n do
      list[#list + 1] = {
        worker = slots[slotNo].worker,
        fork = function()
          -- The new worker takes the slot once it is ready; until then the old one holds it.
          -- A respawn the slot was waiting for is this fork now.
          local slot = slots[slotNo]
          clearSlotTimer(slot)
          local old = slot.worker
          local w = fork(slotNo)
          slot.worker = old
          return w
        end,
        slotNo = slotNo,
      }
    end
    lifecycle.reload(list, {
      readyTimeout = readyTimeout,
      killTimeout = killTimeout,
      onReplace = function(entry, new)
        slots[entry.slotNo].worker = new
        slots[entry.slotNo].fails = 0
      end,
    }, function(err)
      if not err and cluster.agent and cluster._reloadAgent and not stopping then
        -- The agent is reloaded after the workers (they may talk to it while they start).
        return cluster._reloadAgent(readyTimeout, killTimeout, function(aerr)
          reloadDone(aerr)
        end)
      end
      reloadDone(err)
    end)
  end

  reloadDone = function(err)
    reloading = false
    sd.reloaded()
    if not err then
      log('reload complete')
      if ops then
        ops.reloaded()
      end
    end
    -- A slot whose worker had died (its respawn was taken over by the reload) and whose
    -- replacement did not come up is respawned as usual.
    for slotNo = 1, n do
      local slot = slots[slotNo]
      if not slot.worker and not slot.timer and not stopping then
        schedule(slotNo, backoffBase)
      end
    end
    if reloadPending then
      reloadPending = false
      reload()
    else
      local waiting = reloadWaiters
      reloadWaiters = {}
      for _, fn in ipairs(waiting) do
        fn(err)
      end
    end
  end

  local function killAll()
    for _, w in pairs(cluster.workers) do
      w:kill('SIGKILL')
    end
    if cluster.agent then
      cluster.agent:kill('SIGKILL')
    end
  end

  -- No worker ever listened and a slot failed maxStartFails times in a row: stop (nothing
  -- is served anyway) and exit 1, so a supervisor sees the failure.
  function M.giveUp()
    stopping = true
    clearSlotTimers()
    killAll()
    process.exit(1)
  end

  local stopNow -- the stop itself, after the drain delay
  local function stop(signal)
    if stopping then
      -- A second SIGTERM, SIGINT or SIGQUIT: stop at once, as the signal's default would. A
      -- second `lcluster stop` just waits for the first.
      local num = require('_core').signals[signal]
      if not num then
        return
      end
      log(('second %s: stopping at once'):format(signal))
      killAll()
      process.exit(128 + num)
    end
    stopping = true
    M.state.draining = true
    sd.stopping()
    if drainDelay > 0 then
      log(('%s: draining for %d ms before stopping %d workers'):format(signal, drainDelay, n))
      setTimeout(function()
        stopNow(signal)
      end, drainDelay)
      return
    end
    stopNow(signal)
  end

  stopNow = function(signal)
    if cluster._stopAgent then
      cluster._stopAgent()
    end
    log(('%s: stopping %d workers gracefully'):format(signal, n))
    clearSlotTimers()
    local killed = false
    local function finish()
      local function done()
        log('stopped')
        process.exit(killed and 1 or 0)
      end
      local a = cluster.agent
      if a and not a:isDead() then
        lifecycle.stopWorker(a, killTimeout, function()
          log(('agent (pid %d) stopped'):format(a.process.pid))
          done()
        end, function()
          killed = true
        end, 'stop')
      else
        done()
      end
    end
    local remaining = 0
    for _, w in pairs(cluster.workers) do
      remaining = remaining + 1
      lifecycle.stopWorker(w, killTimeout, function()
        remaining = remaining - 1
        if remaining == 0 then
          finish()
        end
      end, function()
        killed = true
      end, 'stop')
    end
    if remaining == 0 then
      finish()
    end
  end

  process.on('SIGHUP', function()
    reload()
  end)
  process.on('SIGUSR2', function()
    reload()
  end)
  process.on('SIGTERM', function()
    stop('SIGTERM')
  end)
  process.on('SIGINT', function()
    stop('SIGINT')
  end)
  process.on('SIGQUIT', function()
    stop('SIGQUIT')
  end)
  M.reload = reload

  -- scale(count, cb(err)): forks the new slots (cb once they are ready) or drains the
  -- highest ones (cb once they have exited).
  local function scale(count, cb)
    if stopping then
      return cb('ESTOPPING: the master is stopping')
    elseif reloading then
      return cb('EBUSY: a reload is running; scale after it')
    end
    local old = n
    local pending, failed = 1, nil
    local function one(err)
      failed = failed or err
      pending = pending - 1
      if pending == 0 then
        cb(failed)
      end
    end
    log(('scaling from %d to %d workers'):format(old, count))
    n = count
    for slotNo = old + 1, count do
      slots[slotNo] = { fails = 0 }
      pending = pending + 1
      lifecycle.whenReady(fork(slotNo), readyTimeout, one)
    end
    for slotNo = count + 1, old do
      local slot = slots[slotNo]
      slots[slotNo] = nil
      clearSlotTimer(slot)
      local w = slot.worker
      slot.worker = nil -- its exit is a removed slot's: no respawn
      if w and not w:isDead() then
        pending = pending + 1
        w._stopReason = 'scale'
        lifecycle.stopWorker(w, killTimeout, function()
          one()
        end)
      end
    end
    one()
  end

  -- replace(slotNo, reason, cb(err)): a one-slot rolling reload (--max-memory).
  local function replace(slotNo, reason, cb)
    local slot = slots[slotNo]
    if stopping or reloading or not slot or not slot.worker then
      return cb('EBUSY: slot ' .. slotNo .. ' cannot be replaced now')
    end
    local old = slot.worker
    old._stopReason = reason
    lifecycle.reload({ {
      worker = old,
      fork = function()
        local w = fork(slotNo)
        slot.worker = old
        return w
      end,
    } }, {
      readyTimeout = readyTimeout,
      killTimeout = killTimeout,
      onReplace = function(_, new)
        if slots[slotNo] == slot then
          slot.worker = new
        end
      end,
    }, cb)
  end

  -- --master FILE: the deployment's own code inside this master, with cluster and its
  -- events (fork, online, message, exit, ...) and process.on('message', fn(msg, _, from)) for
  -- what workers send to 'master'. It runs before the first fork.
  if opts.masterFile then
    local chunk, err = loadfile(opts.masterFile)
    if not chunk then
      log('cannot load --master ' .. opts.masterFile .. ': ' .. tostring(err))
      return 2
    end
    require('_core').call(chunk)
  end

  local startedAt = process.hrtime()
  local function startWorkers()
    for slotNo = 1, n do
      slots[slotNo] = { fails = 0 }
      fork(slotNo)
    end
    log(('started %d workers running %s'):format(n, script))
    -- Serving (GET /health 200) once every first worker is ready.
    local left = n
    for slotNo = 1, n do
      lifecycle.whenReady(slots[slotNo].worker, readyTimeout + stableAfter, function()
        left = left - 1
        if left == 0 and ops then
          ops.markStarted()
        end
      end)
    end
  end

  local function startAll()
    if opts.agent then
      cluster.forkAgent(opts.agent)
      local started = false
      cluster.on('agentReady', function(a)
        if not started then
          started = true
          log(('agent (pid %d) is ready'):format(a.process.pid))
          startWorkers()
        end
      end)
    else
      startWorkers()
    end
  end

  -- The control socket (and --metrics) listen before any worker starts: a second master
  -- with the same name stops here, before it forks anything.
  local ok, err = logger.reopen()
  if not ok then
    log(err)
    return 1
  end
  -- SIGUSR1 reopens the --log file (after logrotate moved it); without one it only says so:
  -- the signal's default action would end the master and the whole service.
  process.on('SIGUSR1', function()
    if not opts.log then
      log('SIGUSR1: no log file to reopen')
      return
    end
    local rok, rerr = logger.reopen()
    log(rok and ('reopened ' .. opts.log) or rerr)
  end)
  local status
  local control = require('_control')
  local name = opts.name or control.defaultName(script)
  local o = control.master({
    cluster = cluster,
    name = name,
    script = script,
    startedAt = startedAt,
    count = function()
      return n
    end,
    state = function()
      return { stopping = stopping, reloading = reloading }
    end,
    reload = reload,
    stop = function()
      stop('lcluster stop')
    end,
    scale = scale,
    replace = replace,
  }, opts, function(cerr)
    if cerr then
      log(cerr)
      status = 1
      require('_core').stop()
      return
    end
    startAll()
  end)
  ops = o

  require('_core').run('default')
  if status then
    return status
  end
  return process._emitExit()
end

return M
