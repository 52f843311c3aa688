-- body_ir.lua: json_ir.lua without cjson, for lcluster's own share of a JSON API request:
-- the same POST /json with its ~1.2 KB body collected by 'data' and 'end' listeners, and a
-- fixed 1 KB answer with Content-Type and Content-Length.
--   APP=bench/realistic/body_ir.lua bench/realistic/ir build/lcluster
-- (json_client.lua checks only that the answer is JSON.)
local http = require('http')
local concat = table.concat

local out = '{"ok":true,"items":[' .. ('{"id":1,"name":"item-1","price":1.25},'):rep(24) .. '{}]}'
local port = tonumber(arg[1]) or 8000
local n, bytes = 0, 0
http.createServer(function(req, res)
  n = n + 1
  local parts, k = {}, 0
  req:on('data', function(chunk)
    k = k + 1
    parts[k] = chunk
  end)
  req:on('end', function()
    bytes = bytes + #concat(parts)
    res:writeHead(200, { ['Content-Type'] = 'application/json', ['Content-Length'] = #out })
    res:finish(out)
  end)
end):listen({ port = port, host = '127.0.0.1' }, function()
  print('ready')
  io.stdout:flush()
end)
process.on('SIGTERM', function()
  io.stderr:write('requests ' .. n .. '\n')
  process.exit(0)
end)
