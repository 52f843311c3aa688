-- json_ir.lua: the standalone JSON API server bench/realistic/ir runs under callgrind: the
-- route of bench/realistic/app.lua (json_route.lua) on POST /json, no cluster.
--   lcluster bench/realistic/json_ir.lua PORT
-- Prints "ready" once listening; on SIGTERM prints "requests N" to stderr and exits 0 (so
-- callgrind writes its counts), as bench/apps/hello_ir.lua does.
local http = require('http')

package.path = (arg[0]:match('^(.*)/') or '.') .. '/?.lua;' .. package.path
local jsonRoute = require('json_route')

local port = tonumber(arg[1]) or 8000
local n = 0
http.createServer(function(req, res)
  n = n + 1
  jsonRoute(req, res)
end):listen({ port = port, host = '127.0.0.1' }, function()
  print('ready')
  io.stdout:flush()
end)
process.on('SIGTERM', function()
  io.stderr:write('requests ' .. n .. '\n')
  process.exit(0)
end)
