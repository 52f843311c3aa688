-- client.lua: the attacking clients of bench/abuse/run (run with lcluster; loopback only;
-- every mode stops by itself).
--   upload PORT MB SECONDS     POST /upload with Content-Length MB MiB, written as fast as the
--                              server takes it, never waiting for an answer; stops after
--                              SECONDS or when all is written. Prints "written BYTES".
--   pipeline PORT N SECONDS    N pipelined GET requests written as fast as the server takes
--                              them, responses never read. Prints "written REQUESTS".
--   hold PORT N SECONDS        N connections opened and held for SECONDS. Prints
--                              "connected C of N".
--   burst PORT N TIMEOUT_MS    N new connections, one GET each (Connection: close), at most
--                              16 at a time; prints "answered A of N (first 100: F)" (200s
--                              within TIMEOUT_MS of each connection's start).
local net = require('net')
local timer = require('timer')

local mode, port = arg[1], tonumber(arg[2])
local n, limit = tonumber(arg[3]), tonumber(arg[4])
assert(mode and port and n and limit, 'usage: client.lua upload|pipeline|hold|burst PORT N LIMIT')

local function finish(line)
  io.stdout:write(line, '\n')
  io.stdout:flush()
  process.exit(0)
end

-- Writes chunks produced by nextChunk() until it returns nil, waiting for 'drain' whenever
-- write returns false; counts through onChunk.
local function stream(sock, nextChunk)
  local function pump()
    while true do
      local c = nextChunk()
      if not c then
        return
      end
      if not sock:write(c) then
        return
      end
    end
  end
  sock:on('drain', pump)
  sock:on('connect', pump)
end

if mode == 'upload' then
  local total = n * 1024 * 1024
  local chunk = string.rep('x', 65536)
  local written = 0
  local sock = net.connect({ port = port, host = '127.0.0.1' })
  sock:pause()
  sock:on('error', function() end)
  local head = false
  stream(sock, function()
    if not head then
      head = true
      return ('POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n'):format(total)
    end
    if written >= total then
      finish('written ' .. written)
      return nil
    end
    written = written + #chunk
    return chunk
  end)
  timer.setTimeout(function()
    finish('written ' .. written)
  end, limit * 1000)
elseif mode == 'pipeline' then
  local batch = string.rep('GET / HTTP/1.1\r\nHost: x\r\n\r\n', 1000)
  local written = 0
  local sock = net.connect({ port = port, host = '127.0.0.1' })
  sock:pause()
  sock:on('error', function() end)
  stream(sock, function()
    if written >= n then
      finish('written ' .. written)
      return nil
    end
    written = written + 1000
    return batch
  end)
  timer.setTimeout(function()
    finish('written ' .. written)
  end, limit * 1000)
elseif mode == 'hold' then
  local connected = 0
  for _ = 1, n do
    local sock = net.connect({ port = port, host = '127.0.0.1' })
    sock:on('connect', function()
      connected = connected + 1
    end)
    sock:on('error', function() end)
  end
  timer.setTimeout(function()
    finish(('connected %d of %d'):format(connected, n))
  end, limit * 1000)
elseif mode == 'burst' then
  local started, answered, ended, first = 0, 0, 0, 0
  local launch
  local function one()
    started = started + 1
    local index = started
    local sock = net.connect({ port = port, host = '127.0.0.1' })
    local buf, done = '', false
    local function over(ok)
      if done then
        return
      end
      done = true
      if ok then
        answered = answered + 1
        if index <= 100 then
          first = first + 1
        end
      end
      ended = ended + 1
      sock:destroy()
      if ended == n then
        finish(('answered %d of %d (first 100: %d)'):format(answered, n, first))
      end
      launch()
    end
    local t = timer.setTimeout(function()
      over(false)
    end, limit)
    sock:on('connect', function()
      sock:write('GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
    end)
    sock:on('data', function(d)
      buf = buf .. d
      if buf:find('hello world\n', 1, true) then
        timer.clearTimeout(t)
        over(buf:find('^HTTP/1.1 200') ~= nil)
      end
    end)
    sock:on('error', function() end)
    sock:on('close', function()
      timer.clearTimeout(t)
      over(false)
    end)
  end
  launch = function()
    if started < n then
      one()
    end
  end
  for _ = 1, math.min(16, n) do
    launch()
  end
else
  error('unknown mode ' .. mode)
end
