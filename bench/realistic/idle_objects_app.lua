-- idle_objects_app.lua: the hello-world worker of bench/realistic/app.lua for
-- bench/realistic/idle_objects, plus a SIGWINCH listener in each worker that runs a full
-- collect and prints "lua PID KB" (collectgarbage('count') of the live objects).
--   lcluster bench/realistic/idle_objects_app.lua PORT WORKERS
local http = require('http')

local port = tonumber(arg[1]) or 8000
local workers = tonumber(arg[2]) or 2
local dir = arg[0]:match('^(.*)/') or '.'
package.path = dir .. '/../apps/?.lua;' .. package.path
if require('bench_master')(workers) then
  return
end

process.on('SIGWINCH', function()
  collectgarbage()
  collectgarbage()
  print(('lua %d %.1f'):format(process.pid, collectgarbage('count')))
  io.stdout:flush()
end)

local server = http.createServer(function(_, res)
  res:writeHead(200, { ['Content-Type'] = 'text/plain' })
  res:finish('hello world\n')
end)
server.keepAliveTimeout = 0
server:listen({ port = port, host = '127.0.0.1' })
