-- abuse_app.lua: the worker app bench/abuse/run attacks, for `lcluster -w N abuse_app.lua PORT`.
--   /upload  starts reading the body only after 60 s (a handler that reads it later, after
--            some other work): an upload the handler has not started reading
--   /stuck   loops forever (a handler that never returns: the watchdog's case)
--   anything else: hello world
-- Prints "listening PORT" once it listens, so a driver can count ready workers.
local http = require('http')

local port = tonumber(arg[1]) or 8000

http.createServer(function(req, res)
  if req.url == '/upload' then
    setTimeout(function()
      req:on('data', function() end)
      res:finish('late\n')
    end, 60000)
    return
  elseif req.url == '/stuck' then
    while true do -- luacheck: ignore 512
    end
  end
  res:writeHead(200, { ['Content-Type'] = 'text/plain' })
  res:finish('hello world\n')
end):listen({ port = port, host = '127.0.0.1' }, function()
  print('listening ' .. port)
end)
