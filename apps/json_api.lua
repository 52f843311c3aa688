-- json_api.lua: a small JSON API over http and cjson: an in-memory list of items.
--   GET    /items        -> 200 [{id=, name=}, ...]
--   POST   /items        -> 201 {id=, name=}   body {"name": "..."}
--   GET    /items/:id    -> 200 {id=, name=} | 404
--   DELETE /items/:id    -> 204 | 404
-- Bad JSON is 400, a body over 64 KiB 413, an unknown route 404, a wrong method 405.
--   lcluster apps/json_api.lua 8080     (or lcluster -w auto ... for a cluster; each worker
--                                        then keeps its own list)
local http = require('http')
local cjson = require('cjson')

local port = tonumber(arg[1]) or 8080

local items, nextId = {}, 1

-- value: a table to encode, or a string already encoded.
local function send(res, status, value)
  local body = ''
  if type(value) == 'string' then
    body = value
  elseif value ~= nil then
    body = cjson.encode(value)
  end
  res:writeHead(status, { ['Content-Type'] = 'application/json' })
  res:finish(body)
end

local function list()
  local out = {}
  for id = 1, nextId - 1 do
    if items[id] then
      out[#out + 1] = items[id]
    end
  end
  -- lua-cjson encodes an empty table as an object.
  return #out == 0 and '[]' or out
end

local function route(req, res, body)
  local path = req.url:gsub('%?.*$', '')
  if path == '/items' then
    if req.method == 'GET' then
      return send(res, 200, list())
    elseif req.method == 'POST' then
      local ok, doc = pcall(cjson.decode, body)
      if not ok or type(doc) ~= 'table' or type(doc.name) ~= 'string' then
        return send(res, 400, { error = 'expected {"name": string}' })
      end
      local item = { id = nextId, name = doc.name }
      items[nextId] = item
      nextId = nextId + 1
      res:setHeader('Location', '/items/' .. item.id)
      return send(res, 201, item)
    end
    return send(res, 405, { error = 'method not allowed' })
  end
  local id = tonumber(path:match('^/items/(%d+)$'))
  if id then
    local item = items[id]
    if not item then
      return send(res, 404, { error = 'no such item' })
    elseif req.method == 'GET' then
      return send(res, 200, item)
    elseif req.method == 'DELETE' then
      items[id] = nil
      return send(res, 204)
    end
    return send(res, 405, { error = 'method not allowed' })
  end
  send(res, 404, { error = 'not found' })
end

local server = http.createServer(function(req, res)
  local parts, size = {}, 0
  req:on('data', function(chunk)
    size = size + #chunk
    parts[#parts + 1] = chunk
  end)
  req:on('end', function()
    route(req, res, table.concat(parts))
  end)
end)
server.maxBodySize = 64 * 1024
server:listen(port, function()
  print(('json api on port %d, pid %d'):format(port, process.pid))
end)
