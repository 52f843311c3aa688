-- hello_cluster.lua: hello-world behind a script master, the lcluster side of bench/run.
--   lcluster bench/apps/hello_cluster.lua PORT WORKERS [rr|none|reuseport|least|sticky]
-- The master forks WORKERS workers and prints "ready N" once N 'listening' events arrived
-- (the same line bench/node/http_cluster.js prints; bench/run times spawn -> that line).
-- SIGTERM / SIGINT stop the workers with the master.
local cluster = require('cluster')
local http = require('http')

local port = tonumber(arg[1]) or 8000
local workers = tonumber(arg[2]) or 2
local balance = arg[3] or 'rr'

if cluster.isMaster then
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
    res:writeHead(200, { ['Content-Type'] = 'text/plain' })
    res:finish('hello world\n')
  end):listen({ port = port, host = '127.0.0.1', balance = balance })
end
