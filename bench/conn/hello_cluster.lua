-- bench/conn/hello_cluster.lua: hello-world HTTP from a cluster, for bench/conn/run.
--   lcluster hello_cluster.lua PORT WORKERS BALANCE   (BALANCE: rr none reuseport least sticky)
-- Prints "ready N" once every worker listens. SIGTERM stops the workers and the master.
local cluster = require('cluster')
local http = require('http')

local port, workers, balance = tonumber(arg[1]) or 8000, tonumber(arg[2]) or 2, arg[3] or 'rr'

if cluster.isMaster then
  cluster.setupPrimary({ balance = balance })
  local listening = 0
  cluster.on('listening', function()
    listening = listening + 1
    if listening == workers then
      print('ready ' .. workers)
    end
  end)
  for _ = 1, workers do
    cluster.fork()
  end
  process.on('SIGTERM', function()
    for _, w in pairs(cluster.workers) do
      w:kill()
    end
    process.exit(0)
  end)
else
  http.createServer(function(_, res)
    res:setHeader('Content-Type', 'text/plain')
    res:writeHead(200)
    res:finish('hello world\n')
  end):listen(port)
end
