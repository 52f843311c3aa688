-- _watchdog.lua: the master notices a worker whose event loop stopped answering (a handler in
-- `while true do end`, a SIGSTOPped process) and replaces it.
--
-- A worker forked while cluster.settings.watchdog is a number of milliseconds > 0 (the
-- built-in master sets it from --watchdog, 30000 by default) is pinged over its channel every
-- quarter of that (at most every second, at least every 20 ms); its loop answers each ping.
-- A worker that has not answered for `watchdog` ms gets 'unresponsive'(ms) (on the worker and
-- on cluster, as (worker, ms)) and is stopped with reason 'watchdog': its stop sequence if it
-- can still run it, SIGKILL after the kill timeout otherwise. Script masters that respawn on
-- 'exit' respawn it as usual. The cost is one small frame each way per worker per period; no
-- request pays anything.
local M = {}

function M.install(cluster)
  local internal = cluster._internal
  local timer, period = nil, nil

  local function now()
    return process.hrtime() / 1e6
  end

  internal.pong = function(w)
    w._pongAt = now()
  end

  local function fire(w, silentFor)
    w._watchdogFired = true
    require('_lifecycle').log(('worker %d (pid %d) has not answered for %d ms (watchdog); replacing it'):format(
      w.id, w.process.pid, math.floor(silentFor)))
    cluster._emitBoth(w, 'unresponsive', math.floor(silentFor))
    local killTimeout = tonumber(cluster.settings.killTimeout)
      or tonumber(process.env.LCLUSTER_KILL_TIMEOUT or '') or 5000
    require('_lifecycle').stopWorker(w, killTimeout, nil, nil, 'watchdog')
  end

  local function tick()
    local t = now()
    local any = false
    for _, w in pairs(cluster.workers) do
      local limit = w._watchdog
      if limit and w._channel and not w._disconnecting and not w._stopping and not w._watchdogFired then
        any = true
        if w.state == 'none' then
          -- The clock starts when the worker is online (its script may take long to load).
          w._pongAt = t
        else
          local silent = t - w._pongAt
          if silent > limit then
            fire(w, silent)
          else
            w:_sendInternal({ cmd = 'ping' })
          end
        end
      end
    end
    if not any then
      clearInterval(timer)
      timer, period = nil, nil
    end
  end

  -- Called by fork: starts (or speeds up) the timer for a worker with a watchdog.
  function cluster._watchdogAdd(w)
    local limit = tonumber(cluster.settings.watchdog)
    if not limit or limit <= 0 then
      return
    end
    w._watchdog = limit
    w._pongAt = now()
    local p = math.max(20, math.min(1000, math.floor(limit / 4)))
    if timer and period <= p then
      return
    end
    if timer then
      clearInterval(timer)
    end
    period = p
    timer = setInterval(tick, p)
    -- The watchdog never keeps a master alive by itself.
    timer:unref()
  end

end

return M
