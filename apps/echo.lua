-- echo.lua: a TCP echo service, run by the built-in master:
--   lcluster -w 2 apps/echo.lua 7000
-- Every worker listens on the same port (shared through the master); each line a client
-- sends comes back prefixed with the worker that served it.
local net = require('net')

local port = tonumber(arg[1]) or 7000

local server = net.createServer(function(socket)
  local buffered = ''
  socket:on('data', function(chunk)
    buffered = buffered .. chunk
    for line in buffered:gmatch('([^\n]*)\n') do
      socket:write(('[%d] %s\n'):format(process.pid, line))
    end
    buffered = buffered:match('[^\n]*$')
  end)
  socket:on('end', function()
    socket:finish()
  end)
end)

server:listen(port, '127.0.0.1', function()
  print(('worker %d: echo listening on %d'):format(process.pid, port))
end)
