-- json_route.lua: the JSON API route of bench/realistic (POST /json), shared by app.lua (the
-- throughput row) and json_ir.lua (bench/realistic/ir's instruction count), so both measure
-- the same handler: collect the body, parse it with cjson, answer a 1 KB JSON object.
local cjson = require('cjson')
local concat = table.concat

local items = {}
for i = 1, 12 do
  items[i] = { id = i, name = 'item-' .. i, price = i * 1.25, tags = { 'a', 'b', 'c' }, active = true }
end

return function(req, res)
  local parts, n = {}, 0
  req:on('data', function(chunk)
    n = n + 1
    parts[n] = chunk
  end)
  req:on('end', function()
    local body = cjson.decode(concat(parts))
    local out = cjson.encode({ ok = true, n = #body.items, user = body.user, items = items })
    res:writeHead(200, { ['Content-Type'] = 'application/json', ['Content-Length'] = #out })
    res:finish(out)
  end)
end
