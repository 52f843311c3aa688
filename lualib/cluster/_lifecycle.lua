-- _lifecycle.lua: the rolling reload shared by `cluster.reload()` and the built-in master
-- (`lcluster -w N`). One slot at a time: start the replacement, wait until it is ready
-- (listening, or it called process.ready()), then disconnect the old worker and wait for it
-- to exit (SIGKILL after the kill timeout). A replacement that fails to become ready aborts
-- the reload and the old workers keep serving.
local M = {}

-- The master's log lines: UTC time, pid, message (as PM2 and nginx stamp theirs).
local function log(msg)
  process._writeErr(('%s lcluster master[%d]: %s\n'):format(os.date('!%Y-%m-%dT%H:%M:%SZ'), process.pid, msg))
end
M.log = log

-- Waits for worker to be ready (listening, or process.ready()). cb(err) with err nil on
-- success, once.
function M.whenReady(worker, timeoutMs, cb)
  if worker._ready then
    return cb(nil)
  end
  local timer, onReady, onExit
  local function finish(err)
    clearTimeout(timer)
    worker:off('listening', onReady)
    worker:off('ready', onReady)
    worker:off('exit', onExit)
    cb(err)
  end
  onReady = function()
    finish(nil)
  end
  onExit = function(code, signal)
    finish(('exited before it was ready (%s)'):format(signal or ('code ' .. tostring(code))))
  end
  worker:on('listening', onReady)
  worker:on('ready', onReady)
  worker:on('exit', onExit)
  timer = setTimeout(function()
    finish(('not ready within %d ms'):format(timeoutMs))
  end, timeoutMs)
end

-- Asks a worker to stop (its stop sequence, with reason: 'stop' by default) and waits for it
-- to exit; SIGKILL after killTimeout (then onKill()). cb() after the exit.
function M.stopWorker(worker, killTimeout, cb, onKill, reason)
  if worker:isDead() then
    return cb and cb()
  end
  local timer = setTimeout(function()
    if not worker:isDead() then
      log(('worker %d (pid %d) did not exit within %d ms, killing it (SIGKILL)'):format(
        worker.id, worker.process.pid, killTimeout))
      worker:kill('SIGKILL')
      if onKill then
        onKill()
      end
    end
  end, killTimeout)
  worker:once('exit', function()
    clearTimeout(timer)
    if cb then
      cb()
    end
  end)
  if worker:isConnected() then
    -- The caller's reason, else one the built-in master noted on the worker ('scale',
    -- 'memory'), else 'stop'.
    worker:_stop(reason or worker._stopReason or 'stop')
  else
    worker:kill('SIGTERM')
  end
end

-- reload(slots, opts, cb): slots is a list of {worker=, fork=function() -> new worker};
-- each slot's new worker replaces the old. opts: readyTimeout, killTimeout, onReplace(slot,
-- new, old). cb(err) once every slot is done, or at the first failure.
function M.reload(slots, opts, cb)
  local i = 0
  local function nextSlot()
    i = i + 1
    local slot = slots[i]
    if not slot then
      return cb(nil)
    end
    local old = slot.worker
    if old and old:isDead() then
      return nextSlot()
    end
    local new = slot.fork()
    M.whenReady(new, opts.readyTimeout, function(err)
      if err then
        log(('reload aborted: new worker %d %s; keeping the old workers'):format(new.id, err))
        if not new:isDead() then
          M.stopWorker(new, opts.killTimeout)
        end
        return cb(err)
      end
      if opts.onReplace then
        opts.onReplace(slot, new, old)
      end
      if old then
        M.stopWorker(old, opts.killTimeout, nextSlot, nil, old._stopReason or 'reload')
      else
        nextSlot()
      end
    end)
  end
  nextSlot()
end

-- cluster.reload([fn]) for script masters: replaces every live worker, one at a time, with a
-- new one forked with the same environment; fn(err) at the end (err set when a replacement
-- failed and the reload stopped, keeping the remaining old workers). Calls while a reload
-- runs are coalesced into one more pass.
function M.install(cluster)
  local running, again, waiters = false, false, {}
  local function run()
    running = true
    local ids = {}
    for id in pairs(cluster.workers) do
      ids[#ids + 1] = id
    end
    table.sort(ids)
    local slots = {}
    for _, id in ipairs(ids) do
      local old = cluster.workers[id]
      slots[#slots + 1] = {
        worker = old,
        fork = function()
          return cluster.fork(old._env)
        end,
      }
    end
    local env = process.env
    M.reload(slots, {
      readyTimeout = tonumber(env.LCLUSTER_READY_TIMEOUT or '') or 10000,
      killTimeout = tonumber(cluster.settings.killTimeout) or tonumber(env.LCLUSTER_KILL_TIMEOUT or '') or 5000,
    }, function(err)
      running = false
      if again then
        again = false
        return run()
      end
      local list = waiters
      waiters = {}
      for _, fn in ipairs(list) do
        fn(err)
      end
    end)
  end
  function cluster.reload(fn)
    if fn ~= nil and type(fn) ~= 'function' then
      error('ERR_INVALID_ARG_TYPE: reload callback must be a function', 2)
    end
    waiters[#waiters + 1] = fn
    if running then
      again = true
    else
      run()
    end
  end
end

return M
