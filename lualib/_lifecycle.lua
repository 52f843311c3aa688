-- _lifecycle.lua: the rolling reload shared by `cluster.reload()` and the built-in master
-- (`lcluster -w N`). One slot at a time: start the replacement, wait until it is ready
-- (listening, or it called process.ready()), then disconnect the old worker and wait for it
-- to exit (SIGKILL after the kill timeout). A replacement that fails to become ready aborts
-- the reload and the old workers keep serving.
local M = {}

local function log(msg)
  process._writeErr('lcluster master: ' .. msg .. '\n')
end
M.log = log

-- Waits for worker to be ready. cb(err) with err nil on success.
function M.whenReady(worker, timeoutMs, cb)
  local done = false
  local timer
  local function finish(err)
    if done then
      return
    end
    done = true
    if timer then
      clearTimeout(timer)
    end
    worker:off('listening', worker._lcReadyL)
    worker:off('ready', worker._lcReadyR)
    worker:off('exit', worker._lcReadyE)
    cb(err)
  end
  if worker._ready then
    return cb(nil)
  end
  worker._lcReadyL = function()
    finish(nil)
  end
  worker._lcReadyR = worker._lcReadyL
  worker._lcReadyE = function(code, signal)
    finish(('exited before it was ready (%s)'):format(signal or ('code ' .. tostring(code))))
  end
  worker:on('listening', worker._lcReadyL)
  worker:on('ready', worker._lcReadyR)
  worker:on('exit', worker._lcReadyE)
  timer = setTimeout(function()
    finish(('not ready within %d ms'):format(timeoutMs))
  end, timeoutMs)
end

-- Disconnects a worker and waits for it to exit; SIGKILL after killTimeout (then onKill()).
-- cb() after the exit.
function M.stopWorker(worker, killTimeout, cb, onKill)
  if worker:isDead() then
    return cb and cb()
  end
  local timer = setTimeout(function()
    if not worker:isDead() then
      log(('worker %d (pid %d) did not exit within %d ms, killing it'):format(
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
    worker:disconnect()
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
        M.stopWorker(old, opts.killTimeout, nextSlot)
      else
        nextSlot()
      end
    end)
  end
  nextSlot()
end

return M
