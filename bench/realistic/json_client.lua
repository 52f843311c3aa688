-- json_client.lua: the keep-alive client bench/realistic/ir drives json_ir.lua with.
--   lcluster bench/realistic/json_client.lua PORT REQUESTS [CONNS]
-- Sends REQUESTS POST /json requests with post_json.lua's body (the wrk script of the
-- throughput row, loaded with a stand-in `wrk` table) over CONNS (default 64) keep-alive
-- connections, one in flight per connection; a response ends after its Content-Length.
-- Prints "done N" and exits 0 when every response arrived; exits 1 on an error, on a response
-- that is not a 200 with a JSON body that decodes, or after 60 s.
local net = require('net')
local timer = require('timer')
local cjson = require('cjson')

local port = assert(tonumber(arg[1]), 'usage: json_client.lua PORT REQUESTS [CONNS]')
local total = assert(tonumber(arg[2]), 'usage: json_client.lua PORT REQUESTS [CONNS]')
local nconn = tonumber(arg[3]) or 64

local wrk = { headers = {} }
local script = (arg[0]:match('^(.*)/') or '.') .. '/post_json.lua'
setfenv(assert(loadfile(script)), setmetatable({ wrk = wrk }, { __index = _G }))()
local REQ = ('POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s')
  :format(wrk.path, port, wrk.headers['Content-Type'], #wrk.body, wrk.body)

local sent, received = 0, 0
local function finish(code, msg)
  io.stdout:write(msg, '\n')
  io.stdout:flush()
  process.exit(code)
end

for _ = 1, math.min(nconn, total) do
  local sock = net.connect({ port = port, host = '127.0.0.1' })
  local buf = ''
  local function send()
    if sent < total then
      sent = sent + 1
      sock:write(REQ)
    end
  end
  sock:on('connect', send)
  sock:on('data', function(chunk)
    buf = buf .. chunk
    while true do
      local head = buf:find('\r\n\r\n', 1, true)
      if not head then
        break
      end
      local len = tonumber(buf:sub(1, head):lower():match('\r\ncontent%-length:%s*(%d+)'))
      if not len then
        finish(1, 'error: no Content-Length in ' .. buf:sub(1, head))
      end
      if #buf < head + 3 + len then
        break
      end
      local body = buf:sub(head + 4, head + 3 + len)
      if not buf:find('^HTTP/1%.1 200') or not pcall(cjson.decode, body) then
        finish(1, 'error: bad response ' .. buf:sub(1, head + 3 + len))
      end
      buf = buf:sub(head + 4 + len)
      received = received + 1
      if received == total then
        finish(0, 'done ' .. received)
      end
      send()
    end
  end)
  sock:on('error', function(err)
    finish(1, 'error ' .. tostring(err))
  end)
end
timer.setTimeout(function()
  finish(1, ('timeout: %d of %d responses'):format(received, total))
end, 60000)
