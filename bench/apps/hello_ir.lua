-- hello_ir.lua: the standalone hello-world server bench/conn/ir runs under callgrind.
--   lcluster bench/apps/hello_ir.lua PORT
-- Prints "ready" once listening; on SIGTERM prints "requests N" to stderr and exits 0 (so
-- callgrind writes its counts).
local http = require('http')

local port = tonumber(arg[1]) or 8000
local n = 0
http.createServer(function(_, res)
  n = n + 1
  res:writeHead(200, { ['Content-Type'] = 'text/plain' })
  res:finish('hello world\n')
end):listen({ port = port, host = '127.0.0.1' }, function()
  print('ready')
  io.stdout:flush()
end)
process.on('SIGTERM', function()
  io.stderr:write('requests ' .. n .. '\n')
  process.exit(0)
end)
