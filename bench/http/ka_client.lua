-- ka_client.lua: the small keep-alive client bench/http/ir drives its server with.
--   lcluster bench/http/ka_client.lua PORT REQUESTS [CONNS]
-- Opens CONNS (default 64) keep-alive connections to 127.0.0.1:PORT and sends REQUESTS GET
-- requests in all, one in flight per connection (as wrk does), each sent when the previous
-- response on its connection has arrived (the hello-world body ends every response). Prints
-- "done N" and exits 0 when every response arrived; exits 1 on an error or after 60 s.
local net = require('net')
local timer = require('timer')

local port = assert(tonumber(arg[1]), 'usage: ka_client.lua PORT REQUESTS [CONNS]')
local total = assert(tonumber(arg[2]), 'usage: ka_client.lua PORT REQUESTS [CONNS]')
local nconn = tonumber(arg[3]) or 64
local REQ = 'GET / HTTP/1.1\r\nHost: 127.0.0.1:' .. port .. '\r\n\r\n'
local MARK = 'hello world\n'

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
    local i = 1
    while true do
      local _, e = buf:find(MARK, i, true)
      if not e then
        break
      end
      i = e + 1
      received = received + 1
      if received == total then
        finish(0, 'done ' .. received)
      end
      send()
    end
    buf = buf:sub(i)
  end)
  sock:on('error', function(err)
    finish(1, 'error ' .. tostring(err))
  end)
end
timer.setTimeout(function()
  finish(1, ('timeout: %d of %d responses'):format(received, total))
end, 60000)
