-- hello.lua: a worker app with no cluster code, for `lcluster -w N bench/apps/hello.lua PORT`
-- (bench/reload, the RSS and keep-alive rows of bench/run). Prints "listening PORT" once it
-- listens, so a driver can count ready workers.
local http = require('http')

local port = tonumber(arg[1]) or 8000

http.createServer(function(_, res)
  res:writeHead(200, { ['Content-Type'] = 'text/plain' })
  res:finish('hello world\n')
end):listen(port, '127.0.0.1', function()
  print('listening ' .. port)
end)
