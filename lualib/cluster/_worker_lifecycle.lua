-- _worker_lifecycle.lua: the stop sequence of a worker (and of the agent). Whatever asks a
-- worker to stop runs the same sequence: the master's disconnect (a reload, a stop, a
-- scale-down, the watchdog, worker:disconnect()), SIGTERM/SIGINT sent straight to the worker
-- while the script has no listener for that signal (systemd's KillMode=control-group signals
-- every process of the service at once), or an uncaught error with no 'uncaughtException'
-- listener:
--   1. process 'shutdown'(reason, done) while the channel is still open, so listeners can
--      still send (flush state to the agent, say goodbye); each listener calls done() once;
--   2. at the same time, the shared servers stop accepting (cluster._closers): in-flight
--      requests finish, idle keep-alive connections close;
--   3. when both are over: the channel closes after its queue is written, 'disconnect', and
--      the process exits (0; 1 after an uncaught error) even if timers are still set.
-- The kill timeout (LCLUSTER_KILL_TIMEOUT, which the master sets from --kill-timeout or
-- cluster.settings.killTimeout) bounds the sequence: past it the worker exits 1 on its own
-- (the master SIGKILLs a worker too stuck to do even that).
-- Reasons: 'reload' | 'stop' | 'scale' | 'signal' | 'error' | 'memory' | 'watchdog'.
local core = require('_core')

return function(cluster)
  local process = require('process')
  local worker = cluster.worker
  local running = false

  local function timeoutMs()
    return tonumber(process.env.LCLUSTER_KILL_TIMEOUT or '') or 5000
  end

  -- Runs the sequence once; later requests are ignored (a stop that arrives while a worker
  -- already drains for a signal must not start a second one). selfInitiated: the worker
  -- decided (a signal, an uncaught error), so the master is told, stops routing to it and
  -- decides about a replacement. Returns false when a sequence already runs.
  local function shutdown(reason, code, selfInitiated, detail)
    if running then
      return false
    end
    running = true
    cluster._draining = true
    worker.state = 'disconnecting'
    if selfInitiated then
      cluster._sendInternal({ cmd = 'stopping', reason = reason, detail = detail })
    else
      worker.exitedAfterDisconnect = true
    end
    local timeout = timeoutMs()
    -- A little after the master's own kill timer (it counts from when it asked), so that a
    -- master that kills (-w, cluster.reload) reports the kill; this bound is for masters
    -- that never kill.
    local deadline = setTimeout(function()
      process._writeErr(('lcluster: worker %s did not finish stopping (%s) within %d ms; exiting\n'):format(
        tostring(worker.id), reason, timeout))
      process.exit(1)
    end, timeout + 500)
    deadline:unref()

    local left = 1 -- the servers, plus one per 'shutdown' listener
    local function finish()
      left = left - 1
      if left > 0 then
        return
      end
      cluster._stopCode = code
      cluster._closeChannelForStop()
    end

    local list = process.listeners('shutdown')
    left = left + #list
    for _, fn in ipairs(list) do
      local called = false
      local function done()
        if not called then
          called = true
          finish()
        end
      end
      local ok, err = xpcall(fn, debug.traceback, reason, done)
      if not ok then
        -- A failing listener is reported and counts as done: it will not call done now.
        process._writeErr('lcluster: error in a shutdown listener: ' .. tostring(err) .. '\n')
        done()
      end
    end

    local closers = cluster._closers
    local servers = #closers
    if servers == 0 then
      finish()
    else
      for i = #closers, 1, -1 do
        closers[i](function()
          servers = servers - 1
          if servers == 0 then
            finish()
          end
        end)
      end
    end
    return true
  end
  cluster._shutdown = shutdown

  -- An uncaught error without a listener: the traceback was logged (process.lua); the worker
  -- stops as above with reason 'error' and status 1, and the master starts its replacement
  -- at once. Further errors while draining are logged and do not restart the sequence.
  table.insert(process._uncaughtHooks, function(err)
    if running then
      return true
    end
    if worker.state ~= 'listening' then
      -- Nothing served yet (an error while starting): nothing to drain.
      process.exit(1)
    end
    process._writeErr(('lcluster: worker %d stops accepting and exits after in-flight work (at most %d ms)\n')
      :format(worker.id, timeoutMs()))
    shutdown('error', 1, true, tostring(err))
    return true
  end)

  -- SIGTERM / SIGINT straight to the worker (not from the master: its worker:kill() still
  -- kills, runtime/signal.c), with no listener of the script's own: drain instead of dying
  -- (the default action would fail every request in flight). A second signal ends the
  -- worker at once, as the default action would have.
  local parent = core.ppid()
  local signalled = false
  local function onSignal(num)
    local name = num == core.signals.SIGINT and 'SIGINT' or 'SIGTERM'
    if process.listenerCount(name) > 0 then
      return
    end
    if signalled then
      process.exit(128 + num)
    end
    -- A signal while the worker already stops for another reason (the master's stop, sent to
    -- every process at once) is part of the same stop.
    signalled = true
    -- Under `-w --drain-delay MS` the worker keeps serving that long first, as the master
    -- does on its own stop, so load balancers take the host out before ports close.
    local delay = tonumber(process.env.LCLUSTER_DRAIN_DELAY or '') or 0
    if delay > 0 then
      setTimeout(function()
        shutdown('signal', 0, true, name)
      end, delay)
    else
      shutdown('signal', 0, true, name)
    end
  end
  core.drain_signals(onSignal, parent)
  -- A script's own listener takes the signal over (libuv installs its handler); once the
  -- last one is gone libuv resets the signal to its default, so the handler comes back.
  process.on('removeListener', function(ev)
    if (ev == 'SIGTERM' or ev == 'SIGINT') and process.listenerCount(ev) == 0 then
      core.drain_signals(onSignal, parent)
    end
  end)
end
