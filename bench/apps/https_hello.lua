-- https_hello.lua: HTTPS hello-world behind a script master, the lcluster side of bench/https/run.
--   lcluster bench/apps/https_hello.lua PORT WORKERS CERTDIR
-- CERTDIR holds server.key and server.pem. The master forks WORKERS workers (sharing one
-- session-ticket key, so resumption works on every worker) and prints "ready N" once N
-- 'listening' events arrived. SIGTERM / SIGINT stop the workers with the master.
local https = require('https')

local port = tonumber(arg[1]) or 8443
local workers = tonumber(arg[2]) or 2
local dir = arg[3] or '.'

if require('bench_master')(workers) then
  return
else
  local function read(name)
    local f = assert(io.open(dir .. '/' .. name))
    local s = f:read('*a')
    f:close()
    return s
  end
  https.createServer({ key = read('server.key'), cert = read('server.pem') }, function(_, res)
    res:writeHead(200, { ['Content-Type'] = 'text/plain' })
    res:finish('hello world\n')
  end):listen({ port = port, host = '127.0.0.1' })
end
