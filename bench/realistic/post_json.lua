-- post_json.lua: wrk script for the JSON API row: POST /json with a ~1 KB JSON body.
-- luacheck: globals wrk
local items = {}
for i = 1, 10 do
  items[i] = string.format('{"id":%d,"name":"item-%d","qty":%d,"tags":["x","y","z"],"note":"%s"}',
    i, i, i * 3, string.rep('n', 30))
end
local body = '{"user":{"id":42,"name":"bench","email":"bench@example.com"},"items":['
  .. table.concat(items, ',') .. '],"meta":{"source":"wrk","pad":"' .. string.rep('p', 200) .. '"}}'
wrk.method = 'POST'
wrk.path = '/json'
wrk.body = body
wrk.headers['Content-Type'] = 'application/json'
