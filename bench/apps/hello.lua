-- hello.lua: a worker app with no cluster code, for `lcluster -w N bench/apps/hello.lua PORT`
-- (bench/reload). arg[2] picks the balancing policy ('-' or none: the cluster's), arg[3] the
-- address (default 127.0.0.1; bench/deploy runs hosts on 127.0.0.2-4). Prints
-- "listening PORT" once it listens, so a driver can count ready workers.
local http = require('http')

local port = tonumber(arg[1]) or 8000
local balance = arg[2] -- optional: rr, none, reuseport, least, sticky (default: the cluster's)
if balance == '-' then
  balance = nil
end
local host = arg[3] or '127.0.0.1'

http.createServer(function(_, res)
  res:writeHead(200, { ['Content-Type'] = 'text/plain' })
  res:finish('hello world\n')
end):listen({ port = port, host = host, balance = balance }, function()
  print('listening ' .. port)
end)
