-- _worker_lifecycle.lua: a worker's graceful exit on an uncaught error (seed 000: stop
-- accepting, finish what is in flight, exit, and let the master fork a replacement).
-- Without a process.on('uncaughtException') listener, an uncaught error in a worker:
--   1. is logged with its traceback (process.lua does that),
--   2. tells the master ('stopping'), which stops routing to it and may start a replacement,
--   3. closes the worker's shared servers, so in-flight requests finish and idle keep-alive
--      connections close,
--   4. exits with status 1 once they are done, or after the kill timeout
--      (LCLUSTER_KILL_TIMEOUT, 5000 ms by default).
-- Further errors while draining are logged and do not restart the sequence.
return function(cluster)
  local process = require('process')
  local stopping = false

  table.insert(process._uncaughtHooks, function(err)
    if stopping then
      return true
    end
    stopping = true
    if cluster.worker.state ~= 'listening' then
      -- Nothing served yet (an error while starting): nothing to drain.
      process.exit(1)
    end
    local timeout = tonumber(process.env.LCLUSTER_KILL_TIMEOUT or '') or 5000
    process._writeErr(('lcluster: worker %d stops accepting and exits after in-flight work (at most %d ms)\n')
      :format(cluster.worker.id, timeout))
    cluster._sendInternal({ cmd = 'stopping', reason = tostring(err) })
    setTimeout(function()
      process.exit(1)
    end, timeout)
    local closers = cluster._closers
    local left = #closers
    if left == 0 then
      process.exit(1)
    end
    for i = #closers, 1, -1 do
      closers[i](function()
        left = left - 1
        if left == 0 then
          process.exit(1)
        end
      end)
    end
    return true
  end)
end
