-- bench_master.lua: the script master of the lcluster bench apps (hello_cluster.lua,
-- https_hello.lua, bench/realistic/app.lua). In the master it forks WORKERS workers, prints
-- "ready N" once N 'listening' events arrived (the line bench/node/*.js print too; bench/run
-- times spawn -> that line), stops the workers with itself on SIGTERM / SIGINT, and returns
-- true, so the app's script ends there; in a worker it returns false.
local cluster = require('cluster')

return function(workers)
  if not cluster.isMaster then
    return false
  end
  local listening = 0
  cluster.on('listening', function()
    listening = listening + 1
    if listening == workers then
      print('ready ' .. workers)
      io.stdout:flush()
    end
  end)
  for _ = 1, workers do
    cluster.fork()
  end
  local function stop()
    for _, worker in pairs(cluster.workers) do
      worker:kill()
    end
    process.exit(0)
  end
  process.on('SIGINT', stop)
  process.on('SIGTERM', stop)
  return true
end
