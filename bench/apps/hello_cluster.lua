-- hello_cluster.lua: hello-world behind a script master, the lcluster side of bench/run.
--   lcluster bench/apps/hello_cluster.lua PORT WORKERS [rr|none|reuseport|least|sticky]
-- The master forks WORKERS workers and prints "ready N" once N 'listening' events arrived
-- (the same line bench/node/http_cluster.js prints; bench/run times spawn -> that line).
-- SIGTERM / SIGINT stop the workers with the master.
local http = require('http')

local port = tonumber(arg[1]) or 8000
local workers = tonumber(arg[2]) or 2
local balance = arg[3] or 'rr'

if require('bench_master')(workers) then
  return
else
  http.createServer(function(_, res)
    res:writeHead(200, { ['Content-Type'] = 'text/plain' })
    res:finish('hello world\n')
  end):listen({ port = port, host = '127.0.0.1', balance = balance })
end
