-- http_cluster.lua: the seeds' first example. The master forks one worker per CPU; every
-- worker serves "hello world" on the same port (arg[1] or 8000), shared through the master.
--   lcluster apps/http_cluster.lua 8000
local cluster = require('cluster')
local http = require('http')

local port = tonumber(arg[1]) or 8000

if cluster.isMaster then
  print(('master %d is running'):format(process.pid))
  local n = tonumber(arg[2]) or #os.cpus()
  for _ = 1, n do
    cluster.fork()
  end
  cluster.on('exit', function(worker, code, signal)
    print(('worker %d exit (%s)'):format(worker.process.pid, tostring(signal or code)))
  end)
  -- Stop the workers with the master, so Ctrl-C or a supervisor's SIGTERM ends everything.
  local function stop()
    for _, worker in pairs(cluster.workers) do
      worker:kill()
    end
    process.exit(0)
  end
  process.on('SIGINT', stop)
  process.on('SIGTERM', stop)
else
  http.createServer(function(_, res)
    res:writeHead(200)
    res:finish('hello world\n')
  end):listen(port, function()
    print(('worker %d is running on port %d'):format(process.pid, port))
  end)
end
