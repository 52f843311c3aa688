-- app.lua: the lcluster side of bench/realistic/run, 2 workers behind the built-in balancer.
--   lcluster bench/realistic/app.lua PORT WORKERS FILE64K
-- Routes (the same in node_app.js):
--   POST /json  parse the JSON body with cjson, answer a 1 KB JSON object
--   GET /64k    a 64 KB body from memory
--   GET /file   FILE64K with res:sendFile (sendfile(2))
--   anything else: hello world (the idle-connection and 20-header rows)
-- keepAliveTimeout is off so idle connections stay open while the bench measures them.
-- Prints "ready N" once N workers listen.
local http = require('http')

local port = tonumber(arg[1]) or 8000
local workers = tonumber(arg[2]) or 2
local file = arg[3]

-- The master (bench/apps/bench_master.lua, shared by the bench apps); json_route.lua beside
-- this script.
local dir = arg[0]:match('^(.*)/') or '.'
package.path = dir .. '/?.lua;' .. dir .. '/../apps/?.lua;' .. package.path
if require('bench_master')(workers) then
  return
end

local jsonRoute = require('json_route')
local BIG = string.rep('x', 65536)

local server = http.createServer(function(req, res)
  local url = req.url
  if url == '/json' then
    jsonRoute(req, res)
  elseif url == '/64k' then
    res:writeHead(200, { ['Content-Type'] = 'application/octet-stream', ['Content-Length'] = 65536 })
    res:finish(BIG)
  elseif url == '/file' then
    res:setHeader('Content-Type', 'application/octet-stream')
    res:sendFile(file)
  else
    res:writeHead(200, { ['Content-Type'] = 'text/plain' })
    res:finish('hello world\n')
  end
end)
server.keepAliveTimeout = 0
server:listen({ port = port, host = '127.0.0.1' })
